#include "tensor/dtype.h"

#include <cmath>

#include "base/error.h"

namespace gp {

float f16_to_f32(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (mant == 0) {
      u = sign;
    } else {  // subnormal: value = mant * 2^-24
      float f = std::ldexp(static_cast<float>(mant), -24);
      std::memcpy(&u, &f, 4);
      u |= sign;
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (mant << 13);
  } else {
    u = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const float a = std::fabs(f);
  if (std::isnan(f)) return sign | 0x7e00;
  if (a >= 65520.0f) return sign | 0x7c00;  // rounds to infinity
  if (a < 6.103515625e-05f) {               // subnormal half: multiple of 2^-24, round to even
    const float scaled = a * 16777216.0f;
    return sign | static_cast<uint16_t>(std::nearbyint(scaled));
  }
  uint32_t mant = u & 0x7fffffu;
  int32_t exp = static_cast<int32_t>((u >> 23) & 0xff) - 127 + 15;
  uint32_t h = (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
  const uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // carries into the exponent correctly
  return sign | static_cast<uint16_t>(h);
}

namespace {
uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// f16_to_f32 and f32_to_f16 without branches (every case computed, one selected), the same bits,
// so that the loops of to_f32 and from_f32 vectorize: the f16 KV cache converts every new key and
// value of a decode step (F. Giesen's method).
inline float half_to_float(uint16_t h) {
  const uint32_t e = h & 0x7c00u;
  const uint32_t o = ((h & 0x7fffu) << 13) + ((127u - 15u) << 23);
  const uint32_t special = o + ((128u - 16u) << 23);                              // infinity, NaN
  const uint32_t sub = bits_of(float_of(o + (1u << 23)) - float_of(113u << 23));  // 0, subnormal
  const uint32_t u = e == 0x7c00u ? special : e == 0 ? sub : o;
  return float_of(u | static_cast<uint32_t>(h & 0x8000u) << 16);
}

inline uint16_t float_to_half(float f) {
  const uint32_t a = bits_of(f) & 0x7fffffffu;
  const uint32_t sign = (bits_of(f) >> 16) & 0x8000u;
  // Below 2^-14: adding 0.5 rounds to a multiple of 2^-24, to even.
  const uint32_t sub = bits_of(float_of(a) + 0.5f) - 0x3f000000u;
  // Rebias, then round the 13 dropped bits to even (a carry may reach the exponent, even infinity).
  const uint32_t norm = (a + ((15u - 127u) << 23) + 0xfffu + ((a >> 13) & 1u)) >> 13;
  uint32_t h = a < (113u << 23) ? sub : norm;
  h = a >= (143u << 23) ? 0x7c00u : h;  // 2^16 and beyond
  h = a > 0x7f800000u ? 0x7e00u : h;    // NaN
  return static_cast<uint16_t>(h | sign);
}
}  // namespace

void to_f32(DType t, const void* src, size_t n, float* dst) {
  if (t == DType::F16) {
    const auto* s = static_cast<const uint8_t*>(src);
    for (size_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, s + 2 * i, 2);
      dst[i] = half_to_float(h);
    }
    return;
  }
  for (size_t i = 0; i < n; ++i) dst[i] = load_float(t, src, i);
}

std::vector<float> to_f32(const TensorInfo& t) {
  check(t.dtype == DType::BF16 || t.dtype == DType::F16 || t.dtype == DType::F32,
        t.file + ": tensor '" + t.name + "' has dtype " + dtype_name(t.dtype) +
            ", expected a float dtype (BF16, F16 or F32)");
  std::vector<float> out(static_cast<size_t>(t.numel()));
  to_f32(t.dtype, t.data, out.size(), out.data());
  return out;
}

void from_f32(DType t, const float* src, size_t n, void* dst) {
  auto* d = static_cast<uint8_t*>(dst);
  if (t == DType::F16) {
    for (size_t i = 0; i < n; ++i) {
      const uint16_t h = float_to_half(src[i]);
      std::memcpy(d + 2 * i, &h, 2);
    }
    return;
  }
  for (size_t i = 0; i < n; ++i) {
    if (t == DType::F32) {
      std::memcpy(d + 4 * i, &src[i], 4);
    } else {
      const uint16_t h = t == DType::BF16 ? f32_to_bf16(src[i]) : f32_to_f16(src[i]);
      std::memcpy(d + 2 * i, &h, 2);
    }
  }
}

}  // namespace gp
