// Scalar conversions between f32 and the 16-bit float formats met in checkpoints.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "io/safetensors.h"

namespace gp {

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even, as torch and MLX do; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// Reads element i of a float array stored as `t` (BF16, F16 or F32).
inline float load_float(DType t, const void* p, size_t i) {
  switch (t) {
    case DType::BF16: {
      uint16_t h;
      std::memcpy(&h, static_cast<const uint8_t*>(p) + 2 * i, 2);
      return bf16_to_f32(h);
    }
    case DType::F16: {
      uint16_t h;
      std::memcpy(&h, static_cast<const uint8_t*>(p) + 2 * i, 2);
      return f16_to_f32(h);
    }
    default: {
      float f;
      std::memcpy(&f, static_cast<const uint8_t*>(p) + 4 * i, 4);
      return f;
    }
  }
}

// Converts n floats stored as `t` to f32.
void to_f32(DType t, const void* src, size_t n, float* dst);
std::vector<float> to_f32(const TensorInfo& t);
// Encodes n f32 values as `t` (BF16, F16 or F32) into dst (n * dtype_size(t) bytes).
void from_f32(DType t, const float* src, size_t n, void* dst);

}  // namespace gp
