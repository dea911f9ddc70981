#include "base/sys.h"

#include <cstdio>
#include <fstream>
#include <string>
#include <utility>

namespace gp {
namespace {
double status_field_mb(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const std::string prefix = std::string(key) + ":";
  while (std::getline(f, line)) {
    if (line.rfind(prefix, 0) == 0) return std::stod(line.substr(prefix.size())) / 1024.0;
  }
  return 0;
}
}  // namespace

double peak_rss_mb() { return status_field_mb("VmHWM"); }

double mem_available_mb() {
  std::ifstream f("/proc/meminfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("MemAvailable:", 0) == 0) return std::stod(line.substr(13)) / 1024.0;
  return 0;
}

Progress::Progress(std::string label, uint64_t total, bool enabled)
    : label_(std::move(label)), total_(total), enabled_(enabled) {}

Progress::~Progress() { finish(); }

void Progress::update(uint64_t done, const std::string& detail) {
  if (!enabled_ || finished_) return;
  const double now = timer_.seconds();
  if (last_draw_ >= 0 && now - last_draw_ < 0.2 && done < total_) return;
  last_draw_ = now;
  const double frac = total_ ? static_cast<double>(done) / total_ : 1.0;
  const int width = 30, filled = static_cast<int>(frac * width);
  std::string bar(filled, '#');
  bar.resize(width, '.');
  std::fprintf(stderr, "\r%s [%s] %5.1f%% %6.1fs %s\033[K", label_.c_str(), bar.c_str(), frac * 100,
               now, detail.c_str());
  std::fflush(stderr);
}

void Progress::finish() {
  if (!enabled_ || finished_) return;
  finished_ = true;
  if (last_draw_ >= 0) std::fprintf(stderr, "\n");
}

}  // namespace gp
