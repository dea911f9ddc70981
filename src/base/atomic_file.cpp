#include "base/atomic_file.h"

#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

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

namespace gp {
namespace fs = std::filesystem;

AtomicDir::AtomicDir(const std::string& out, bool replace) {
  check(!out.empty(), "output directory: empty path");
  fs::path p(out);
  if (!p.has_filename()) p = p.parent_path();  // "dir/" names "dir"
  out_ = p.string();
  std::error_code ec;
  check(!fs::exists(p, ec) || replace,
        out_ + ": already exists (refusing to replace it; pass --force to overwrite)");
  if (p.has_parent_path()) {
    fs::create_directories(p.parent_path(), ec);
    check(!ec, p.parent_path().string() + ": cannot create the parent directory (" + ec.message() + ")");
  }
  std::string tmpl = out_ + ".tmp-XXXXXX";
  check(::mkdtemp(tmpl.data()) != nullptr,
        out_ + ": cannot create a temporary directory next to it (" + std::strerror(errno) + ")");
  tmp_ = tmpl;
  fs::permissions(tmp_, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                            fs::perms::others_read | fs::perms::others_exec, ec);
}

AtomicDir::~AtomicDir() {
  if (committed_) return;
  std::error_code ec;
  fs::remove_all(tmp_, ec);
}

void AtomicDir::commit() {
  std::error_code ec;
  if (fs::exists(out_, ec)) fs::remove_all(out_, ec);
  check(!ec, out_ + ": cannot replace it (" + ec.message() + ")");
  fs::rename(tmp_, out_, ec);
  check(!ec, out_ + ": cannot rename " + tmp_ + " into place (" + ec.message() + ")");
  committed_ = true;
}

}  // namespace gp
