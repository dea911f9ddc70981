// model.safetensors.index.json and the shard set it names: the input is the index of a copy of
// the tiny-mobile fixture; every tensor the index lists is then looked up (mapping its shard).
#include <cstdint>
#include <string>

#include "base/error.h"
#include "fuzz_util.h"
#include "io/model_dir.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = gp::fuzz::copy_fixture("tiny-mobile", "index");
  gp::fuzz::write_file(dir + "/model.safetensors.index.json",
                       std::string(reinterpret_cast<const char*>(data), size));
  try {
    gp::ModelDir d(dir);
    d.shard_files();
    for (const auto& name : d.tensor_names()) {
      d.file_of(name);
      d.tensor(name);
    }
  } catch (const gp::Error&) {
  }
  return 0;
}
