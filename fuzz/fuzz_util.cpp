#include "fuzz_util.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace gp::fuzz {

namespace fs = std::filesystem;

std::string data_path(const std::string& rel) { return std::string(GP_TEST_DATA) + "/" + rel; }

namespace {
struct Scratch {
  std::string path;
  Scratch() {
    // Memory-backed when the system has /dev/shm: every input of the file-reading targets is
    // written there, and on a disk file system (ext4) rewriting a file flushes it on close: the
    // targets spent more time in the kernel than in the parsers.
    const fs::path base =
        access("/dev/shm", W_OK) == 0 ? fs::path("/dev/shm") : fs::temp_directory_path();
    std::string tmpl = (base / "gp-fuzz-XXXXXX").string();
    if (!mkdtemp(tmpl.data()))
      throw std::runtime_error("cannot create a directory under " + base.string());
    path = tmpl;
  }
  ~Scratch() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};
}  // namespace

std::string scratch_dir() {
  static Scratch scratch;
  return scratch.path;
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!f) throw std::runtime_error("cannot write " + path);
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

std::string copy_fixture(const std::string& model, const std::string& name) {
  const std::string dst = scratch_dir() + "/" + name;
  if (!fs::exists(dst)) fs::copy(data_path(model), dst, fs::copy_options::recursive);
  return dst;
}

std::vector<std::string> split_parts(const uint8_t* data, size_t size, size_t n) {
  std::vector<std::string> parts(n);
  const std::string in(reinterpret_cast<const char*>(data), size);
  size_t start = 0;
  for (size_t i = 0; i < n; ++i) {
    const size_t end = i + 1 < n ? in.find('\f', start) : std::string::npos;
    parts[i] = in.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return parts;
}

}  // namespace gp::fuzz
