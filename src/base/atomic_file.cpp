#include "base/atomic_file.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "base/error.h"

namespace gp {

AtomicFile::AtomicFile(const std::string& path)
    : path_(path), tmp_(path + ".tmp-" + std::to_string(::getpid())) {
  f_ = std::fopen(tmp_.c_str(), "wb");
  check(f_ != nullptr, path + ": cannot create (" + std::strerror(errno) + ")");
}

AtomicFile::~AtomicFile() {
  if (f_) {
    std::fclose(f_);
    std::remove(tmp_.c_str());
  }
}

void AtomicFile::write(const void* data, size_t n) {
  if (n && std::fwrite(data, 1, n, f_) != n)
    throw Error(path_ + ": write failed (" + std::strerror(errno) + "; disk full?)");
}

void AtomicFile::commit() {
  const bool ok = std::fflush(f_) == 0 && std::ferror(f_) == 0;
  const int err = errno;
  std::fclose(f_);
  f_ = nullptr;
  if (!ok || std::rename(tmp_.c_str(), path_.c_str()) != 0) {
    std::remove(tmp_.c_str());
    throw Error(path_ + ": write failed (" + std::strerror(ok ? errno : err) + "; disk full?)");
  }
}

}  // namespace gp
