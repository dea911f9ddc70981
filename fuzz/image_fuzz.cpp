// Image decoding and the vision preprocessing: the first two bytes pick the output size (1..64
// on each side), the rest is an image file in any format stb_image reads.
#include <cstdint>
#include <string>

#include "base/error.h"
#include "io/image.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const int out_w = data[0] % 64 + 1, out_h = data[1] % 64 + 1;
  try {
    const gp::Image img = gp::decode_image(data + 2, size - 2, "fuzz image");
    gp::resize_bilinear(img, out_w, out_h);
    const float mean[3] = {0.5f, 0.5f, 0.5f}, std_[3] = {0.5f, 0.5f, 0.5f};
    gp::preprocess_image(img, out_w, mean, std_);
  } catch (const gp::Error&) {
  }
  return 0;
}
