#include "io/model_dir.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>

#include "base/error.h"

namespace gp {
namespace fs = std::filesystem;

bool is_plain_file_name(const std::string& name) {
  // 255 bytes: NAME_MAX of Linux and macOS file systems; a longer name cannot be opened.
  return !name.empty() && name.size() <= 255 && name != "." && name != ".." &&
         name.find('/') == std::string::npos && name.find('\\') == std::string::npos &&
         name.find('\0') == std::string::npos;
}

namespace {

// fs::exists, with a path the system refuses (too long, not searchable) one named error instead
// of a std::filesystem exception.
bool path_exists(const std::string& path) {
  std::error_code ec;
  const bool found = fs::exists(path, ec);
  check(!ec, path + ": cannot be checked (" + ec.message() + ")");
  return found;
}

}  // namespace

nlohmann::ordered_json read_json_file(const std::string& path) {
  check_regular_file(path);
  std::ifstream f(path);
  check(f.good(), path + ": cannot open");
  try {
    return nlohmann::ordered_json::parse(f);
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": not valid JSON (" + e.what() + ")");
  }
}

nlohmann::ordered_json read_optional_json_file(const std::string& path) {
  if (!path_exists(path)) return nullptr;
  return read_json_file(path);
}

nlohmann::ordered_json read_model_config(const std::string& dir) {
  std::error_code ec;
  check(fs::is_directory(dir, ec), dir + ": not a directory (expected a checkpoint directory)");
  const std::string cfg = dir + "/config.json";
  check(path_exists(cfg),
        cfg + ": missing (expected a Gemma 3 checkpoint directory with config.json)");
  nlohmann::ordered_json config = read_json_file(cfg);
  check(config.is_object(), cfg + ": expected a JSON object");
  return config;
}

ModelDir::ModelDir(const std::string& dir) : ModelDir(dir, read_model_config(dir)) {}

ModelDir::ModelDir(const std::string& dir, nlohmann::ordered_json config)
    : dir_(dir), config_(std::move(config)) {
  const std::string index = dir + "/model.safetensors.index.json";
  if (path_exists(index)) {
    auto j = read_json_file(index);
    check(j.contains("weight_map") && j["weight_map"].is_object(),
          index + ": expected a \"weight_map\" object");
    for (auto& [name, file] : j["weight_map"].items()) {
      check(file.is_string(), index + ": weight_map entry '" + name + "' is not a file name");
      const std::string f = file.get<std::string>();
      // A shard outside the folder would be read from (and a rewrite written to) anywhere.
      check(is_plain_file_name(f), index + ": weight_map entry '" + name + "' names '" + f +
                                       "', expected a plain file name inside the model folder "
                                       "(no '/', no '..', not absolute, at most 255 bytes)");
      weight_map_[name] = f;
    }
    for (const auto& f : shard_files())
      check(path_exists(dir + "/" + f), index + ": lists '" + f + "', which is missing from " +
                                            dir + " (incomplete download?)");
  } else {
    std::vector<std::string> files;
    for (auto& e : fs::directory_iterator(dir))
      if (e.path().extension() == ".safetensors") files.push_back(e.path().filename().string());
    std::sort(files.begin(), files.end());
    check(!files.empty(), dir + ": no *.safetensors files and no model.safetensors.index.json");
    // shard() refuses a tensor already placed in an earlier file.
    for (const auto& f : files)
      for (const auto& [name, t] : shard(f).tensors()) weight_map_[name] = f;
  }
}

const SafeTensorsFile& ModelDir::shard(const std::string& file) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto& slot = shards_[file];
  if (!slot) {
    auto shard = std::make_unique<SafeTensorsFile>(dir_ + "/" + file);
    // A tensor the index places in another shard is a second copy: which one wins is undefined.
    for (const auto& [name, t] : shard->tensors()) {
      auto it = weight_map_.find(name);
      check(it == weight_map_.end() || it->second == file,
            dir_ + "/" + file + ": tensor '" + name + "' is also in " + it->second +
                " (expected each tensor in exactly one shard)");
    }
    slot = std::move(shard);
  }
  return *slot;
}

const std::string& ModelDir::file_of(const std::string& name) const {
  auto it = weight_map_.find(name);
  check(it != weight_map_.end(), dir_ + ": tensor '" + name + "' is missing from the checkpoint");
  return it->second;
}

const TensorInfo& ModelDir::tensor(const std::string& name) const {
  const std::string& file = file_of(name);
  const TensorInfo* t = shard(file).find(name);
  check(t != nullptr, dir_ + "/" + file + ": tensor '" + name +
                          "' is listed in the index but missing from the file");
  return *t;
}

std::vector<std::string> ModelDir::tensor_names() const {
  std::vector<std::string> names;
  for (const auto& [n, f] : weight_map_) names.push_back(n);
  return names;
}

std::vector<std::string> ModelDir::shard_files() const {
  std::set<std::string> files;
  for (const auto& [n, f] : weight_map_) files.insert(f);
  return {files.begin(), files.end()};
}

}  // namespace gp
