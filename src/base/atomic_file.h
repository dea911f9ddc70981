// An output file written under a temporary name and renamed into place when complete, so an error
// or an interruption never leaves a partial file at the destination.
#pragma once

#include <cstdio>
#include <string>

namespace gp {

class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path);  // throws Error when the temp file cannot be created
  ~AtomicFile();                                 // removes the temp file unless committed
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n);  // throws Error on a short write (disk full)
  void commit();                           // flush, close, rename to the destination

 private:
  std::string path_, tmp_;
  std::FILE* f_ = nullptr;
};

}  // namespace gp
