// The token_map of a compact vocabulary: the input replaces the token_map bytes of a copy of the
// tiny-mobile fixture (cut or zero-padded to its I32 [vocab_size]); the text weights are loaded
// and every id embedded, and logits computed, through the map.
#include <cstdint>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "base/error.h"
#include "fuzz_util.h"
#include "io/model_dir.h"
#include "model/config.h"
#include "model/tensor_table.h"
#include "model/text_model.h"

namespace {
const char* kShard = "language_model.safetensors";
const char* kTokenMap = "language_model.model.embed_tokens.token_map";

// Offset and size of the token_map bytes in the shard, from its header.
std::pair<size_t, size_t> token_map_span(const std::string& path) {
  const std::string bytes = gp::fuzz::read_file(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  const auto header = nlohmann::json::parse(bytes.substr(8, n));
  const auto& offsets = header.at(kTokenMap).at("data_offsets");
  const size_t begin = offsets[0].get<size_t>(), end = offsets[1].get<size_t>();
  return {8 + n + begin, end - begin};
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = gp::fuzz::copy_fixture("tiny-mobile", "token_map");
  static const std::string shard = dir + "/" + kShard;
  static const auto span = token_map_span(shard);
  std::string map(span.second, '\0');
  std::memcpy(map.data(), data, std::min(size, span.second));
  {
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(span.first));
    f.write(map.data(), static_cast<std::streamsize>(map.size()));
  }
  try {
    gp::ModelDir d(dir);
    gp::ModelConfig c = gp::parse_config(d.config(), nullptr, dir + "/config.json");
    const gp::TableLayout layout = gp::detect_layout(d);
    gp::TextModel model(c, gp::load_text_weights(d, c, layout));
    std::vector<float> x(c.text.d_model), logits(c.text.n_vocab);
    for (int32_t id = 0; id < c.text.n_vocab; ++id) model.embed(id, x.data());
    model.logits(x.data(), 1, logits.data());
  } catch (const gp::Error&) {
  }
  return 0;
}
