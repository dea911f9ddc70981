// A checkpoint directory opened once: config.json, generation_config.json and
// preprocessor_config.json read and parsed, the tensor index read (shards are mapped on first use,
// io/model_dir.h), the layout its tensors show. The engine, the pruning steps, evaluation and the
// server all take the model's description from here.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "io/model_dir.h"
#include "model/config.h"
#include "model/tensor_table.h"

namespace gp {

class ModelFiles {
 public:
  // Parses config.json before anything else (a directory of another model fails on its
  // model_type, not on its files), then the side files, then reads the index. Throws Error naming
  // the file and the key.
  explicit ModelFiles(const std::string& dir);

  const std::string& path() const { return dir_->path(); }
  const ModelDir& dir() const { return *dir_; }
  const nlohmann::ordered_json& config_json() const { return dir_->config(); }  // as written
  // The side files as written; null when absent.
  const nlohmann::ordered_json& generation_json() const { return generation_; }
  const nlohmann::ordered_json& preprocessor_json() const { return preprocessor_; }

  // config.json and generation_config.json; compact_vocab is the embedding's rows when a pruned
  // checkpoint's config does not say.
  const ModelConfig& config() const { return config_; }
  const TableLayout& layout() const { return layout_; }
  const ImageNormalization& image_normalization() const { return image_norm_; }

 private:
  std::unique_ptr<ModelDir> dir_;
  nlohmann::ordered_json generation_, preprocessor_;
  ModelConfig config_;
  TableLayout layout_;
  ImageNormalization image_norm_;
};

}  // namespace gp
