// A read-only memory-mapped file: weights are used in place, never copied.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace gp {

class MappedFile {
 public:
  explicit MappedFile(const std::string& path);  // throws Error when the file cannot be mapped
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Throws Error naming `path` unless it is an existing regular file (after symlinks): a FIFO or a
// device given as a model file would block the open or the read forever.
void check_regular_file(const std::string& path);

// Number of MappedFile objects ever opened on `path` in this process (tests prove laziness with
// it).
int times_mapped(const std::string& path);

}  // namespace gp
