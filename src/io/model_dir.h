// A checkpoint directory's tensors: config.json and the safetensors shards (through
// model.safetensors.index.json, or every *.safetensors when there is no index). model/model_files.h
// opens a whole checkpoint (the side files, the parsed config) on top of this.
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
  // With config.json already read (read_model_config): reads the index only.
  ModelDir(const std::string& dir, nlohmann::ordered_json config);

  const std::string& path() const { return dir_; }
  const nlohmann::ordered_json& config() const { return config_; }  // key order as written

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
  nlohmann::ordered_json config_;
  std::map<std::string, std::string> weight_map_;  // tensor -> shard file
  mutable std::mutex mutex_;
  mutable std::map<std::string, std::unique_ptr<SafeTensorsFile>> shards_;
};

// A name with no directory part: not empty, no '/' or '\\', not "." or "..". Shard names in an
// index must be plain so that every file read or written stays inside the model folder.
bool is_plain_file_name(const std::string& name);

// Reads and parses a JSON file (key order kept); throws Error naming the file when missing or
// malformed.
nlohmann::ordered_json read_json_file(const std::string& path);
// The same for a file that may be absent: null then.
nlohmann::ordered_json read_optional_json_file(const std::string& path);
// config.json of a checkpoint directory. Throws Error when `dir` is not a directory, or its
// config.json is missing, not JSON or not an object.
nlohmann::ordered_json read_model_config(const std::string& dir);

}  // namespace gp
