#include "base/sys.h"

#include <cstdio>
#include <algorithm>
#include <fstream>
#include <memory>
#include <vector>

#include "base/thread_pool.h"

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

namespace gp {

double memory_read_bandwidth_gbs(ThreadPool& pool, size_t bytes, int reps) {
  const size_t n = bytes / sizeof(uint64_t);
  std::unique_ptr<uint64_t[]> buf(new uint64_t[n]);
  pool.parallel_for(n, 4096, [&](size_t b, size_t e, int) {
    for (size_t i = b; i < e; ++i) buf[i] = i;  // each thread touches the pages it will read
  });
  std::vector<uint64_t> sums(pool.size());
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    Timer t;
    pool.parallel_for(n, 4096, [&](size_t b, size_t e, int thread) {
      uint64_t s[8] = {};
      for (size_t i = b; i + 8 <= e; i += 8)
        for (int j = 0; j < 8; ++j) s[j] += buf[i + j];
      sums[thread] = s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
    });
    best = std::max(best, static_cast<double>(n * sizeof(uint64_t)) / t.seconds() / 1e9);
  }
  volatile uint64_t sink = 0;
  for (uint64_t s : sums) sink = sink + s;
  return best;
}

}  // namespace gp
