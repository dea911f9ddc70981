// Timers, memory statistics and a progress display.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace gp {

class Timer {
 public:
  Timer() : start_(std::chrono::steady_clock::now()) {}
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  void reset() { start_ = std::chrono::steady_clock::now(); }

 private:
  std::chrono::steady_clock::time_point start_;
};

// Resident-set high-water mark of this process, in MB (VmHWM).
double peak_rss_mb();
// Memory the kernel could give new allocations without swapping, in MB (MemAvailable of
// /proc/meminfo); 0 when unknown.
double mem_available_mb();

// A one-line progress display on stderr, redrawn at most a few times a second; silent when
// disabled.
class Progress {
 public:
  Progress(std::string label, uint64_t total, bool enabled = true);
  ~Progress();
  void update(uint64_t done, const std::string& detail = "");
  void finish();

 private:
  std::string label_;
  uint64_t total_;
  bool enabled_;
  bool finished_ = false;
  Timer timer_;
  double last_draw_ = -1;
};

}  // namespace gp
