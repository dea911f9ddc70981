#include "io/image.h"

#include <stb/stb_image.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>

#include "base/error.h"

namespace gp {
namespace {

std::string dims(int w, int h) { return std::to_string(w) + "x" + std::to_string(h); }

Error too_large(const std::string& where, int w, int h) {
  return Error(where + "is " + dims(w, h) + " pixels, beyond the limit of " +
               dims(kMaxImageSide, kMaxImageSide) + " (corrupt header, or scale the image down)");
}

// Width and height from a PNG's IHDR, for the error message when stb_image refuses the header:
// its info call then only says "unknown image type" (e.g. for 0x10, or 20000x20000 RGB).
bool png_header_size(const uint8_t* data, size_t size, int64_t* w, int64_t* h) {
  static const uint8_t kSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (size < 24 || std::memcmp(data, kSignature, 8) != 0 || std::memcmp(data + 12, "IHDR", 4) != 0)
    return false;
  auto be32 = [&](size_t at) {
    return (int64_t{data[at]} << 24) | (data[at + 1] << 16) | (data[at + 2] << 8) | data[at + 3];
  };
  *w = be32(16);
  *h = be32(20);
  return true;
}

struct FileCloser {
  void operator()(FILE* f) const { std::fclose(f); }
};

// Pillow's fixed point for 8-bit images (PRECISION_BITS): 8 bits of result and 2 of headroom in an
// int32 accumulator; a sum starts at one half so that the final shift rounds half up.
constexpr int kFracBits = 22;
constexpr int32_t kHalf = 1 << (kFracBits - 1);

uint8_t clip8(int32_t acc) { return static_cast<uint8_t>(std::clamp(acc >> kFracBits, 0, 255)); }

// The BILINEAR filter weights of one axis, as Pillow's precompute_coeffs and
// normalize_coeffs_8bpc compute them: output sample o has its center at (o + 0.5) * scale in
// input coordinates; the triangle 1 - |x| is stretched by max(scale, 1) (so shrinking averages
// over the whole footprint); the window is clipped at the borders and the weights renormalized.
struct AxisTaps {
  int ksize = 0;                // taps stored per output sample
  std::vector<int> first;       // [out] first input index
  std::vector<int> count;       // [out] number of taps
  std::vector<int32_t> weight;  // [out, ksize] fixed point, kFracBits
};

AxisTaps bilinear_taps(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filter_scale = std::max(scale, 1.0);
  const double support = 1.0 * filter_scale;  // the triangle's support is 1
  const double inv_filter_scale = 1.0 / filter_scale;
  AxisTaps t;
  t.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  t.first.resize(out_size);
  t.count.resize(out_size);
  t.weight.assign(static_cast<size_t>(out_size) * t.ksize, 0);
  std::vector<double> w(t.ksize);
  for (int o = 0; o < out_size; ++o) {
    const double center = (o + 0.5) * scale;
    // Pillow rounds the window ends with (int)(x + 0.5), which truncates toward zero.
    const int lo = std::max(static_cast<int>(center - support + 0.5), 0);
    const int hi = std::min(static_cast<int>(center + support + 0.5), in_size);
    double sum = 0.0;
    for (int i = lo; i < hi; ++i) {
      const double x = std::abs((i - center + 0.5) * inv_filter_scale);
      w[i - lo] = x < 1.0 ? 1.0 - x : 0.0;
      sum += w[i - lo];
    }
    assert(sum > 0.0);  // the input pixel nearest to the center is always in the window
    for (int i = lo; i < hi; ++i) {
      t.weight[static_cast<size_t>(o) * t.ksize + (i - lo)] =
          static_cast<int32_t>(0.5 + w[i - lo] / sum * (1 << kFracBits));
    }
    t.first[o] = lo;
    t.count[o] = hi - lo;
  }
  return t;
}

// src [rows, in_w, 3] -> dst [rows, out_w, 3], each sample rounded to uint8.
void resample_horizontal(const uint8_t* src, int in_w, int rows, int out_w, uint8_t* dst) {
  const AxisTaps t = bilinear_taps(in_w, out_w);
  for (int y = 0; y < rows; ++y) {
    const uint8_t* row = src + static_cast<size_t>(y) * in_w * 3;
    uint8_t* out = dst + static_cast<size_t>(y) * out_w * 3;
    for (int o = 0; o < out_w; ++o) {
      const int32_t* k = &t.weight[static_cast<size_t>(o) * t.ksize];
      const uint8_t* p = row + static_cast<size_t>(t.first[o]) * 3;
      int32_t r = kHalf, g = kHalf, b = kHalf;
      for (int j = 0; j < t.count[o]; ++j) {
        r += p[3 * j + 0] * k[j];
        g += p[3 * j + 1] * k[j];
        b += p[3 * j + 2] * k[j];
      }
      out[3 * o + 0] = clip8(r);
      out[3 * o + 1] = clip8(g);
      out[3 * o + 2] = clip8(b);
    }
  }
}

// src [in_h, w, 3] -> dst [out_h, w, 3]; whole rows at a time so the inner loop is contiguous.
void resample_vertical(const uint8_t* src, int w, int in_h, int out_h, uint8_t* dst) {
  const AxisTaps t = bilinear_taps(in_h, out_h);
  const size_t row_len = static_cast<size_t>(w) * 3;
  std::vector<int32_t> acc(row_len);  // [w, 3]
  for (int o = 0; o < out_h; ++o) {
    std::fill(acc.begin(), acc.end(), kHalf);
    for (int j = 0; j < t.count[o]; ++j) {
      const int32_t k = t.weight[static_cast<size_t>(o) * t.ksize + j];
      const uint8_t* row = src + static_cast<size_t>(t.first[o] + j) * row_len;
      for (size_t i = 0; i < row_len; ++i) acc[i] += row[i] * k;
    }
    uint8_t* out = dst + static_cast<size_t>(o) * row_len;
    for (size_t i = 0; i < row_len; ++i) out[i] = clip8(acc[i]);
  }
}

// Pillow's ImagingResample for an RGB image: horizontal pass then vertical pass, each skipped when
// that side keeps its size (so a same-size resize is the identity).
std::vector<uint8_t> resize_u8(const Image& img, int out_w, int out_h) {
  check(img.width > 0 && img.height > 0 && out_w > 0 && out_h > 0,
        "cannot resize a " + std::to_string(img.width) + "x" + std::to_string(img.height) +
            " image to " + std::to_string(out_w) + "x" + std::to_string(out_h));
  check(img.rgb.size() == static_cast<size_t>(img.width) * img.height * 3,
        "image of " + std::to_string(img.width) + "x" + std::to_string(img.height) + " holds " +
            std::to_string(img.rgb.size()) + " bytes, not 3 per pixel");
  std::vector<uint8_t> wide;  // [img.height, out_w, 3]
  const uint8_t* src = img.rgb.data();
  if (out_w != img.width) {
    wide.resize(static_cast<size_t>(img.height) * out_w * 3);
    resample_horizontal(src, img.width, img.height, out_w, wide.data());
    src = wide.data();
  }
  if (out_h == img.height) {
    if (wide.empty()) return img.rgb;
    return wide;
  }
  std::vector<uint8_t> out(static_cast<size_t>(out_h) * out_w * 3);  // [out_h, out_w, 3]
  resample_vertical(src, out_w, img.height, out_h, out.data());
  return out;
}

// Bytes an uncompressed BMP (BI_RGB or BI_BITFIELDS) needs for its pixel rows, counted from the
// start of the file; 0 when it is not such a BMP. stb_image fills the rows missing from a truncated
// one with zeros instead of failing, so the size is checked here.
uint64_t bmp_bytes_needed(const uint8_t* data, size_t size, int w, int h) {
  if (size < 34 || data[0] != 'B' || data[1] != 'M') return 0;
  auto u32 = [&](size_t at) {
    return uint32_t{data[at]} | uint32_t{data[at + 1]} << 8 | uint32_t{data[at + 2]} << 16 |
           uint32_t{data[at + 3]} << 24;
  };
  const uint32_t offset = u32(10), compression = u32(30);
  const unsigned bits = data[28] | data[29] << 8;
  if (compression != 0 && compression != 3) return 0;  // RLE and embedded JPEG/PNG: stb checks
  const uint64_t row = (uint64_t{bits} * static_cast<uint64_t>(w) + 31) / 32 * 4;
  return offset + row * static_cast<uint64_t>(h);
}

// Bytes a binary PNM (P5 grey, P6 RGB; 8 or 16 bits) needs for its header and samples, 0 when it
// is not one; `wide`: whether its samples have 16 bits. stb_image leaves the samples missing from
// a truncated one uninitialized (heap memory of earlier work) instead of failing, so the size is
// checked here. The header is read as stb_image reads it: three integers after whitespace or '#'
// comments, then one byte.
uint64_t pnm_bytes_needed(const uint8_t* data, size_t size, int w, int h, bool* wide) {
  *wide = false;
  if (size < 3 || data[0] != 'P' || (data[1] != '5' && data[1] != '6')) return 0;
  size_t i = 2;
  auto space = [](uint8_t c) { return c == ' ' || (c >= '\t' && c <= '\r'); };
  uint64_t maxv = 0;
  for (int field = 0; field < 3; ++field) {
    for (;;) {
      while (i < size && space(data[i])) ++i;
      if (i >= size || data[i] != '#') break;
      while (i < size && data[i] != '\n' && data[i] != '\r') ++i;
    }
    maxv = 0;
    while (i < size && data[i] >= '0' && data[i] <= '9' && maxv <= 65535)
      maxv = maxv * 10 + (data[i++] - '0');
  }
  *wide = maxv > 255;
  const uint64_t channels = data[1] == '6' ? 3 : 1, sample = *wide ? 2 : 1;
  return i + 1 + static_cast<uint64_t>(w) * static_cast<uint64_t>(h) * channels * sample;
}

}  // namespace

Image decode_image(const uint8_t* data, size_t size, const std::string& name) {
  const std::string where = "image " + name + ": ";
  check(size > 0, where + "is empty (0 bytes), expected an image (incomplete download or upload?)");
  check(size <= INT_MAX,
        where + "is " + std::to_string(size) + " bytes, beyond the 2 GiB that stb_image can read");
  const int len = static_cast<int>(size);
  int w = 0, h = 0, channels = 0;
  // The header alone first, so that an oversize image is refused before its pixels are allocated.
  if (!stbi_info_from_memory(data, len, &w, &h, &channels)) {
    const std::string reason = stbi_failure_reason();
    int64_t png_w = 0, png_h = 0;
    if (png_header_size(data, size, &png_w, &png_h) && png_w <= INT_MAX && png_h <= INT_MAX) {
      const int pw = static_cast<int>(png_w), ph = static_cast<int>(png_h);
      check(pw > 0 && ph > 0, where + "has zero size " + dims(pw, ph) + " (corrupt header?)");
      if (pw > kMaxImageSide || ph > kMaxImageSide) throw too_large(where, pw, ph);
    }
    throw Error(where + "not a readable image (stb_image: " + reason +
                "); expected JPEG, PNG, BMP, GIF, TGA, PSD, HDR, PIC or PNM (not an image, or a "
                "corrupt header?)");
  }
  check(w > 0 && h > 0, where + "has zero size " + dims(w, h) + " (corrupt header?)");
  if (w > kMaxImageSide || h > kMaxImageSide) throw too_large(where, w, h);
  check(int64_t{w} * h <= kMaxImagePixels,
        where + "is " + dims(w, h) + " = " + std::to_string(int64_t{w} * h) +
            " pixels, beyond the budget of " + std::to_string(kMaxImagePixels) +
            " (corrupt header, or scale the image down)");

  // The formats whose truncated files stb_image decodes anyway.
  auto check_length = [&](uint64_t needed, const char* what) {
    check(needed <= size, where + "is a " + dims(w, h) + " " + what + " end at byte " +
                              std::to_string(needed) + ", but the file has " +
                              std::to_string(size) + " bytes; the file is truncated");
  };
  check_length(bmp_bytes_needed(data, size, w, h), "BMP whose pixel rows");
  bool wide_pnm = false;
  check_length(pnm_bytes_needed(data, size, w, h, &wide_pnm), "PNM whose samples");
  // stb_image converts the channels of a 16-bit PNM as 8-bit ones, then reads twice the bytes of
  // that buffer (a heap over-read, found by the image fuzz target).
  check(!wide_pnm, where +
                       "is a 16-bit PNM (maximum sample value over 255), which stb_image "
                       "cannot convert safely; expected an 8-bit PNM, or convert it to PNG");

  int dw = 0, dh = 0;
  std::unique_ptr<uint8_t, void (*)(void*)> pixels(
      stbi_load_from_memory(data, len, &dw, &dh, &channels, 3), stbi_image_free);
  if (!pixels) {
    throw Error(where + "cannot decode the " + dims(w, h) + " pixels (stb_image: " +
                stbi_failure_reason() + "); the file is truncated or corrupt");
  }
  check(dw == w && dh == h, where + "decoded as " + dims(dw, dh) + " but its header says " +
                                dims(w, h) + " (corrupt file?)");
  Image img;
  img.width = w;
  img.height = h;
  img.rgb.assign(pixels.get(), pixels.get() + static_cast<size_t>(w) * h * 3);
  return img;
}

Image load_image(const std::string& path) {
  const std::string where = "image " + path + ": ";
  std::error_code ec;
  check(!std::filesystem::is_directory(path, ec), where + "is a directory, expected an image file");
  // A FIFO or a device would block the read or never end.
  check(std::filesystem::is_regular_file(path, ec) || !std::filesystem::exists(path, ec),
        where + "is not a regular file, expected an image file");
  std::unique_ptr<FILE, FileCloser> f(std::fopen(path.c_str(), "rb"));
  if (!f) throw Error(where + "cannot open (" + std::strerror(errno) + ")");
  std::vector<uint8_t> bytes;
  constexpr size_t kChunk = size_t{1} << 20;
  while (true) {
    const size_t at = bytes.size();
    check(at <= INT_MAX, where + "is larger than the 2 GiB that stb_image can read");
    bytes.resize(at + kChunk);
    const size_t got = std::fread(bytes.data() + at, 1, kChunk, f.get());
    bytes.resize(at + got);
    if (got < kChunk) break;
  }
  if (std::ferror(f.get())) throw Error(where + "read error (" + std::strerror(errno) + ")");
  return decode_image(bytes.data(), bytes.size(), path);
}

std::vector<float> resize_bilinear(const Image& img, int out_w, int out_h) {
  const std::vector<uint8_t> px = resize_u8(img, out_w, out_h);
  return std::vector<float>(px.begin(), px.end());
}

std::vector<float> preprocess_image(const Image& img, int size, const float mean[3],
                                    const float std_[3]) {
  // As HF: rescale in float64, cast to float32, normalize in float32. One entry per uint8 value.
  float table[3][256];
  for (int c = 0; c < 3; ++c) {
    for (int v = 0; v < 256; ++v) {
      const float x = static_cast<float>(v * (1.0 / 255.0));
      table[c][v] = (x - mean[c]) / std_[c];
    }
  }
  const std::vector<uint8_t> px = resize_u8(img, size, size);  // [size, size, 3]
  std::vector<float> out(px.size());                           // [size, size, 3]
  for (size_t i = 0; i < px.size(); ++i) out[i] = table[i % 3][px[i]];
  return out;
}

}  // namespace gp
