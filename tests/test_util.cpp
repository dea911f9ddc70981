#include "test_util.h"

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace gp::test {
namespace fs = std::filesystem;

std::string data_path(const std::string& rel) { return std::string(GP_TEST_DATA) + "/" + rel; }
std::string bin_file(const std::string& tool) { return std::string(GP_BIN_DIR) + "/" + tool; }
std::string bin_path(const std::string& tool) {
#ifdef GP_TOOL_EMULATOR
  return std::string(GP_TOOL_EMULATOR) + " " + bin_file(tool);
#else
  return bin_file(tool);
#endif
}

namespace {
struct TempDirs {
  std::vector<std::string> dirs;
  ~TempDirs() {
    for (auto& d : dirs) {
      std::error_code ec;
      fs::remove_all(d, ec);
    }
  }
};
TempDirs g_temp_dirs;
}  // namespace

std::string temp_dir(const std::string& tag) {
  static int counter = 0;
  fs::path p = fs::temp_directory_path() / ("gp-test-" + tag + "-" + std::to_string(::getpid()) +
                                            "-" + std::to_string(counter++));
  fs::remove_all(p);
  fs::create_directories(p);
  g_temp_dirs.dirs.push_back(p.string());
  return p.string();
}

std::vector<float> read_f32(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<float> out(bytes.size() / 4);
  std::memcpy(out.data(), bytes.data(), out.size() * 4);
  return out;
}

std::vector<int32_t> read_ids(const std::string& path) {
  std::string text = read_text(path);
  std::vector<int32_t> ids;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.find_first_not_of(" \n\r\t") == std::string::npos) continue;
    ids.push_back(std::stoi(item));
  }
  return ids;
}

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

std::vector<uint16_t> every_half() {
  std::vector<uint16_t> h(65536);
  for (uint32_t i = 0; i < 65536; ++i) h[i] = static_cast<uint16_t>(i);
  return h;
}

std::vector<float> floats_of_every_exponent() {
  std::vector<float> x;
  for (uint64_t u = 0; u < (uint64_t{1} << 32); u += 7919) {
    float v;
    const auto w = static_cast<uint32_t>(u);
    std::memcpy(&v, &w, 4);
    x.push_back(v);
  }
  return x;
}

int run_command(const std::string& cmd, std::string* output) {
  std::string full = cmd + " 2>&1";
  FILE* p = ::popen(full.c_str(), "r");
  if (!p) return -1;
  std::array<char, 4096> buf;
  std::string out;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  int status = ::pclose(p);
  if (output) *output = out;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace gp::test
