// config.json with generation_config.json and preprocessor_config.json: the input is the three
// files cut at form feeds; each is written and read as the loader reads it, then parsed.
#include <cstdint>
#include <string>

#include "base/error.h"
#include "fuzz_util.h"
#include "io/model_dir.h"
#include "model/config.h"
#include "model/tensor_table.h"
#include "runtime/engine.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = gp::fuzz::scratch_dir();
  const auto parts = gp::fuzz::split_parts(data, size, 3);
  const char* files[3] = {"config.json", "generation_config.json", "preprocessor_config.json"};
  nlohmann::ordered_json json[3];
  for (int i = 0; i < 3; ++i) {
    const std::string path = dir + "/" + files[i];
    gp::fuzz::write_file(path, parts[i]);
    try {
      json[i] = gp::read_json_file(path);
    } catch (const gp::Error&) {
    }
  }
  try {
    const gp::ModelConfig c = gp::parse_config(json[0], json[1], dir + "/config.json");
    // The shapes every tensor of such a checkpoint would have.
    gp::TableLayout layout;
    layout.head_rows = c.text.n_vocab;
    gp::tensor_table(c, layout);
  } catch (const gp::Error&) {
  }
  try {
    float mean[3], std_[3];
    gp::parse_image_normalization(json[2], dir + "/preprocessor_config.json", mean, std_);
  } catch (const gp::Error&) {
  }
  return 0;
}
