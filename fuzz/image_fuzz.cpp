// Image decoding and the vision preprocessing: the first two bytes pick the output size (1..64
// on each side), the rest is an image file in any format stb_image reads. Headers declaring more
// than 4 M pixels are skipped: a valid 44-byte GIF of 16130 x 1026 takes a second to decode
// (20 s under ASan on a loaded machine: a libFuzzer timeout), and io/image.cpp refuses only
// beyond kMaxImagePixels (32 M). That GIF is in fuzz/regressions/image/; this check skips it.
// Images beyond 256 K pixels are decoded but not resized: the instrumented resampling grows with
// the source pixels and took 90% of the run; a 1 x 262144 strip still reaches the widest filter.
#include <stb/stb_image.h>

#include <cstdint>
#include <string>

#include "base/error.h"
#include "io/image.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const int out_w = data[0] % 64 + 1, out_h = data[1] % 64 + 1;
  int w = 0, h = 0, channels = 0;
  if (stbi_info_from_memory(data + 2, static_cast<int>(size - 2), &w, &h, &channels) &&
      static_cast<int64_t>(w) * h > (int64_t{1} << 22))
    return 0;
  try {
    const gp::Image img = gp::decode_image(data + 2, size - 2, "fuzz image");
    if (static_cast<int64_t>(img.width) * img.height > (int64_t{1} << 18)) return 0;
    gp::resize_bilinear(img, out_w, out_h);
    const float mean[3] = {0.5f, 0.5f, 0.5f}, std_[3] = {0.5f, 0.5f, 0.5f};
    gp::preprocess_image(img, out_w, mean, std_);
  } catch (const gp::Error&) {
  }
  return 0;
}
