// The token_map of a compact vocabulary: the input replaces the token_map bytes of the tiny-mobile
// fixture (cut or zero-padded to its I32 [vocab_size]); the text weights are loaded and every id
// embedded, and logits computed, through the map. The checkpoint is opened once (its headers are
// the safetensors and index targets' work); each input is written into this process's private
// copy of the mapped token_map, then load_text_weights checks it as for a freshly opened file.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "base/error.h"
#include "fuzz_util.h"
#include "io/model_dir.h"
#include "model/model_files.h"
#include "model/text_model.h"

namespace {
const char* kTokenMap = "language_model.model.embed_tokens.token_map";

struct Fixture {
  gp::ModelFiles files{gp::fuzz::data_path("tiny-mobile")};
  const gp::ModelDir& dir = files.dir();
  uint8_t* map = nullptr;  // the token_map bytes, made writable (copy-on-write, never the file)
  size_t map_bytes = 0;

  Fixture() {
    const gp::TensorInfo& t = dir.tensor(kTokenMap);
    map = const_cast<uint8_t*>(t.data);
    map_bytes = t.nbytes;
    const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    const uintptr_t begin = reinterpret_cast<uintptr_t>(map) & ~(page - 1);
    const uintptr_t end = reinterpret_cast<uintptr_t>(map) + map_bytes;
    // The shard is mapped MAP_PRIVATE from a read-only descriptor: writing gives this process its
    // own pages; were the mapping ever shared, mprotect would refuse (EACCES) and the target stop.
    if (mprotect(reinterpret_cast<void*>(begin), end - begin, PROT_READ | PROT_WRITE) != 0) abort();
  }
};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Fixture f;
  std::memset(f.map, 0, f.map_bytes);
  std::memcpy(f.map, data, std::min(size, f.map_bytes));
  try {
    const gp::ModelConfig& c = f.files.config();
    gp::TextModel model(c, gp::load_text_weights(f.dir, c, f.files.layout()));
    std::vector<float> x(c.text.d_model), logits(c.text.n_vocab);
    for (int32_t id = 0; id < c.text.n_vocab; ++id) model.embed(id, x.data());
    model.logits(x.data(), 1, logits.data());
  } catch (const gp::Error&) {
  }
  return 0;
}
