// Image decoding (stb_image) and the vision preprocessing of SPEC §3 "Vision" step 1: resize as
// PIL's Image.resize(..., BILINEAR) does it, then x/255, then (x - mean) / std per channel.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace gp {

// Largest accepted width and height; a bigger header is refused before any pixel is allocated.
inline constexpr int kMaxImageSide = 16384;
// Largest accepted width x height (8192x4096, 100 MB as RGB), also checked from the header alone:
// a 40 KB PNG may declare 16384x16384 and cost gigabytes to decode.
inline constexpr int64_t kMaxImagePixels = int64_t{1} << 25;

struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // [height, width, 3], row-major
};

// Decodes any format stb_image reads (JPEG, PNG, BMP, GIF first frame, TGA, PSD, HDR, PIC, PNM) to
// RGB: grey is replicated, alpha is dropped (not composited), as PIL's convert("RGB") does.
// EXIF orientation is not applied. stb's JPEG decoder differs from libjpeg's (PIL's) by a few
// levels on some pixels; PNG, BMP and the other lossless formats decode identically.
// Throws Error naming the path and the cause: unreadable path, directory, empty file, not an
// image, truncated or corrupt data, zero size, a side beyond kMaxImageSide.
Image load_image(const std::string& path);
// The same from memory (e.g. a base64 data: URL); `name` stands for the source in errors.
Image decode_image(const uint8_t* data, size_t size, const std::string& name);

// Resizes to out_w x out_h (aspect ratio not kept) exactly as Pillow resizes an 8-bit RGB image
// with BILINEAR: a separable triangle filter whose support grows with the downscale factor
// (antialiased when shrinking), horizontal pass then vertical pass, each in fixed point and
// rounded to uint8. HF's Gemma3ImageProcessor resizes a uint8 PIL image this way, so the rounding
// is kept: the result is bit-identical to Pillow's. Returns those uint8 values as floats:
// [out_h, out_w, 3].
std::vector<float> resize_bilinear(const Image& img, int out_w, int out_h);

// The vision tower input: resize_bilinear to size x size, then x/255, then (x - mean[c]) / std_[c].
// Returns [size, size, 3] float, row-major (H, W, C).
std::vector<float> preprocess_image(const Image& img, int size, const float mean[3],
                                    const float std_[3]);

}  // namespace gp
