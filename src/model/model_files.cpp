#include "model/model_files.h"

namespace gp {

ModelFiles::ModelFiles(const std::string& path) {
  nlohmann::ordered_json config = read_model_config(path);
  generation_ = read_optional_json_file(path + "/generation_config.json");
  config_ = parse_config(config, generation_, path + "/config.json");
  preprocessor_ = read_optional_json_file(path + "/preprocessor_config.json");
  parse_image_normalization(preprocessor_, path + "/preprocessor_config.json", image_norm_.mean,
                            image_norm_.std);
  dir_ = std::make_unique<ModelDir>(path, std::move(config));
  layout_ = detect_layout(*dir_);
  if (layout_.token_map && config_.compact_vocab == 0)
    config_.compact_vocab = layout_.embed_rows;  // SPEC §2: fall back to the rows
}

}  // namespace gp
