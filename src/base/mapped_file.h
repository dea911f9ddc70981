// A read-only memory-mapped file: weights are used in place (with --repack, an int8 model on
// AVX3_DL copies the layers' nibbles once, repacked for its kernels, and drops their pages:
// model/text_model.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
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

// Drops the pages of a range of a read-only file mapping (every whole page it touches) from this
// process's resident set: the data stays in the page cache and is read back on the next access.
// Only for file mappings: anonymous memory would read back as zeros.
void release_pages(const void* data, size_t nbytes);

// Zero-filled anonymous memory of `bytes` (> 0), page-aligned, unmapped with its last owner.
// (No MADV_HUGEPAGE: where the kernel defragments on madvise, faulting 1.3 GB in took 1.5-3 s.)
// Throws Error naming `what` when it cannot be mapped.
std::shared_ptr<uint8_t> map_anonymous(size_t bytes, const std::string& what);

// Throws Error naming `path` unless it is an existing regular file (after symlinks): a FIFO or a
// device given as a model file would block the open or the read forever.
void check_regular_file(const std::string& path);

// Number of MappedFile objects ever opened on `path` in this process (tests prove laziness with
// it).
int times_mapped(const std::string& path);

}  // namespace gp
