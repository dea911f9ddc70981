#include "base/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>

#include "base/error.h"

namespace gp {
namespace {
std::mutex g_count_mutex;
std::map<std::string, int>& open_counts() {
  static std::map<std::string, int> counts;
  return counts;
}
std::string canonical_key(const std::string& path) {
  std::error_code ec;
  auto p = std::filesystem::weakly_canonical(path, ec);
  return ec ? path : p.string();
}
}  // namespace

void release_pages(const void* data, size_t nbytes) {
  if (nbytes == 0) return;
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t b = reinterpret_cast<uintptr_t>(data) & ~(page - 1);
  const uintptr_t e = (reinterpret_cast<uintptr_t>(data) + nbytes + page - 1) & ~(page - 1);
  ::madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);  // advisory: errors are harmless
}

std::shared_ptr<uint8_t> map_anonymous(size_t bytes, const std::string& what) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    throw Error("cannot allocate " + std::to_string(bytes >> 20) + " MB for " + what + ": " +
                std::strerror(errno));
  return std::shared_ptr<uint8_t>(static_cast<uint8_t*>(p),
                                  [bytes](uint8_t* q) { ::munmap(q, bytes); });
}

void check_regular_file(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    throw Error(path + ": cannot open (" + std::strerror(errno) + ")");
  check(S_ISREG(st.st_mode), path + ": not a regular file (expected a file, found a " +
                                 (S_ISDIR(st.st_mode)    ? "directory"
                                  : S_ISFIFO(st.st_mode) ? "FIFO"
                                  : S_ISSOCK(st.st_mode) ? "socket"
                                                         : "device") +
                                 ")");
}

MappedFile::MappedFile(const std::string& path) : path_(path) {
  check_regular_file(path);
  // O_NONBLOCK: a FIFO swapped in after the check must not block the open.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw Error(path + ": cannot open (" + std::strerror(errno) + ")");
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(path + ": not a regular file");
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      throw Error(path + ": cannot map (" + std::strerror(errno) + ")");
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
  std::lock_guard<std::mutex> lock(g_count_mutex);
  ++open_counts()[canonical_key(path)];
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

int times_mapped(const std::string& path) {
  std::lock_guard<std::mutex> lock(g_count_mutex);
  auto it = open_counts().find(canonical_key(path));
  return it == open_counts().end() ? 0 : it->second;
}

}  // namespace gp
