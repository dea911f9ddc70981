// Hostile inputs against the release tools, run as subprocesses: bad checkpoints built at run time
// from the fixtures (truncated, mutated headers, configs, indexes, tokenizers), bad images, bad
// flags, outputs in odd places, and malformed HTTP against a real gemma-server. Every case must end
// in one clear error line naming the file or key (or a correct result), a non-zero exit, no
// signal, no hang, and no file created, changed or removed outside the output directory.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "test_util.h"

#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#include <stb/stb_image_write.h>

#if defined(__SANITIZE_ADDRESS__)
#define GP_HOSTILE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GP_HOSTILE_ASAN 1
#endif
#endif

namespace gp {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

// Generous: sanitizer and emulated builds run 3-20x slower; a hang shows up as this timeout.
constexpr int kTimeoutSeconds = 120;
// Address space of a tool run. ASan reserves terabytes of shadow memory up front, so there the cap
// is skipped (the runaway allocations are then caught by ASan's own allocator limit instead).
constexpr rlim_t kMemoryCap = rlim_t{2} << 30;

#ifdef GP_HOSTILE_ASAN
constexpr bool kCapMemory = false;
#else
constexpr bool kCapMemory = true;
#endif

// ---- Files

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(f.good()) << path;
}

// A safetensors file split into its header JSON text and its data section.
struct Safetensors {
  std::string header;
  std::string data;
};

Safetensors read_safetensors(const std::string& path) {
  const std::string b = read_bytes(path);
  uint64_t n = 0;
  std::memcpy(&n, b.data(), 8);
  return {b.substr(8, n), b.substr(8 + n)};
}

void write_safetensors(const std::string& path, const std::string& header,
                       const std::string& data) {
  std::string h = header;
  h.resize((h.size() + 7) / 8 * 8, ' ');
  const uint64_t n = h.size();
  std::string b(reinterpret_cast<const char*>(&n), 8);
  write_bytes(path, b + h + data);
}

// Rewrites a safetensors header (tensor order kept), keeping the data.
void edit_header(const std::string& path, const std::function<void(json&)>& fn) {
  Safetensors s = read_safetensors(path);
  json h = json::parse(s.header);
  fn(h);
  write_safetensors(path, h.dump(), s.data);
}

// Appends a tensor of `bytes` to a safetensors file.
void add_tensor(const std::string& path, const std::string& name, const std::string& dtype,
                const std::vector<int64_t>& shape, const std::string& bytes) {
  Safetensors s = read_safetensors(path);
  json h = json::parse(s.header);
  const uint64_t at = s.data.size();
  h[name] = {{"dtype", dtype}, {"shape", shape}, {"data_offsets", {at, at + bytes.size()}}};
  write_safetensors(path, h.dump(), s.data + bytes);
}

void edit_json(const std::string& path, const std::function<void(json&)>& fn) {
  json j = json::parse(read_bytes(path));
  fn(j);
  write_bytes(path, j.dump(2));
}

// A 24-bit BMP of w x h grey pixels; `declared_h` overrides the height in the header only.
std::string bmp(int w, int h, int declared_w = 0, int declared_h = 0) {
  const int row = (w * 3 + 3) / 4 * 4;
  const uint32_t data = static_cast<uint32_t>(row) * h, file = 54 + data;
  std::string b(54, '\0');
  auto put32 = [&](int at, uint32_t v) { std::memcpy(&b[at], &v, 4); };
  b[0] = 'B';
  b[1] = 'M';
  put32(2, file);
  put32(10, 54);
  put32(14, 40);
  put32(18, static_cast<uint32_t>(declared_w ? declared_w : w));
  put32(22, static_cast<uint32_t>(declared_h ? declared_h : h));
  b[26] = 1;
  b[28] = 24;
  put32(34, data);
  b += std::string(data, '\x80');
  return b;
}

// A w x h PNG of a colour ramp, written by stb_image_write.
std::string png(int w, int h) {
  std::vector<uint8_t> px(static_cast<size_t>(w) * h * 3);
  for (size_t i = 0; i < px.size(); ++i) px[i] = static_cast<uint8_t>(i * 7);
  int len = 0;
  unsigned char* p = stbi_write_png_to_mem(px.data(), w * 3, w, h, 3, &len);
  std::string b(reinterpret_cast<char*>(p), static_cast<size_t>(len));
  STBIW_FREE(p);
  return b;
}

// A PNG signature and IHDR chunk declaring w x h RGB, and nothing else.
std::string png_header(uint32_t w, uint32_t h) {
  std::string b = "\x89PNG\r\n\x1a\n";
  b += std::string("\0\0\0\x0d", 4) + "IHDR";
  for (uint32_t v : {w, h})
    for (int s = 24; s >= 0; s -= 8) b += static_cast<char>((v >> s) & 0xff);
  b += std::string("\x08\x02\x00\x00\x00", 5);
  b += std::string("\0\0\0\0", 4);  // CRC (stb_image does not check it)
  return b;
}

// ---- Running a tool

struct RunResult {
  bool exited = false;
  int status = -1;  // exit code, or the signal
  bool timed_out = false;
  std::string out, err;
};

// Runs argv[0] (a tool in GP_BIN_DIR) in `cwd` under the memory cap and the timeout.
RunResult run_tool(const std::vector<std::string>& argv, const std::string& cwd,
                   const std::string& io_dir) {
  const std::string out_path = io_dir + "/stdout", err_path = io_dir + "/stderr";
  const pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    if (::chdir(cwd.c_str()) != 0) _exit(126);
    if (kCapMemory) {
      struct rlimit lim {
        kMemoryCap, kMemoryCap
      };
      setrlimit(RLIMIT_AS, &lim);
    }
    struct rlimit core {
      0, 0
    };
    setrlimit(RLIMIT_CORE, &core);
    const int in = ::open("/dev/null", O_RDONLY);
    const int o = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int e = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(in, 0);
    dup2(o, 1);
    dup2(e, 2);
    std::vector<char*> args;
    const std::string bin = test::bin_path(argv[0]);
    args.push_back(const_cast<char*>(bin.c_str()));
    for (size_t i = 1; i < argv.size(); ++i) args.push_back(const_cast<char*>(argv[i].c_str()));
    args.push_back(nullptr);
    execv(bin.c_str(), args.data());
    _exit(127);
  }
  RunResult r;
  int st = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(kTimeoutSeconds);
  while (waitpid(pid, &st, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      r.timed_out = true;
      kill(-pid, SIGKILL);
      waitpid(pid, &st, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  r.exited = WIFEXITED(st);
  r.status = r.exited ? WEXITSTATUS(st) : WTERMSIG(st);
  r.out = read_bytes(out_path);
  r.err = read_bytes(err_path);
  return r;
}

// Every file under `root` (but `skip`): path -> "type size mtime", to prove nothing outside the
// output was created, changed or removed.
std::map<std::string, std::string> snapshot(const std::string& root, const std::string& skip) {
  std::map<std::string, std::string> s;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(root, ec);
       it != fs::recursive_directory_iterator(); it.increment(ec)) {
    const std::string p = it->path().string();
    if (p == skip) {
      it.disable_recursion_pending();
      continue;
    }
    struct stat st {};
    if (::lstat(p.c_str(), &st) != 0) continue;
    s[p] = std::to_string(st.st_mode) + " " + std::to_string(st.st_size) + " " +
           std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec);
  }
  return s;
}

// ---- The cases

// Paths of one case: a copy of the fixture to mutate, an output path, and a working directory.
struct Ctx {
  std::string root;   // everything of the case (snapshotted, but `out`)
  std::string model;  // root/model, the mutated checkpoint
  std::string out;    // root/out, the only place a tool may write
  std::string cwd;    // root/cwd, the tool's working directory
  std::string file(const std::string& name) const { return model + "/" + name; }
};

using Mutation = std::function<void(const Ctx&)>;

struct Case {
  std::string name;
  std::string fixture;  // tiny-original or tiny-mobile
  Mutation mutate;
  std::vector<std::string> argv;  // {M}: the model, {O}: the output, {R}: the case root
  std::string expect;             // a substring of the error line; empty: success expected
  std::function<void(const Ctx&, const RunResult&)> verify = nullptr;  // more checks
  std::vector<std::string> may_change = {};  // paths under root a correct run may write
};

std::string subst(std::string s, const Ctx& c) {
  for (const auto& [k, v] :
       {std::pair<std::string, std::string>{"{M}", c.model}, {"{O}", c.out}, {"{R}", c.root}})
    for (size_t p; (p = s.find(k)) != std::string::npos;) s.replace(p, k.size(), v);
  return s;
}

const std::string kOrig = "tiny-original", kMobile = "tiny-mobile";
const std::string kOrigShard = "model.safetensors", kLangShard = "language_model.safetensors",
                  kVisionShard = "vision_model.safetensors";
const std::string kQ3 = "language_model.model.layers.3.self_attn.q_proj.weight";
const std::string kNorm3 = "language_model.model.layers.3.input_layernorm.weight";

bool has(const std::vector<std::string>& a, const std::string& flag) {
  return std::find(a.begin(), a.end(), flag) != a.end();
}

