#include "base/atomic_file.h"

#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "base/error.h"

namespace gp {

AtomicFile::AtomicFile(const std::string& path) : path_(path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  // Through a symlink: the file it names is replaced and the link stays.
  fs::path target = path;
  for (int hops = 0; fs::is_symlink(fs::symlink_status(target, ec)); ++hops) {
    check(hops < 40, path + ": too many levels of symlinks");
    const fs::path next = fs::read_symlink(target, ec);
    check(!ec, path + ": cannot read the symlink (" + ec.message() + ")");
    target = next.is_absolute() ? next : target.parent_path() / next;
  }
  const fs::file_status st = fs::status(target, ec);
  check(st.type() != fs::file_type::directory, path + ": is a directory, expected a file name");
  // A device or a FIFO (/dev/null, a pipe to another program) is written in place: renaming a
  // temporary over it would replace the node itself with a regular file.
  in_place_ = fs::exists(st) && st.type() != fs::file_type::regular;
  dest_ = target.string();
  tmp_ = in_place_ ? dest_ : dest_ + ".tmp-" + std::to_string(::getpid());
  f_ = std::fopen(tmp_.c_str(), "wb");
  check(f_ != nullptr, path + ": cannot create (" + std::strerror(errno) + ")");
}

AtomicFile::~AtomicFile() {
  if (f_) {
    std::fclose(f_);
    if (!in_place_) std::remove(tmp_.c_str());
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
  if (in_place_) {
    check(ok, path_ + ": write failed (" + std::strerror(err) + ")");
    return;
  }
  if (!ok || std::rename(tmp_.c_str(), dest_.c_str()) != 0) {
    std::remove(tmp_.c_str());
    throw Error(path_ + ": write failed (" + std::strerror(ok ? errno : err) + "; disk full?)");
  }
}

}  // namespace gp

namespace gp {
namespace fs = std::filesystem;

bool is_inside(const fs::path& inner, const fs::path& outer) {
  std::error_code ec;
  const fs::path a = fs::weakly_canonical(inner, ec), b = fs::weakly_canonical(outer, ec);
  auto ia = a.begin(), ib = b.begin();
  for (; ib != b.end(); ++ia, ++ib)
    if (ia == a.end() || *ia != *ib) return false;
  return true;
}

namespace {

// An earlier output of these tools: an empty directory, or one holding config.json and a
// *.safetensors file. Anything else is somebody's data, which --force must not delete.
bool is_replaceable(const fs::path& dir) {
  std::error_code ec;
  if (fs::is_empty(dir, ec) && !ec) return true;
  bool config = false, shard = false;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    config |= e.path().filename() == "config.json";
    shard |= e.path().extension() == ".safetensors";
  }
  return !ec && config && shard;
}

}  // namespace

AtomicDir::AtomicDir(const std::string& out, bool replace) {
  check(!out.empty(), "output directory: empty path");
  fs::path p = fs::path(out).lexically_normal();  // "x/.." is "."
  if (!p.has_filename()) p = p.parent_path();     // "dir/" names "dir"
  out_ = p.string();
  std::error_code ec;
  if (fs::exists(fs::symlink_status(p, ec))) {
    check(replace, out_ + ": already exists (refusing to replace it; pass --force to overwrite)");
    check(fs::is_directory(fs::symlink_status(p, ec)),
          out_ + ": exists and is not a directory (--force replaces only an earlier output)");
    check(!is_inside(fs::current_path(ec), p),
          out_ + ": is the working directory or one of its parents (--force never replaces it)");
    check(is_replaceable(p), out_ +
                                 ": is not an earlier output (expected an empty directory or a "
                                 "checkpoint with config.json and *.safetensors); --force "
                                 "never deletes other data");
  }
  if (p.has_parent_path()) {
    fs::create_directories(p.parent_path(), ec);
    check(!ec,
          p.parent_path().string() + ": cannot create the parent directory (" + ec.message() + ")");
  }
  std::string tmpl = out_ + ".tmp-XXXXXX";
  check(::mkdtemp(tmpl.data()) != nullptr,
        out_ + ": cannot create a temporary directory next to it (" + std::strerror(errno) + ")");
  tmp_ = tmpl;
  fs::permissions(tmp_,
                  fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                      fs::perms::others_read | fs::perms::others_exec,
                  ec);
}

AtomicDir::~AtomicDir() {
  if (committed_) return;
  std::error_code ec;
  fs::remove_all(tmp_, ec);
}

void AtomicDir::commit() {
  std::error_code ec;
  // Old aside, new in, then old deleted: an interruption leaves one of them complete.
  std::string old;
  if (fs::exists(fs::symlink_status(out_, ec))) {
    old = out_ + ".old-XXXXXX";
    check(::mkdtemp(old.data()) != nullptr,
          out_ + ": cannot create a directory next to it (" + std::strerror(errno) + ")");
    fs::rename(out_, old, ec);  // replaces the empty placeholder
    if (ec) {
      fs::remove(old, ec);
      throw Error(out_ + ": cannot move it aside to replace it");
    }
  }
  fs::rename(tmp_, out_, ec);
  if (ec) {
    const std::string why = ec.message();
    if (!old.empty()) fs::rename(old, out_, ec);
    throw Error(out_ + ": cannot rename " + tmp_ + " into place (" + why + ")");
  }
  committed_ = true;
  if (!old.empty()) fs::remove_all(old, ec);
}

}  // namespace gp
