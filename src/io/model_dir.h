// A checkpoint directory: config.json, the safetensors shards (through
// model.safetensors.index.json, or every *.safetensors when there is no index) and the side files.
// Shards are mapped lazily, on the first request for one of their tensors, so a text-only run never
// opens the vision file.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/safetensors.h"

namespace gp {

class ModelDir {
 public:
  explicit ModelDir(const std::string& dir);  // reads config.json and the index; maps nothing

  const std::string& path() const { return dir_; }
  const nlohmann::json& config() const { return config_; }
  // The parsed JSON of an optional side file (generation_config.json, ...); null when absent.
  nlohmann::json optional_json(const std::string& file) const;

  bool has(const std::string& name) const { return weight_map_.count(name) != 0; }
  // The tensor, mapping its shard on first use. Throws Error naming the tensor when absent.
  const TensorInfo& tensor(const std::string& name) const;
  // Names of every tensor (from the index, or from the headers when there is no index).
  std::vector<std::string> tensor_names() const;
  // Shard file (relative name) holding a tensor.
  const std::string& file_of(const std::string& name) const;
  std::vector<std::string> shard_files() const;  // relative names, sorted

 private:
  const SafeTensorsFile& shard(const std::string& file) const;

  std::string dir_;
  nlohmann::json config_;
  std::map<std::string, std::string> weight_map_;  // tensor -> shard file
  mutable std::mutex mutex_;
  mutable std::map<std::string, std::unique_ptr<SafeTensorsFile>> shards_;
};

// A name with no directory part: not empty, no '/' or '\\', not "." or "..". Shard names in an
// index must be plain so that every file read or written stays inside the model folder.
bool is_plain_file_name(const std::string& name);

// Reads and parses a JSON file; throws Error naming the file when missing or malformed.
nlohmann::json read_json_file(const std::string& path);

}  // namespace gp
