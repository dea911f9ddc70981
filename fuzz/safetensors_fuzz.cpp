// The safetensors reader: header JSON, dtypes, shapes against byte sizes, offsets in the file.
// Every tensor it accepts must lie inside the file with a size matching its shape and dtype.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "base/error.h"
#include "fuzz_util.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = gp::fuzz::scratch_dir() + "/fuzz.safetensors";
  gp::fuzz::write_file(path, std::string(reinterpret_cast<const char*>(data), size));
  try {
    gp::SafeTensorsFile f(path);
    for (const auto& [name, t] : f.tensors()) {
      uint64_t numel = 1, bytes = 0;
      for (int64_t d : t.shape)
        if (d < 0 || __builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel)) abort();
      if (__builtin_mul_overflow(numel, gp::dtype_size(t.dtype), &bytes) || bytes != t.nbytes ||
          t.nbytes > size || f.find(name) != &t)
        abort();
      // Reading the first and the last byte faults if the span leaves the mapping.
      if (t.nbytes) {
        volatile uint8_t sink = t.data[0];
        sink = t.data[t.nbytes - 1];
        (void)sink;
      }
    }
  } catch (const gp::Error&) {
  }
  return 0;
}
