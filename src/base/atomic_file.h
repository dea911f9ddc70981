// An output file written under a temporary name and renamed into place when complete, so an error
// or an interruption never leaves a partial file at the destination. A symlink is followed (the
// link stays); a destination that is not a regular file (/dev/null, a FIFO) is written in place.
#pragma once

#include <cstdio>
#include <filesystem>
#include <string>

namespace gp {

class AtomicFile {
 public:
  explicit AtomicFile(
      const std::string& path);  // throws Error when the temp file cannot be created
  ~AtomicFile();                 // removes the temp file unless committed
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n);  // throws Error on a short write (disk full)
  void commit();                           // flush, close, rename to the destination

 private:
  std::string path_, dest_, tmp_;  // as given, after symlinks, written
  bool in_place_ = false;
  std::FILE* f_ = nullptr;
};

}  // namespace gp

namespace gp {

// True when `inner` is `outer` or lies inside it (made absolute, symlinks resolved; either may not
// exist yet).
bool is_inside(const std::filesystem::path& inner, const std::filesystem::path& outer);

// An output directory built as OUT.tmp-XXXXXX beside OUT and renamed into place when complete: an
// error or an interruption never leaves a partial OUT, and an existing OUT survives until then.
class AtomicDir {
 public:
  // Refuses an existing `out` unless `replace`, and even then unless it is an earlier output
  // (empty, or a checkpoint: config.json and *.safetensors) and not the working directory or a
  // parent of it. Creates the parent and the temporary directory.
  AtomicDir(const std::string& out, bool replace);
  ~AtomicDir();  // removes the temporary directory unless committed
  AtomicDir(const AtomicDir&) = delete;
  AtomicDir& operator=(const AtomicDir&) = delete;

  const std::string& out() const { return out_; }
  const std::string& tmp() const { return tmp_; }
  // Moves an existing `out` aside, renames the temporary directory in, then deletes the old one.
  void commit();

 private:
  std::string out_, tmp_;
  bool committed_ = false;
};

}  // namespace gp