// gemma-cli on the case's model: "Hi", 2 tokens, 1 thread unless `extra` says otherwise.
std::vector<std::string> cli(std::vector<std::string> extra = {}) {
  std::vector<std::string> a = {"gemma-cli", "{M}", "-p", "Hi"};
  if (!has(extra, "-m")) a.insert(a.end(), {"-m", "2"});
  if (!has(extra, "--threads")) a.insert(a.end(), {"--threads", "1"});
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}
std::vector<std::string> cli_image(std::vector<std::string> extra = {}) {
  extra.insert(extra.begin(), {"--image", "{R}/img.bmp"});
  return cli(extra);
}
// gemma-prune of the case's model into {O}: the split step, 1 thread unless `extra` says otherwise.
std::vector<std::string> prune(std::vector<std::string> extra = {}) {
  std::vector<std::string> a = {"gemma-prune", "{M}", "{O}", "--quiet"};
  if (!has(extra, "--steps")) a.insert(a.end(), {"--steps", "split"});
  if (!has(extra, "--threads")) a.insert(a.end(), {"--threads", "1"});
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

Mutation none() {
  return [](const Ctx&) {};
}
Mutation config(std::function<void(json&)> fn) {
  return [fn](const Ctx& c) { edit_json(c.file("config.json"), fn); };
}
Mutation text_config(const std::string& key, json value) {
  return config([key, value](json& j) { j["text_config"][key] = value; });
}
Mutation vision_config(const std::string& key, json value) {
  return config([key, value](json& j) { j["vision_config"][key] = value; });
}
Mutation top_config(const std::string& key, json value) {
  return config([key, value](json& j) { j[key] = value; });
}
Mutation header(const std::string& shard, std::function<void(json&)> fn) {
  return [shard, fn](const Ctx& c) { edit_header(c.file(shard), fn); };
}
Mutation raw_header(const std::string& shard, std::string text) {
  return [shard, text](const Ctx& c) {
    write_safetensors(c.file(shard), text, read_safetensors(c.file(shard)).data);
  };
}
Mutation truncate_to(const std::string& shard, std::function<size_t(size_t header_end)> at) {
  return [shard, at](const Ctx& c) {
    const std::string b = read_bytes(c.file(shard));
    uint64_t n = 0;
    std::memcpy(&n, b.data(), 8);
    fs::resize_file(c.file(shard), std::min(at(8 + n), b.size()));
  };
}
Mutation index_entry(const std::string& tensor, json file) {
  return [tensor, file](const Ctx& c) {
    edit_json(c.file("model.safetensors.index.json"),
              [&](json& j) { j["weight_map"][tensor] = file; });
  };
}
Mutation write_file(const std::string& rel, std::string bytes) {
  return [rel, bytes](const Ctx& c) { write_bytes(c.root + "/" + rel, bytes); };
}
Mutation fifo(const std::string& rel) {
  return [rel](const Ctx& c) {
    fs::remove(c.root + "/" + rel);
    ASSERT_EQ(mkfifo((c.root + "/" + rel).c_str(), 0644), 0);
  };
}
Mutation both(Mutation a, Mutation b) {
  return [a, b](const Ctx& c) {
    a(c);
    b(c);
  };
}
Mutation image(std::string bytes) { return write_file("img.bmp", bytes); }

std::vector<Case> model_cases() {
  std::vector<Case> v;
  auto add = [&](Case c) { v.push_back(std::move(c)); };
  const std::string O = kOrigShard;

  // -- Truncated and corrupt safetensors files, at many offsets.
  const std::vector<std::pair<std::string, std::function<size_t(size_t)>>> cuts = {
      {"Empty", [](size_t) { return 0; }},
      {"At4", [](size_t) { return 4; }},
      {"At7", [](size_t) { return 7; }},
      {"At8", [](size_t) { return 8; }},
      {"At9", [](size_t) { return 9; }},
      {"At100", [](size_t) { return 100; }},
      {"InHeader", [](size_t e) { return e / 2; }},
      {"HeaderEndMinus1", [](size_t e) { return e - 1; }},
      {"AtDataStart", [](size_t e) { return e; }},
      {"DataPlus1", [](size_t e) { return e + 1; }},
      {"DataPlus1000", [](size_t e) { return e + 1000; }},
      {"MidData", [](size_t e) { return e + 1400000; }},
      {"LastByteMissing", [](size_t) { return 2963831; }},
  };
  for (const auto& [name, at] : cuts) {
    const size_t probe = at(1000);
    const std::string expect = probe < 8      ? "too short for a safetensors header"
                               : probe < 1000 ? "exceeds the file size"
                                              : "lie outside the data section";
    add({"Truncated" + name, kOrig, truncate_to(O, at), cli(), expect});
  }
  add({"TruncatedVisionShard", kMobile, truncate_to(kVisionShard, [](size_t e) { return e + 10; }),
       cli_image(), "lie outside the data section"});
  add({"HeaderLengthHuge", kOrig,
       [](const Ctx& c) {
         std::string b = read_bytes(c.file(kOrigShard));
         const uint64_t n = uint64_t{1} << 63;
         std::memcpy(&b[0], &n, 8);
         write_bytes(c.file(kOrigShard), b);
       },
       cli(), "exceeds the file size"});
  add({"HeaderNotJson", kOrig, raw_header(O, "{\"a\": [1, 2"), cli(), "header is not valid JSON"});
  add({"HeaderArray", kOrig, raw_header(O, "[1, 2, 3]"), cli(), "header is not a JSON object"});
  add({"HeaderDuplicateName", kOrig,
       raw_header(O,
                  "{\"x\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [0, 0]}, "
                  "\"x\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [0, 0]}}"),
       cli(), "tensor 'x' appears twice in the header"});
  add({"DtypeUnknown", kOrig, header(O, [](json& h) { h[kNorm3]["dtype"] = "Q4"; }), cli(),
       "unsupported dtype 'Q4'"});
  add({"DtypeNotString", kOrig, header(O, [](json& h) { h[kNorm3]["dtype"] = 7; }), cli(),
       "dtype is not a string"});
  add({"ShapeNegative", kOrig, header(O, [](json& h) { h[kNorm3]["shape"] = {-256}; }), cli(),
       "shape entries must be non-negative integers"});
  add({"ShapeFloat", kOrig, header(O, [](json& h) { h[kNorm3]["shape"] = {256.5}; }), cli(),
       "shape entries must be non-negative integers"});
  add({"ShapeNotArray", kOrig, header(O, [](json& h) { h[kNorm3]["shape"] = "256"; }), cli(),
       "shape is not an array"});
  add({"ShapeTooManyDims", kOrig,
       header(O, [](json& h) { h[kNorm3]["shape"] = {1, 1, 1, 1, 1, 1, 1, 1, 256}; }), cli(),
       "expected at most 8"});
  // [2^62, 32] of F32 wraps to 0 bytes in 64 bits: the reported SIGSEGV.
  add({"ShapeOverflowsToZero", kOrig,
       header(O,
              [](json& h) {
                h["x"] = {
                    {"dtype", "F32"}, {"shape", {uint64_t{1} << 62, 32}}, {"data_offsets", {0, 0}}};
              }),
       cli(), "byte size beyond 2^63"});
  add({"EmbedShapeOverflows", kOrig,
       header(O,
              [](json& h) {
                auto& t = h["language_model.model.embed_tokens.weight"];
                const uint64_t b = t["data_offsets"][0];
                t["shape"] = {uint64_t{1} << 62, 32};
                t["data_offsets"] = {b, b};
              }),
       cli(), "byte size beyond 2^63"});
  add({"ShapeProductWraps", kOrig,
       header(O,
              [](json& h) {
                h["x"] = {{"dtype", "BF16"},
                          {"shape", {uint64_t{1} << 32, uint64_t{1} << 32}},
                          {"data_offsets", {0, 0}}};
              }),
       cli(), "byte size beyond 2^63"});
  add({"OffsetsReversed", kOrig,
       header(O,
              [](json& h) {
                auto& o = h[kNorm3]["data_offsets"];
                o = {o[1], o[0]};
              }),
       cli(), "lie outside the data section"});
  add({"OffsetsBeyondFile", kOrig,
       header(O,
              [](json& h) {
                h[kNorm3]["data_offsets"] = {100000000, 100000512};
              }),
       cli(), "lie outside the data section"});
  add({"OffsetsNegative", kOrig,
       header(O,
              [](json& h) {
                h[kNorm3]["data_offsets"] = {-2, 510};
              }),
       cli(), "data_offsets must be two non-negative integers"});
  add({"OffsetsThree", kOrig,
       header(O,
              [](json& h) {
                h[kNorm3]["data_offsets"] = {0, 1, 2};
              }),
       cli(), "data_offsets must be two non-negative integers"});
  add({"TensorNotObject", kOrig, header(O, [](json& h) { h[kNorm3] = 5; }), cli(),
       "expected an object with dtype, shape and data_offsets"});
  add({"SizeMismatch", kOrig, header(O, [](json& h) { h[kNorm3]["shape"] = {255}; }), cli(),
       "needs 510 bytes, data_offsets give 512"});
  add({"TensorsOverlap", kOrig,
       header(O,
              [](json& h) {
                h["language_model.model.layers.4.input_layernorm.weight"]["data_offsets"] =
                    h[kNorm3]["data_offsets"];
              }),
       cli(), "tensors overlap"});
  add({"TensorMissing", kOrig, header(O, [](json& h) { h.erase(kQ3); }), cli(),
       "tensor '" + kQ3 + "' is missing from the checkpoint"});
  add({"NormMissing", kOrig, header(O, [](json& h) { h.erase(kNorm3); }), prune(),
       "tensor '" + kNorm3 + "' is missing"});
  add({"PackedWeightAsF32", kOrig, header(O, [](json& h) { h[kQ3]["dtype"] = "F32"; }), cli(),
       "has dtype F32, expected U32"});
  add({"NormAsU32", kOrig,
       header(O,
              [](json& h) {
                h[kNorm3]["dtype"] = "U32";
                h[kNorm3]["shape"] = {128};
              }),
       cli(), "has dtype U32, expected BF16, F16 or F32"});
  add({"NormReshaped", kOrig,
       header(O,
              [](json& h) {
                h[kNorm3]["shape"] = {128, 2};
              }),
       cli(), "has shape [128, 2], expected [256]"});
  add({"QProjReshaped", kOrig,
       header(O,
              [](json& h) {
                auto& s = h[kQ3]["shape"];
                s = {s[0].get<int64_t>() / 2, s[1].get<int64_t>() * 2};
              }),
       cli(), "has shape"});
  add({"ScalesReshaped", kOrig,
       header(O,
              [](json& h) {
                auto& s = h["language_model.model.layers.3.mlp.up_proj.scales"]["shape"];
                s = {s[0].get<int64_t>() * s[1].get<int64_t>()};
              }),
       cli(), "mlp.up_proj.scales' has shape"});
  add({"EmbedReshaped", kOrig,
       header(O,
              [](json& h) {
                auto& s = h["language_model.model.embed_tokens.weight"]["shape"];
                s = {s[0].get<int64_t>() * 2, s[1].get<int64_t>() / 2};
              }),
       cli(), "embed_tokens.weight' has shape"});
  add({"VisionPatchReshaped", kOrig,
       header(O,
              [](json& h) {
                auto& s = h["vision_tower.vision_model.embeddings.patch_embedding.weight"]["shape"];
                s = {s[0], s[2], s[1], s[3], 1};
              }),
       cli_image(), "patch_embedding.weight' has shape"});
  add({"TokenMapOutOfRange", kMobile,
       [](const Ctx& c) {
         const std::string p = c.file(kLangShard);
         Safetensors s = read_safetensors(p);
         const auto h = json::parse(s.header);
         const uint64_t at = h["language_model.model.embed_tokens.token_map"]["data_offsets"][0];
         const int32_t bad = 99999;
         std::memcpy(&s.data[at + 4 * 10], &bad, 4);
         write_safetensors(p, s.header, s.data);
       },
       cli(), "maps id 10 to row 99999"});
  add({"TokenMapNegative", kMobile,
       [](const Ctx& c) {
         const std::string p = c.file(kLangShard);
         Safetensors s = read_safetensors(p);
         const auto h = json::parse(s.header);
         const uint64_t at = h["language_model.model.embed_tokens.token_map"]["data_offsets"][0];
         const int32_t bad = -1;
         std::memcpy(&s.data[at + 4 * 3], &bad, 4);
         write_safetensors(p, s.header, s.data);
       },
       cli(), "maps id 3 to row -1"});
  add({"TokenMapWrongDtype", kMobile,
       header(kLangShard,
              [](json& h) { h["language_model.model.embed_tokens.token_map"]["dtype"] = "U32"; }),
       cli(), "token_map' is U32"});

  // -- The index and the shard set (tiny-mobile has an index; tiny-original none).
  const std::string E = "language_model.model.embed_tokens.weight";
  for (const auto& [name, file] : std::vector<std::pair<std::string, std::string>>{
           {"IndexParentPath", "../language_model.safetensors"},
           {"IndexAbsolutePath", "/etc/passwd"},
           {"IndexSubdirPath", "sub/language_model.safetensors"},
           {"IndexDotDot", ".."},
           {"IndexDot", "."},
           {"IndexEmptyName", ""},
           {"IndexBackslash", "..\\language_model.safetensors"},
           // Found by the index fuzz target: a name beyond NAME_MAX threw a raw filesystem error.
           {"IndexNameTooLong", std::string(300, 'a') + ".safetensors"}})
    add({name, kMobile, index_entry(E, file), prune(), "expected a plain file name"});
  // The reported traversal: a shard outside the folder read, and the output written over it.
  add({"IndexTraversalNeverWritesOutside", kMobile,
       both(
           [](const Ctx& c) { fs::copy_file(c.file(kLangShard), c.root + "/outside.safetensors"); },
           [](const Ctx& c) {
             edit_json(c.file("model.safetensors.index.json"), [](json& j) {
               for (auto& [k, v] : j["weight_map"].items())
                 if (v == kLangShard) v = "../outside.safetensors";
             });
           }),
       prune({"--steps", "layers", "--drop-layers", "6"}), "expected a plain file name"});
  add({"IndexNotJson", kMobile,
       write_file("model/model.safetensors.index.json", "{\"weight_map\":"), cli(),
       "model.safetensors.index.json: not valid JSON"});
  add({"IndexNoWeightMap", kMobile, write_file("model/model.safetensors.index.json", "{}"), cli(),
       "expected a \"weight_map\" object"});
  add({"IndexEntryNotString", kMobile, index_entry(E, 5), cli(), "is not a file name"});
  add({"IndexListsMissingShard", kMobile, index_entry(E, "nope.safetensors"), cli(),
       "lists 'nope.safetensors', which is missing"});
  add({"IndexShardIsFifo", kMobile, fifo("model/" + kVisionShard), cli_image(),
       "not a regular file (expected a file, found a FIFO)"});
  add({"IndexShardIsDirectory", kMobile,
       [](const Ctx& c) {
         fs::remove(c.file(kVisionShard));
         fs::create_directory(c.file(kVisionShard));
       },
       cli_image(), "found a directory"});
  add({"DuplicateAcrossIndexedShards", kMobile,
       [](const Ctx& c) {
         add_tensor(c.file(kVisionShard), kNorm3, "BF16", {256}, std::string(512, '\0'));
       },
       prune(), "tensor '" + kNorm3 + "' is also in"});
  add({"DuplicateAcrossUnindexedShards", kOrig,
       [](const Ctx& c) {
         write_safetensors(
             c.file("b.safetensors"),
             "{\"" + kNorm3 +
                 "\": {\"dtype\": \"BF16\", \"shape\": [2], \"data_offsets\": [0, 4]}}",
             std::string(4, '\0'));
       },
       cli(), "tensor '" + kNorm3 + "' is also in b.safetensors"});
  add({"NoShards", kOrig, [](const Ctx& c) { fs::remove(c.file(kOrigShard)); }, cli(),
       "no *.safetensors files"});
  add({"ModelDirMissing", kOrig, none(), {"gemma-cli", "{R}/nope", "-p", "Hi"}, "not a directory"});
  add({"ModelDirIsFile",
       kOrig,
       write_file("plain", "x"),
       {"gemma-cli", "{R}/plain", "-p", "Hi"},
       "not a directory"});

  // -- config.json: every bound, every float, every type.
  add({"ConfigMissing", kOrig, [](const Ctx& c) { fs::remove(c.file("config.json")); }, cli(),
       "config.json: missing"});
  add({"ConfigNotJson", kOrig, write_file("model/config.json", "{\"model_type\": "), cli(),
       "config.json: not valid JSON"});
  add({"ConfigArray", kOrig, write_file("model/config.json", "[]"), cli(),
       "expected a JSON object"});
  add({"ConfigIsFifo", kOrig, fifo("model/config.json"), cli(), "config.json: not a regular file"});
  add({"ConfigModelType", kOrig, top_config("model_type", "llama"), cli(),
       "model_type is 'llama', expected 'gemma3'"});
  add({"ConfigTextConfigString", kOrig, top_config("text_config", "big"), cli(),
       "text_config: expected an object"});
  add({"ConfigVisionConfigArray", kOrig, top_config("vision_config", json::array()), cli(),
       "vision_config: expected an object"});
  struct Bad {
    const char* name;
    const char* key;
    json value;
    const char* expect;
  };
  const std::vector<Bad> text_bad = {
      {"LayersMillion", "num_hidden_layers", 1000000,
       "num_hidden_layers is 1000000, expected an integer from 1 to 256"},
      {"LayersBeyondInt", "num_hidden_layers", 4294967297LL, "num_hidden_layers is 4294967297"},
      {"LayersNegative", "num_hidden_layers", -1, "num_hidden_layers is -1"},
      {"LayersZero", "num_hidden_layers", 0, "num_hidden_layers is 0"},
      {"LayersString", "num_hidden_layers", "7", "num_hidden_layers is \"7\", expected an integer"},
      {"LayersFloat", "num_hidden_layers", 7.5, "num_hidden_layers is 7.5"},
      {"LayersMore", "num_hidden_layers", 8, "model.layers.7.self_attn.q_proj.weight' is missing"},
      {"HiddenZero", "hidden_size", 0, "hidden_size is 0"},
      {"HiddenHuge", "hidden_size", int64_t{1} << 40, "hidden_size is 1099511627776"},
      {"HiddenMismatch", "hidden_size", 128, "a config that does not match the weights?"},
      {"FfHuge", "intermediate_size", 1 << 30, "intermediate_size is 1073741824"},
      {"HeadsZero", "num_attention_heads", 0, "num_attention_heads is 0"},
      {"HeadsNotMultiple", "num_attention_heads", 3, "not a multiple of num_key_value_heads"},
      {"KvHeadsAboveHeads", "num_key_value_heads", 8,
       "num_key_value_heads is 8, expected an integer from 1 to 4"},
      {"KvHeadsZero", "num_key_value_heads", 0, "num_key_value_heads is 0"},
      {"HeadDimOdd", "head_dim", 63, "head_dim must be even"},
      {"HeadDimZero", "head_dim", 0, "head_dim is 0"},
      {"HeadDimHuge", "head_dim", 1 << 20, "head_dim is 1048576"},
      {"VocabHuge", "vocab_size", int64_t{1} << 40, "vocab_size is 1099511627776"},
      {"VocabZero", "vocab_size", 0, "vocab_size is 0"},
      {"QueryScalarZero", "query_pre_attn_scalar", 0,
       "query_pre_attn_scalar is 0, expected a finite number in (0"},
      {"QueryScalarNegative", "query_pre_attn_scalar", -64, "query_pre_attn_scalar is -64"},
      {"QueryScalarString", "query_pre_attn_scalar", "nan", "query_pre_attn_scalar is \"nan\""},
      {"RmsEpsNegative", "rms_norm_eps", -1, "rms_norm_eps is -1"},
      {"RmsEpsZero", "rms_norm_eps", 0, "rms_norm_eps is 0"},
      {"RmsEpsHuge", "rms_norm_eps", 1e300, "rms_norm_eps is 1e+300"},
      {"RopeThetaZero", "rope_theta", 0, "rope_theta is 0, expected a finite number in [1"},
      {"RopeThetaNegative", "rope_theta", -10000.0, "rope_theta is -10000.0"},
      {"RopeThetaHuge", "rope_theta", 1e300, "rope_theta is 1e+300"},
      {"RopeLocalZero", "rope_local_base_freq", 0, "rope_local_base_freq is 0"},
      {"SlidingWindowZero", "sliding_window", 0, "sliding_window is 0"},
      {"SlidingWindowIntMax", "sliding_window", 2147483647, "sliding_window is 2147483647"},
      {"MaxPositionZero", "max_position_embeddings", 0, "max_position_embeddings is 0"},
      {"PatternZero", "sliding_window_pattern", 0, "sliding_window_pattern is 0"},
      {"LayerTypesShort", "layer_types", json::array({"full_attention"}),
       "layer_types has 1 entries, expected 7"},
      {"LayerTypesBad", "layer_types", json::array({"a", "b", "c", "d", "e", "f", "g"}),
       "layer_types[0] is \"a\""},
      {"PerLayerShort", "per_layer_intermediate_sizes", json::array({512}),
       "per_layer_intermediate_sizes has 1 entries"},
      {"PerLayerZero", "per_layer_intermediate_sizes",
       json::array({512, 512, 512, 0, 512, 512, 512}), "per_layer_intermediate_sizes[3] is 0"},
      {"PerLayerHuge", "per_layer_intermediate_sizes",
       json::array({512, 512, 512, 512, 512, 512, int64_t{1} << 40}),
       "per_layer_intermediate_sizes[6] is 1099511627776"},
      {"RopeScalingZero", "rope_scaling", json{{"rope_type", "linear"}, {"factor", 0}},
       "rope_scaling: factor is 0"},
      {"RopeScalingYarn", "rope_scaling", json{{"rope_type", "yarn"}, {"factor", 8}},
       "rope_scaling type 'yarn' is not supported"},
  };
  for (const auto& b : text_bad)
    add({std::string("Text") + b.name, kOrig, text_config(b.key, b.value), cli(), b.expect});
  const std::vector<Bad> vision_bad = {
      {"ImageSizeZero", "image_size", 0, "image_size is 0"},
      {"ImageSizeOdd", "image_size", 701, "image_size 701 is not a multiple of patch_size 14"},
      {"ImageSizeHuge", "image_size", 1 << 30, "image_size is 1073741824"},
      {"GridHuge", "image_size", 8190, "is 585, expected at most 256 patches per side"},
      {"PatchZero", "patch_size", 0, "patch_size is 0"},
      {"HeadsNotDividing", "num_attention_heads", 3,
       "hidden_size is not a multiple of num_attention_heads"},
      {"LayersHuge", "num_hidden_layers", 100000, "num_hidden_layers is 100000"},
      {"EpsNegative", "layer_norm_eps", -1e-6, "layer_norm_eps is -1e-06"},
      {"FfZero", "intermediate_size", 0, "intermediate_size is 0"},
  };
  for (const auto& b : vision_bad)
    add({std::string("Vision") + b.name, kOrig, vision_config(b.key, b.value), cli(), b.expect});
  const std::vector<Bad> top_bad = {
      {"MmTokensIntMax", "mm_tokens_per_image", 2147483647, "mm_tokens_per_image is 2147483647"},
      {"MmTokensNotSquare", "mm_tokens_per_image", 15, "mm_tokens_per_image 15 must be a square"},
      {"MmTokensZero", "mm_tokens_per_image", 0, "mm_tokens_per_image is 0"},
      {"MmTokensSideNotDividing", "mm_tokens_per_image", 9, "must be a square whose side divides"},
      {"BoiBeyondVocab", "boi_token_index", 99999,
       "boi_token_index is 99999, expected an integer from 0 to 511"},
      {"ImageTokenNegative", "image_token_index", -1, "image_token_index is -1"},
      {"BosString", "bos_token_id", "two", "bos_token_id is \"two\""},
      {"EosString", "eos_token_id", "x", "eos_token_id: expected a token id or a list of ids"},
      {"EosHuge", "eos_token_id", json::array({1, int64_t{1} << 40}),
       "eos_token_id: expected token ids"},
      {"QuantBits8", "quantization", json{{"bits", 8}, {"group_size", 64}},
       "only 4-bit checkpoints"},
      {"QuantGroup12", "quantization", json{{"bits", 4}, {"group_size", 12}},
       "group_size must be a positive multiple of 8"},
      {"QuantGroupZero", "quantization", json{{"bits", 4}, {"group_size", 0}}, "group_size is 0"},
  };
  for (const auto& b : top_bad)
    add({std::string("Config") + b.name, kOrig, top_config(b.key, b.value), cli(), b.expect});
  add({"ConfigCompactVocabBeyondVocab", kMobile, config([](json& j) {
         j["text_config"]["vocab_pruning"] = {{"compact_vocab_size", 100000}};
       }),
       cli(), "compact_vocab_size is 100000"});
  add({"ConfigBadValueAlsoStopsPrune", kOrig, text_config("rms_norm_eps", -1), prune(),
       "rms_norm_eps is -1"});
  add({"ConfigBadValueAlsoStopsEval",
       kOrig,
       text_config("rope_theta", 0),
       {"gemma-eval", "ppl", "{M}", "--text", "{R}/t.txt", "--threads", "1"},
       "rope_theta is 0"});
  add({"ConfigBadValueAlsoStopsBench",
       kOrig,
       text_config("query_pre_attn_scalar", 0),
       {"gemma-bench", "{M}", "--reps", "1", "--pp", "8", "--tg", "2", "--skip-image"},
       "query_pre_attn_scalar is 0"});
  add({"ConfigBadValueAlsoStopsServer",
       kOrig,
       top_config("mm_tokens_per_image", 2147483647),
       {"gemma-server", "{M}", "--port", "0"},
       "mm_tokens_per_image is 2147483647"});

  // -- Side files.
  add({"GenerationConfigEosString", kOrig,
       write_file("model/generation_config.json", "{\"eos_token_id\": \"x\"}"), cli(),
       "generation_config.json: eos_token_id"});
  add({"GenerationConfigNotJson", kOrig, write_file("model/generation_config.json", "{"), cli(),
       "generation_config.json: not valid JSON"});
  add({"PreprocessorStdZero", kOrig,
       write_file("model/preprocessor_config.json", "{\"image_std\": [0, 0.5, 0.5]}"), cli(),
       "preprocessor_config.json: image_std[0] is 0"});
  add({"PreprocessorStdNegative", kOrig,
       write_file("model/preprocessor_config.json", "{\"image_std\": [0.5, -0.5, 0.5]}"), cli(),
       "image_std[1] is -0.5"});
  add({"PreprocessorMeanShort", kOrig,
       write_file("model/preprocessor_config.json", "{\"image_mean\": [0.5]}"), cli(),
       "image_mean is [0.5], expected 3 numbers"});
  add({"PreprocessorMeanStrings", kOrig,
       write_file("model/preprocessor_config.json", "{\"image_mean\": [\"a\", \"b\", \"c\"]}"),
       cli(), "image_mean[0] is \"a\""});
  add({"PreprocessorMeanHuge", kOrig,
       write_file("model/preprocessor_config.json", "{\"image_mean\": [1e300, 0, 0]}"), cli(),
       "image_mean[0] is 1e+300"});
  add({"PreprocessorNotJson", kOrig, write_file("model/preprocessor_config.json", "nope"), cli(),
       "preprocessor_config.json: not valid JSON"});

  // -- Tokenizer.
  add({"TokenizerModelFifo", kOrig, fifo("model/tokenizer.model"), cli(),
       "tokenizer.model: not a regular file (expected a file, found a FIFO)"});
  add({"TokenizerModelDirectory", kOrig,
       [](const Ctx& c) {
         fs::remove(c.file("tokenizer.model"));
         fs::create_directory(c.file("tokenizer.model"));
       },
       cli(), "tokenizer.model: not a regular file"});
  add({"TokenizerModelEmpty", kOrig, write_file("model/tokenizer.model", ""), cli(),
       "tokenizer.model"});
  add({"TokenizerModelGarbage", kOrig,
       write_file("model/tokenizer.model", std::string(300, '\xff')), cli(), "tokenizer.model"});
  add({"TokenizerModelTruncated", kOrig,
       [](const Ctx& c) { fs::resize_file(c.file("tokenizer.model"), 3000); }, cli(),
       "tokenizer.model"});
  add({"TokenizerMissing", kOrig, [](const Ctx& c) { fs::remove(c.file("tokenizer.model")); },
       cli(), "tokenizer.model and tokenizer.json are both missing"});
  // A 300-byte Gemma-style tokenizer.json whose vocab holds one huge id.
  auto small_json = [](uint64_t id) {
    json j = {{"normalizer",
               {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\u2581"}}},
              {"pre_tokenizer", nullptr},
              {"model",
               {{"type", "BPE"},
                {"unk_token", "<unk>"},
                {"vocab", {{"<unk>", 0}, {"a", id}}},
                {"merges", json::array()}}}};
    return j.dump();
  };
  add({"TokenizerJsonHugeId", kOrig,
       both([](const Ctx& c) { fs::remove(c.file("tokenizer.model")); },
            write_file("model/tokenizer.json", small_json(4000000000))),
       cli(), "tokenizer.json: \"a\" has id 4000000000, out of range"});
  add({"TokenizerJsonIdBeyondCount", kOrig,
       both([](const Ctx& c) { fs::remove(c.file("tokenizer.model")); },
            write_file("model/tokenizer.json", small_json(16000000))),
       cli(), "has id 16000000, out of range (expected ids from 0 to 1"});
  add({"TokenizerJsonNotJson", kOrig,
       both([](const Ctx& c) { fs::remove(c.file("tokenizer.model")); },
            write_file("model/tokenizer.json", "{\"model\": ")),
       cli(), "tokenizer.json: not valid JSON"});
  add({"TokenizerJsonWordPiece", kOrig,
       both([](const Ctx& c) { fs::remove(c.file("tokenizer.model")); },
            write_file("model/tokenizer.json",
                       "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}, \"merges\": "
                       "[]}}")),
       cli(), "model.type is \"WordPiece\", expected \"BPE\""});
  add({"TokenizerJsonFifo", kOrig,
       both([](const Ctx& c) { fs::remove(c.file("tokenizer.model")); },
            fifo("model/tokenizer.json")),
       cli(), "tokenizer.json: not a regular file"});

  // -- Images.
  add({"ImageValid", kOrig, image(bmp(20, 10)), cli_image(), ""});
  add({"ImageEmpty", kOrig, image(""), cli_image(), "is empty (0 bytes)"});
  add({"ImageGarbage", kOrig, image(std::string(1000, 'x')), cli_image(), "not a readable image"});
  // The reported 40 KB PNG declaring 16384x16384: refused from its header, nothing decoded.
  add({"ImagePngDeclares16384Square", kOrig,
       image(png_header(16384, 16384) + std::string(40000, '\0')), cli_image(),
       "16384x16384 = 268435456 pixels, beyond the budget"});
  add({"ImageBmpDeclaresHuge", kOrig, image(bmp(4, 4, 9000, 9000)), cli_image(),
       "9000x9000 = 81000000 pixels, beyond the budget"});
  add({"ImagePngBeyondSide", kOrig, image(png_header(100000, 10)), cli_image(),
       "beyond the limit of 16384x16384"});
  add({"ImagePngZeroWidth", kOrig, image(png_header(0, 10)), cli_image(), "has zero size 0x10"});
  add({"ImagePngTruncated", kOrig, image(png(64, 64).substr(0, 200)), cli_image(),
       "cannot decode the 64x64 pixels"});
  add({"ImagePngValid", kOrig, image(png(30, 40)), cli_image(), ""});
  add({"ImageBmpTruncated", kOrig, image(bmp(20, 10).substr(0, 600)), cli_image(),
       "is a 20x10 BMP whose pixel rows end at byte 654, but the file has 600 bytes"});
  add({"ImageMissing", kOrig, [](const Ctx& c) { fs::remove(c.root + "/img.bmp"); }, cli_image(),
       "img.bmp: cannot open"});
  add({"ImageDirectory", kOrig,
       [](const Ctx& c) {
         fs::remove(c.root + "/img.bmp");
         fs::create_directory(c.root + "/img.bmp");
       },
       cli_image(), "is a directory, expected an image file"});
  add({"ImageFifo", kOrig, fifo("img.bmp"), cli_image(), "is not a regular file"});
  add({"ImageWithTextOnlyTokens", kOrig, image(bmp(8, 8)),
       cli({"--image", "{R}/img.bmp", "--tokens", "2,8,8"}),
       "an image needs exactly 16 image tokens in a row"});

  // -- Flags.
  for (const auto& [name, flag, value, expect] :
       std::vector<std::tuple<std::string, std::string, std::string, std::string>>{
           {"TemperatureNan", "-t", "nan", "'nan' is not a finite number"},
           {"TemperatureInf", "-t", "inf", "'inf' is not a finite number"},
           {"TemperatureNegative", "-t", "-1", "temperature"},
           {"TopPNan", "--top-p", "nan", "'nan' is not a finite number"},
           {"TopPAboveOne", "--top-p", "1.5", "top-p"},
           {"MinPNan", "--min-p", "NaN", "'NaN' is not a finite number"},
           {"RepetitionPenaltyNan", "--repetition-penalty", "nan", "not a finite number"},
           {"RepetitionPenaltyZero", "--repetition-penalty", "0", "repetition-penalty"},
           {"ThreadsThousand", "--threads", "1000", "--threads is 1000, expected at most 256"},
           {"ThreadsNegative", "--threads", "-1", "threads"},
           {"CtxSizeZero", "--ctx-size", "0", "ctx-size"},
           {"CtxSizeHuge", "--ctx-size", "2000000000",
            "--ctx-size is 2000000000, expected 1 to 1048576"},
           {"CtxSizeNotNumber", "--ctx-size", "lots", "ctx-size"},
           {"MaxTokensNegative", "-m", "-1", "max-tokens"},
           {"TokensOutOfVocab", "--tokens", "2,99999",
            "token id 99999 at prompt position 1 is outside the vocabulary"},
           {"TokensNegative", "--tokens", "2,-5", "token id -5 at prompt position 1"},
           {"TokensNotNumbers", "--tokens", "2,abc", "--tokens: 'abc' is not a token id"},
           {"TokensOverflow", "--tokens", "99999999999999", "is not a token id"},
           {"TokensEmpty", "--tokens", ",", "is not a token id"},
           {"EmbeddingsOutWithoutImage", "--embeddings-out", "{O}",
            "--embeddings-out needs at least one --image"},
       }) {
    std::vector<std::string> a = {"gemma-cli", "{M}", "-m", "2", flag, value};
    if (flag != "--tokens" && flag != "--embeddings-out") a.insert(a.end(), {"-p", "Hi"});
    if (flag != "--threads") a.insert(a.end(), {"--threads", "1"});
    add({"Flag" + name, kOrig, none(), a, expect});
  }
  // The reported deadlock when thread creation fails: 256 threads' 8 MB stacks do not fit the
  // 2 GB cap, so a pthread_create fails and must be reported. Without the cap (ASan) all start.
  add({"ThreadCreationFails", kOrig, none(), cli({"--threads", "256"}),
       kCapMemory ? "cannot start worker thread" : ""});
  add({"PromptBeyondContext",
       kOrig,
       none(),
       {"gemma-cli", "{M}", "-p", std::string(5000, 'a') + " " + std::string(5000, 'b'),
        "--ctx-size", "16", "--threads", "1"},
       "exceed the context size of 16"});
  add({"ServerThreadsThousand",
       kOrig,
       none(),
       {"gemma-server", "{M}", "--port", "0", "--threads", "1000"},
       "--threads is 1000, expected at most 256"});
  add({"ServerPortOutOfRange", kOrig, none(), {"gemma-server", "{M}", "--port", "70000"}, "port"});
  add({"BenchThreadsThousand",
       kOrig,
       none(),
       {"gemma-bench", "{M}", "--threads", "1000", "--skip-image"},
       "--threads is 1000, expected at most 256"});
  add({"BenchSimdTargetUnknown",
       kOrig,
       none(),
       {"gemma-bench", "{M}", "--simd-target", "BOGUS", "--skip-image"},
       "--simd-target BOGUS: not a SIMD target this build and CPU run"});
  add({"BenchBatchTooLarge",
       kOrig,
       none(),
       {"gemma-bench", "{M}", "--batch", "2", "65", "--skip-image"},
       "--batch: Value 65 not in range 1 to 64"});
  add({"BenchImageGarbage",
       kOrig,
       image("garbage"),
       {"gemma-bench", "{M}", "--image", "{R}/img.bmp", "--reps", "1", "--pp", "8", "--tg", "2"},
       "not a readable image"});
  add({"EvalTextMissing",
       kOrig,
       none(),
       {"gemma-eval", "ppl", "{M}", "--text", "{R}/nope.txt", "--threads", "1"},
       "nope.txt"});
  add({"EvalThreadsThousand",
       kOrig,
       none(),
       {"gemma-eval", "ppl", "{M}", "--text", "{R}/t.txt", "--threads", "1000"},
       "--threads is 1000, expected at most 256"});
  add({"EvalCompareBadB",
       kOrig,
       [](const Ctx& c) {
         fs::create_directory(c.root + "/b");
         fs::copy_file(c.file(kOrigShard), c.root + "/b/" + kOrigShard);
         write_bytes(c.root + "/b/config.json", "{\"model_type\": \"bert\"}");
       },
       {"gemma-eval", "compare", "{M}", "{R}/b", "--text", "{R}/t.txt", "--threads", "1"},
       "model_type is 'bert'"});

  // -- Output files: --logits-out and --embeddings-out.
  add({"LogitsOutDevNull", kOrig, none(), cli({"-m", "0", "--logits-out", "/dev/null"}), "",
       [](const Ctx&, const RunResult&) {
         struct stat st {};
         ASSERT_EQ(::stat("/dev/null", &st), 0);
         EXPECT_TRUE(S_ISCHR(st.st_mode)) << "/dev/null was replaced";
       }});
  add({"LogitsOutThroughSymlink", kOrig,
       [](const Ctx& c) {
         fs::create_directory(c.out);
         fs::create_symlink(c.out + "/real.f32", c.root + "/link.f32");
       },
       cli({"-m", "0", "--logits-out", "{R}/link.f32"}), "",
       [](const Ctx& c, const RunResult&) {
         EXPECT_TRUE(fs::is_symlink(c.root + "/link.f32")) << "the symlink was replaced";
         // 16 prompt tokens of 512 f32 logits each.
         EXPECT_EQ(fs::file_size(c.out + "/real.f32"), 16u * 512 * 4);
       }});
  // A FIFO is written in place, to the program reading it (here a thread of this test).
  add({"LogitsOutIntoFifo", kOrig,
       both(fifo("out"),
            [](const Ctx& c) {
              std::thread([p = c.out] {
                const int fd = ::open(p.c_str(), O_RDONLY);
                char buf[4096];
                while (::read(fd, buf, sizeof buf) > 0) {
                }
                ::close(fd);
              }).detach();
            }),
       cli({"-m", "0", "--logits-out", "{O}"}), "", [](const Ctx& c, const RunResult&) {
         struct stat st {};
         ASSERT_EQ(::lstat(c.out.c_str(), &st), 0);
         EXPECT_TRUE(S_ISFIFO(st.st_mode)) << "the FIFO was replaced";
       }});
  add({"LogitsOutIsDirectory", kOrig, [](const Ctx& c) { fs::create_directory(c.out); },
       cli({"-m", "0", "--logits-out", "{O}"}), "is a directory, expected a file name"});
  add({"LogitsOutNoParent", kOrig, none(), cli({"-m", "0", "--logits-out", "{O}/no/x.f32"}),
       "cannot create"});
  add({"EmbeddingsOutDevNull", kOrig, image(bmp(8, 8)),
       cli({"--image", "{R}/img.bmp", "--embeddings-out", "/dev/null", "-m", "0"}), "",
       [](const Ctx&, const RunResult&) {
         struct stat st {};
         ASSERT_EQ(::stat("/dev/null", &st), 0);
         EXPECT_TRUE(S_ISCHR(st.st_mode)) << "/dev/null was replaced";
       }});

  // -- gemma-prune's output directory.
  add({"PruneOutIsInput",
       kOrig,
       none(),
       {"gemma-prune", "{M}", "{M}", "--steps", "split", "--force"},
       "is (or contains) the input checkpoint"});
  add({"PruneOutIsInputParent",
       kOrig,
       none(),
       {"gemma-prune", "{M}", "{R}", "--steps", "split", "--force"},
       "is (or contains) the input checkpoint"});
  // The reported data loss: `gemma-prune IN . --force` deleted the working directory.
  add({"PruneForceDot",
       kOrig,
       write_file("cwd/mine.txt", "keep"),
       {"gemma-prune", "{M}", ".", "--steps", "split", "--force", "--quiet"},
       "is the working directory or one of its parents"});
  add({"PruneForceDotDot",
       kOrig,
       write_file("cwd/mine.txt", "keep"),
       {"gemma-prune", "{M}", "x/..", "--steps", "split", "--force", "--quiet"},
       "is the working directory or one of its parents"});
  add({"PruneForceCwdParent",
       kOrig,
       write_file("cwd/mine.txt", "keep"),
       {"gemma-prune", "{M}", "..", "--steps", "split", "--force", "--quiet"},
       "is (or contains) the input checkpoint"});
  add({"PruneForceOverOtherData", kOrig,
       [](const Ctx& c) {
         fs::create_directory(c.out);
         write_bytes(c.out + "/thesis.tex", "years of work");
       },
       prune({"--force"}), "is not an earlier output",
       [](const Ctx& c, const RunResult&) {
         EXPECT_EQ(read_bytes(c.out + "/thesis.tex"), "years of work");
       }});
  add({"PruneForceOverFile", kOrig, write_file("out", "a file"), prune({"--force"}),
       "exists and is not a directory"});
  add({"PruneExistingWithoutForce", kOrig, [](const Ctx& c) { fs::create_directory(c.out); },
       prune(), "already exists"});
  add({"PruneForceOverEarlierOutput", kOrig,
       [](const Ctx& c) {
         fs::create_directory(c.out);
         write_bytes(c.out + "/config.json", "{}");
         write_bytes(c.out + "/model.safetensors", "");
       },
       prune({"--force"}), "",
       [](const Ctx& c, const RunResult&) {
         EXPECT_TRUE(fs::exists(c.out + "/language_model.safetensors"));
         EXPECT_FALSE(fs::exists(c.out + "/model.safetensors"));
         for (const auto& e : fs::directory_iterator(c.root))
           EXPECT_EQ(e.path().filename().string().find("out."), std::string::npos)
               << "left behind: " << e.path();
       }});
  add({"PruneForceOverEmptyDir", kOrig, [](const Ctx& c) { fs::create_directory(c.out); },
       prune({"--force"}), "",
       [](const Ctx& c, const RunResult&) {
         EXPECT_TRUE(fs::exists(c.out + "/vision_model.safetensors"));
       }});
  add({"PruneNeuronThresholdNan", kOrig, none(), prune({"--neuron-threshold", "nan"}),
       "'nan' is not a finite number"});
  add({"PruneNeuronMaxReductionTwo", kOrig, none(), prune({"--neuron-max-reduction", "2"}),
       "neuron-max-reduction"});
  add({"PruneNeuronMaxReductionNan", kOrig, none(), prune({"--neuron-max-reduction", "nan"}),
       "not a finite number"});
  add({"PruneAnalyzeThresholdNan",
       kOrig,
       none(),
       {"gemma-prune", "analyze", "{M}", "--neuron-threshold", "nan"},
       "not a finite number"});
  add({"PruneDropLayerBeyond", kOrig, none(), prune({"--steps", "layers", "--drop-layers", "99"}),
       "99"});
  add({"PruneDropLayerWords", kOrig, none(), prune({"--steps", "layers", "--drop-layers", "x"}),
       "--drop-layers: 'x' is not a layer index"});
  add({"PruneNeuronLayersBad", kOrig, none(), prune({"--neuron-layers", "a-b"}),
       "--neuron-layers: 'a-b' is not a layer range"});
  add({"PruneStepsBogus", kOrig, none(), prune({"--steps", "bogus"}), "bogus"});
  add({"PruneThreadsThousand", kOrig, none(), prune({"--threads", "1000"}),
       "--threads is 1000, expected at most 256"});
  add({"PruneResolutionZero", kOrig, none(), prune({"--steps", "resolution", "--image-size", "0"}),
       "image"});
  add({"PruneCalibrationMissing", kOrig, none(),
       prune({"--steps", "neurons", "--calibration", "{R}/nope.txt"}), "nope.txt"});
  add({"PruneTextOnlyNeedsNoVisionStep", kMobile,
       [](const Ctx& c) {
         fs::remove(c.file(kVisionShard));
         edit_json(c.file("model.safetensors.index.json"), [](json& j) {
           json m = json::object();
           for (auto& [k, v] : j["weight_map"].items())
             if (v != kVisionShard) m[k] = v;
           j["weight_map"] = m;
         });
       },
       prune({"--steps", "fc2"}), "does not apply: the checkpoint has no vision tower"});
  add({"PruneValidRunIsComplete", kMobile, none(),
       prune({"--steps", "layers", "--drop-layers", "5"}), "", [](const Ctx& c, const RunResult&) {
         const auto j = json::parse(read_bytes(c.out + "/config.json"));
         EXPECT_EQ(j["text_config"]["num_hidden_layers"], 6);
       }});
  return v;
}

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class Hostile : public ::testing::TestWithParam<Case> {};

TEST_P(Hostile, EndsInOneClearErrorOrACorrectResult) {
  const Case& k = GetParam();
  static bool noted = false;
  if (!kCapMemory && !noted) {
    std::printf("note: built with AddressSanitizer: the %llu-byte address-space cap is skipped\n",
                static_cast<unsigned long long>(kMemoryCap));
    noted = true;
  }
  const std::string io = test::temp_dir("hostile-io");
  Ctx c;
  c.root = test::temp_dir("hostile");
  c.model = c.root + "/model";
  c.out = c.root + "/out";
  c.cwd = c.root + "/cwd";
  fs::create_directories(c.cwd);
  fs::create_directories(c.model);
  for (const auto& e : fs::directory_iterator(test::data_path(k.fixture)))
    if (e.is_regular_file()) fs::copy_file(e.path(), c.model + "/" + e.path().filename().string());
  write_bytes(c.root + "/t.txt", "The quick brown fox jumps over the lazy dog.\n");
  write_bytes(c.root + "/img.bmp", bmp(12, 9));
  ASSERT_NO_FATAL_FAILURE(k.mutate(c));
  auto before = snapshot(c.root, c.out);

  std::vector<std::string> argv;
  for (const auto& a : k.argv) argv.push_back(subst(a, c));
  const RunResult r = run_tool(argv, c.cwd, io);

  ASSERT_FALSE(r.timed_out) << "hung for " << kTimeoutSeconds << " s\n" << r.err;
  ASSERT_TRUE(r.exited) << "killed by signal " << r.status << " (" << strsignal(r.status) << ")\n"
                        << r.err;
  if (k.expect.empty()) {
    EXPECT_EQ(r.status, 0) << r.err;
  } else {
    EXPECT_NE(r.status, 0) << "exit 0 where an error was expected\n" << r.err;
    // The expected words (the file or key, what was expected) on one line.
    bool found = false;
    std::istringstream lines(r.err);
    for (std::string line; std::getline(lines, line);)
      found |= line.find(k.expect) != std::string::npos;
    EXPECT_TRUE(found) << "no line with \"" << k.expect << "\" in:\n" << r.err;
    // Never a bare library message without the file or key.
    EXPECT_EQ(r.err.find("std::bad_alloc"), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("error: [json.exception"), std::string::npos) << r.err;
  }
  if (k.verify) k.verify(c, r);
  auto after = snapshot(c.root, c.out);
  for (const auto& p : k.may_change) {
    before.erase(subst(p, c));
    after.erase(subst(p, c));
  }
  EXPECT_EQ(before, after) << "files outside the output directory were touched";
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) { return info.param.name; }

INSTANTIATE_TEST_SUITE_P(Tools, Hostile, ::testing::ValuesIn(model_cases()), case_name);

}  // namespace
}  // namespace gp

namespace gp {
namespace {

// ---- gemma-server: malformed HTTP against a real server on 127.0.0.1.

// A gemma-server subprocess on a free port, under the memory cap; stopped with SIGTERM.
class ServerProcess {
 public:
  ServerProcess(const std::string& model, const std::vector<std::string>& extra) {
    log_ = test::temp_dir("hostile-server") + "/stderr";
    std::vector<std::string> argv = {
        test::bin_path("gemma-server"), model, "--port", "0", "--threads", "1"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    pid_ = fork();
    if (pid_ == 0) {
      if (kCapMemory) {
        struct rlimit lim {
          kMemoryCap, kMemoryCap
        };
        setrlimit(RLIMIT_AS, &lim);
      }
      const int e = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(e, 2);
      std::vector<char*> args;
      for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
    const std::string marker = "listening on http://127.0.0.1:";
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(kTimeoutSeconds);
    while (std::chrono::steady_clock::now() < deadline) {
      const std::string log = read_bytes(log_);
      const size_t p = log.find(marker);
      if (p != std::string::npos && log.find('/', p + marker.size()) != std::string::npos) {
        port_ = std::stoi(log.substr(p + marker.size()));
        return;
      }
      int st = 0;
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  ~ServerProcess() { stop(); }

  int port() const { return port_; }
  std::string log() const { return read_bytes(log_); }
  // Stops the server; false when it had died on its own (a crash) before.
  bool stop() {
    if (pid_ <= 0) return pid_ == 0;
    int st = 0;
    const bool alive = waitpid(pid_, &st, WNOHANG) == 0;
    if (alive) {
      kill(pid_, SIGTERM);
      waitpid(pid_, &st, 0);
    }
    pid_ = 0;
    return alive;
  }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  std::string log_;
};

int connect_to(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  timeval tv{kTimeoutSeconds, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

// Sends raw bytes, then reads the response until the server closes the connection.
std::string exchange(int port, const std::string& request) {
  const int fd = connect_to(port);
  if (fd < 0) return "";
  size_t sent = 0;
  while (sent < request.size()) {
    const ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;  // the server may answer (413) and close before the whole body is sent
    sent += static_cast<size_t>(n);
  }
  // No shutdown(SHUT_WR): httplib drops the answer to a peer whose write side is closed. Reads
  // until the response is complete (Content-Length, or the last chunk) or the server closes.
  std::string response;
  char buf[65536];
  auto complete = [&] {
    const size_t end = response.find("\r\n\r\n");
    if (end == std::string::npos) return false;
    const std::string head = response.substr(0, end);
    const size_t cl = head.find("Content-Length: ");
    if (cl != std::string::npos)
      return response.size() >= end + 4 + std::stoull(head.substr(cl + 16));
    return head.find("chunked") != std::string::npos && response.size() >= 5 &&
           response.compare(response.size() - 5, 5, "0\r\n\r\n") == 0;
  };
  while (!complete()) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    response.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return response;
}

std::string post(const std::string& path, const std::string& body,
                 const std::string& extra_headers = "") {
  return "POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" +
         "Content-Type: application/json\r\n" + extra_headers +
         "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}
std::string chat(const std::string& content, const std::string& more = "") {
  return post("/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": " +
                                          content + "}], \"max_tokens\": 2" + more + "}");
}
std::string image_part(const std::string& bytes) {
  static const char* k = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string b64;
  for (size_t i = 0; i < bytes.size(); i += 3) {
    uint32_t v = static_cast<uint8_t>(bytes[i]) << 16;
    if (i + 1 < bytes.size()) v |= static_cast<uint8_t>(bytes[i + 1]) << 8;
    if (i + 2 < bytes.size()) v |= static_cast<uint8_t>(bytes[i + 2]);
    b64 += k[(v >> 18) & 63];
    b64 += k[(v >> 12) & 63];
    b64 += i + 1 < bytes.size() ? k[(v >> 6) & 63] : '=';
    b64 += i + 2 < bytes.size() ? k[v & 63] : '=';
  }
  return "[{\"type\": \"image_url\", \"image_url\": {\"url\": \"data:image/png;base64," + b64 +
         "\"}}, {\"type\": \"text\", \"text\": \"What is it?\"}]";
}

struct HttpCase {
  std::string name;
  std::vector<std::string> server_args;
  std::function<std::string()> request;  // built when the case runs (one is 30 MB)
  int status;                            // expected HTTP status
  std::string expect;                    // a substring of the response body
};

void PrintTo(const HttpCase& c, std::ostream* os) { *os << c.name; }

std::vector<HttpCase> http_cases() {
  const std::string get_health = "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  return {
      {"Health", {}, [=] { return std::string(get_health); }, 200, "\"status\""},
      {"ValidChat", {}, [=] { return std::string(chat("\"Hi\"")); }, 200, "\"choices\""},
      {"ValidStream",
       {},
       [=] { return std::string(chat("\"Hi\"", ", \"stream\": true")); },
       200,
       "data: [DONE]"},
      {"ValidImage",
       {},
       [=] { return std::string(chat(image_part(png(20, 20)))); },
       200,
       "\"choices\""},
      {"GarbageRequestLine", {}, [=] { return std::string("GARBAGE\r\n\r\n"); }, 400, ""},
      {"NoHttpVersion", {}, [=] { return std::string("GET /health\r\n\r\n"); }, 400, ""},
      {"BinaryNoise",
       {},
       [=] { return std::string(std::string("\x00\xff\x13\x37\r\n\r\n", 8)); },
       400,
       ""},
      {"UnknownRoute",
       {},
       [=] { return std::string("GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n"); },
       404,
       "no route GET /nope"},
      {"GetOnCompletions",
       {},
       [=] {
         return std::string("GET /v1/chat/completions HTTP/1.1\r\nConnection: close\r\n\r\n");
       },
       405,
       "takes POST requests"},
      {"BodyNotJson",
       {},
       [=] { return std::string(post("/v1/chat/completions", "{\"messages\": ")); },
       400,
       "JSON"},
      {"BodyEmpty", {}, [=] { return std::string(post("/v1/chat/completions", "")); }, 400, "JSON"},
      {"BodyArray",
       {},
       [=] { return std::string(post("/v1/chat/completions", "[1, 2]")); },
       400,
       "object"},
      {"BodyDeeplyNested",
       {},
       [=] { return std::string(post("/v1/chat/completions", std::string(100000, '['))); },
       400,
       "JSON"},
      {"MessagesNotArray",
       {},
       [=] { return std::string(post("/v1/chat/completions", "{\"messages\": 5}")); },
       400,
       "messages"},
      {"MessagesEmpty",
       {},
       [=] { return std::string(post("/v1/chat/completions", "{\"messages\": []}")); },
       400,
       "messages"},
      {"MessageRoleBad",
       {},
       [=] {
         return std::string(post("/v1/chat/completions",
                                 "{\"messages\": [{\"role\": \"god\", \"content\": \"x\"}]}"));
       },
       400,
       "role"},
      {"ContentNumber", {}, [=] { return std::string(chat("5")); }, 400, "content"},
      {"TemperatureString",
       {},
       [=] { return std::string(chat("\"Hi\"", ", \"temperature\": \"hot\"")); },
       400,
       "temperature"},
      {"TemperatureNegative",
       {},
       [=] { return std::string(chat("\"Hi\"", ", \"temperature\": -1")); },
       400,
       "temperature"},
      {"TopPAboveOne",
       {},
       [=] { return std::string(chat("\"Hi\"", ", \"top_p\": 7")); },
       400,
       "top_p"},
      {"MaxTokensNegative",
       {},
       [=] { return std::string(chat("\"Hi\"", ", \"max_tokens\": -5")); },
       400,
       "max_tokens"},
      {"MaxTokensHuge",
       {},
       [=] { return std::string(chat("\"Hi\"", ", \"max_tokens\": 1e300")); },
       400,
       "max_tokens"},
      // The reported 4.3 GB: a 30 MB message tokenized before the context was checked.
      {"MessageBeyondContextBytes",
       {},
       [=] { return std::string(chat("\"" + std::string(30u << 20, 'a') + "\"")); },
       400,
       "bytes, more than the context size of 4096 tokens"},
      {"MessageBeyondContextTokens",
       {"--ctx-size", "64"},
       [=] {
         return std::string(
             chat("\"" + std::string(600, 'a') + " " + std::string(600, 'b') + "\""));
       },
       400,
       "context"},
      {"PromptIdsOutOfVocab",
       {},
       [=] {
         return std::string(post("/v1/completions", "{\"prompt\": [2, 99999], \"max_tokens\": 1}"));
       },
       400,
       "prompt[1]"},
      {"PromptIdsNegative",
       {},
       [=] {
         return std::string(post("/v1/completions", "{\"prompt\": [2, -1], \"max_tokens\": 1}"));
       },
       400,
       "prompt"},
      // The reported 1.5 GB and 14 s: a small PNG declaring 16384x16384, refused from its header.
      {"ImageDeclares16384Square",
       {},
       [=] {
         return std::string(chat(image_part(png_header(16384, 16384) + std::string(40000, '\0'))));
       },
       400,
       "beyond the budget"},
      {"ImageGarbage",
       {},
       [=] { return std::string(chat(image_part("not an image at all"))); },
       400,
       "not a readable image"},
      {"ImageTruncated",
       {},
       [=] { return std::string(chat(image_part(png(64, 64).substr(0, 150)))); },
       400,
       "cannot decode"},
      {"ImageBadBase64",
       {},
       [=] {
         return std::string(
             chat("[{\"type\": \"image_url\", \"image_url\": {\"url\": "
                  "\"data:image/png;base64,@@@@\"}}]"));
       },
       400,
       "base64"},
      {"ImageRemoteUrl",
       {},
       [=] {
         return std::string(
             chat("[{\"type\": \"image_url\", \"image_url\": {\"url\": "
                  "\"http://example.com/a.png\"}}]"));
       },
       400,
       "only data: URLs are supported"},
      {"BodyBeyondMaxBody",
       {"--max-body", "1000"},
       [=] { return std::string(chat("\"" + std::string(5000, 'a') + "\"")); },
       413,
       "over the limit of 1000"},
      {"ContentLengthNegative",
       {},
       [=] {
         return std::string(
             "POST /v1/chat/completions HTTP/1.1\r\nConnection: close\r\nContent-Length: "
             "-5\r\n\r\n");
       },
       400,
       "the Content-Length header '-5' is not a number of bytes"},
      {"ContentLengthHuge",
       {},
       [=] {
         return std::string(
             "POST /v1/chat/completions HTTP/1.1\r\nConnection: close\r\nContent-Length: "
             "99999999999999999999\r\n\r\n");
       },
       413,
       "over the limit of 33554432 (--max-body)"},
      {"ChunkedBadSize",
       {},
       [=] {
         return std::string(
             "POST /v1/chat/completions HTTP/1.1\r\nConnection: close\r\nTransfer-Encoding: "
             "chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n");
       },
       400,
       ""},
      {"HeaderLineHuge",
       {},
       [=] {
         return std::string("GET /health HTTP/1.1\r\nX-Big: " + std::string(100000, 'x') +
                            "\r\nConnection: close\r\n\r\n");
       },
       431,
       "headers_too_large"},
      {"HeadersOver64KiB",
       {},
       [] {
         std::string r = "GET /health HTTP/1.1\r\nConnection: close\r\n";
         for (int i = 0; i < 200; ++i)
           r += "X-H" + std::to_string(i) + ": " + std::string(1000, 'v') + "\r\n";
         return r + "\r\n";
       },
       431,
       "headers_too_large"},
      {"ManyHeaders",
       {},
       [] {
         std::string r = "GET /health HTTP/1.1\r\nConnection: close\r\n";
         for (int i = 0; i < 500; ++i) r += "X-H" + std::to_string(i) + ": v\r\n";
         return r + "\r\n";
       },
       200,
       "\"status\""},
      {"ApiKeyMissing",
       {"--api-key", "secret"},
       [=] { return std::string(chat("\"Hi\"")); },
       401,
       "API key"},
      {"ApiKeyWrong",
       {"--api-key", "secret"},
       [=] {
         return std::string(post("/v1/chat/completions",
                                 "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}",
                                 "Authorization: Bearer nope\r\n"));
       },
       401,
       "API key"},
  };
}

class HostileHttp : public ::testing::TestWithParam<HttpCase> {};

TEST_P(HostileHttp, AnswersWithAnErrorObjectAndKeepsServing) {
  const HttpCase& k = GetParam();
  ServerProcess server(test::data_path(kMobile), k.server_args);
  ASSERT_GT(server.port(), 0) << server.log();
  const std::string response = exchange(server.port(), k.request());
  ASSERT_FALSE(response.empty()) << "no response\n" << server.log().substr(0, 4000);
  const std::string status_line = response.substr(0, response.find("\r\n"));
  EXPECT_NE(status_line.find(" " + std::to_string(k.status) + " "), std::string::npos)
      << status_line << "\n"
      << response.substr(0, 2000);
  EXPECT_NE(response.find(k.expect), std::string::npos) << response.substr(0, 2000);
  // Still serving, then stopped by us, not by a crash.
  const std::string health =
      exchange(server.port(), "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(health.rfind("HTTP/1.1 200", 0), 0u) << health << server.log().substr(0, 4000);
  EXPECT_TRUE(server.stop()) << "the server died\n" << server.log().substr(0, 4000);
}

std::string http_case_name(const ::testing::TestParamInfo<HttpCase>& info) {
  return info.param.name;
}

INSTANTIATE_TEST_SUITE_P(Server, HostileHttp, ::testing::ValuesIn(http_cases()), http_case_name);

// `n` connections that each send the start of a request head, then one more byte every 500 ms
// until destroyed: slowloris clients.
class SlowClients {
 public:
  SlowClients(int port, int n) {
    for (int i = 0; i < n; ++i) {
      const int fd = connect_to(port);
      if (fd < 0) continue;
      ::send(fd, "GET /health HTTP/1.1\r\nHost: x\r\n", 32, MSG_NOSIGNAL);
      fds_.push_back(fd);
    }
    trickle_ = std::thread([this] {
      while (!done_) {
        for (int fd : fds_) ::send(fd, "X", 1, MSG_NOSIGNAL);
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
      }
    });
  }
  ~SlowClients() {
    done_ = true;
    trickle_.join();
    for (int fd : fds_) ::close(fd);
  }
  size_t size() const { return fds_.size(); }

 private:
  std::vector<int> fds_;
  std::atomic<bool> done_{false};
  std::thread trickle_;
};

const char* const kHealthRequest = "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

// The reported slowloris: connections that trickle header bytes and never finish held every
// thread of a fixed pool of 32, and /health stopped answering.
TEST(HostileServer, SlowClientsDoNotBlockHealth) {
  ServerProcess server(test::data_path(kMobile), {});
  ASSERT_GT(server.port(), 0) << server.log();
  std::string health;
  {
    SlowClients slow(server.port(), 64);
    ASSERT_EQ(slow.size(), 64u);
    health = exchange(server.port(), kHealthRequest);
  }
  EXPECT_EQ(health.rfind("HTTP/1.1 200", 0), 0u) << health;
  EXPECT_TRUE(server.stop()) << server.log().substr(0, 4000);
}

// Slow clients beyond the threads and the waiting places: a connection cap of 8 (and 8 waiting),
// 40 connections trickling header bytes. Each holds a thread at most --header-timeout, those
// beyond the cap are refused at once, and /health (asked again after a 503) gets through.
TEST(HostileServer, SlowClientsBeyondTheConnectionCapDoNotBlockHealth) {
  ServerProcess server(test::data_path(kMobile), {"--max-connections", "8", "--max-queue", "2",
                                                  "--parallel", "1", "--header-timeout", "2"});
  ASSERT_GT(server.port(), 0) << server.log();
  std::string health;
  {
    SlowClients slow(server.port(), 40);
    ASSERT_EQ(slow.size(), 40u);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(kTimeoutSeconds);
    while (health.rfind("HTTP/1.1 200", 0) != 0 && std::chrono::steady_clock::now() < deadline) {
      health = exchange(server.port(), kHealthRequest);
      if (health.rfind("HTTP/1.1 200", 0) != 0)
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  EXPECT_EQ(health.rfind("HTTP/1.1 200", 0), 0u) << health;
  EXPECT_TRUE(server.stop()) << server.log().substr(0, 4000);
}

// The reported SO_REUSEPORT: a second server on a busy port started silently and took half the
// connections. It must fail at once, naming the address.
TEST(HostileServer, SecondServerOnABusyPortFails) {
  ServerProcess first(test::data_path(kMobile), {});
  ASSERT_GT(first.port(), 0) << first.log();
  const std::string io = test::temp_dir("hostile-io");
  const std::string port = std::to_string(first.port());
  const RunResult r = run_tool(
      {"gemma-server", test::data_path(kMobile), "--port", port, "--threads", "1"}, io, io);
  ASSERT_FALSE(r.timed_out) << "the second server started and kept running";
  ASSERT_TRUE(r.exited) << r.err;
  EXPECT_EQ(r.status, 1) << r.err;
  EXPECT_NE(r.err.find("cannot listen on 127.0.0.1:" + port), std::string::npos) << r.err;
  EXPECT_TRUE(first.stop()) << first.log().substr(0, 4000);
}

}  // namespace
}  // namespace gp
