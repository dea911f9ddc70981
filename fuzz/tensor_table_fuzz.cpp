// The tensor table checked against the config: the input is a config.json for the tiny-mobile
// fixture's tensors, which are then loaded as the engine loads them (layout detection, every
// linear and float tensor of the text model and the vision tower, the token_map). The checkpoint
// is opened once (its headers are the safetensors and index targets' work); the input is parsed
// in memory as read_model_config parses config.json (reading the file is the config target's
// work), then taken as ModelFiles takes it.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "base/error.h"
#include "fuzz_util.h"
#include "io/model_dir.h"
#include "model/config.h"
#include "model/tensor_table.h"
#include "model/text_model.h"
#include "model/vision_model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const gp::ModelDir dir(gp::fuzz::data_path("tiny-mobile"));
  static const std::string path = dir.path() + "/config.json";
  nlohmann::ordered_json config;
  try {
    config = nlohmann::ordered_json::parse(data, data + size);
  } catch (const nlohmann::json::exception&) {
    return 0;  // not JSON: read_json_file refuses it before any table check
  }
  if (!config.is_object()) return 0;  // refused by read_model_config
  try {
    gp::ModelConfig c = gp::parse_config(config, nullptr, path);
    const gp::TableLayout layout = gp::detect_layout(dir);
    if (layout.token_map && c.compact_vocab == 0) c.compact_vocab = layout.embed_rows;
    gp::load_text_weights(dir, c, layout);
    if (layout.vision) gp::load_vision_weights(dir, c, layout);
  } catch (const gp::Error&) {
  }
  return 0;
}
