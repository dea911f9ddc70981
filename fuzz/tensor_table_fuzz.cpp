// The tensor table checked against the config: the input is the config.json of a copy of the
// tiny-mobile fixture, whose tensors are then loaded as the engine loads them (layout detection,
// every linear and float tensor of the text model and the vision tower, the token_map).
#include <cstdint>
#include <string>

#include "base/error.h"
#include "fuzz_util.h"
#include "io/model_dir.h"
#include "model/config.h"
#include "model/tensor_table.h"
#include "model/text_model.h"
#include "model/vision_model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = gp::fuzz::copy_fixture("tiny-mobile", "table");
  gp::fuzz::write_file(dir + "/config.json",
                       std::string(reinterpret_cast<const char*>(data), size));
  try {
    gp::ModelDir d(dir);
    gp::ModelConfig c = gp::parse_config(d.config(), nullptr, dir + "/config.json");
    const gp::TableLayout layout = gp::detect_layout(d);
    gp::load_text_weights(d, c, layout);
    if (layout.vision) gp::load_vision_weights(d, c, layout);
  } catch (const gp::Error&) {
  }
  return 0;
}
