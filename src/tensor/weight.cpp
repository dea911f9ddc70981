#include "tensor/weight.h"

#include <algorithm>
#include <cmath>

#include "tensor/dtype.h"

namespace gp {

size_t Weight::bytes() const {
  if (!quantized) return static_cast<size_t>(out * in) * dtype_size(dtype);
  return static_cast<size_t>(out) *
         (in * fmt.bits / 8 + 2 * groups_per_row() * dtype_size(scale_dtype));
}

void weight_row(const Weight& w, int64_t r, float* out) {
  if (!w.quantized) {
    to_f32(w.dtype, static_cast<const uint8_t*>(w.data) + r * w.in * dtype_size(w.dtype), w.in,
           out);
    return;
  }
  const int bits = w.fmt.bits, per_word = 32 / bits;
  const uint32_t mask = (1u << bits) - 1;
  const uint32_t* row = w.q + r * (w.in / per_word);
  const int64_t gpr = w.groups_per_row();
  for (int64_t g = 0; g < gpr; ++g) {
    const float s = load_float(w.scale_dtype, w.scales, r * gpr + g);
    const float b = load_float(w.scale_dtype, w.biases, r * gpr + g);
    for (int64_t k = g * w.fmt.group_size; k < (g + 1) * w.fmt.group_size; ++k) {
      const uint32_t qv = (row[k / per_word] >> (bits * (k % per_word))) & mask;
      out[k] = static_cast<float>(qv) * s + b;
    }
  }
}

namespace {
// One group, given the scale and bias it will be stored with.
void pack_group(const float* w, int gs, int bits, float scale, float bias, uint32_t* q,
                int64_t k0) {
  const int per_word = 32 / bits;
  const float qmax = static_cast<float>((1 << bits) - 1);
  for (int k = 0; k < gs; ++k) {
    float v = scale != 0 ? std::nearbyint((w[k] - bias) / scale) : 0.0f;
    v = std::clamp(v, 0.0f, qmax);
    const int64_t idx = k0 + k;
    q[idx / per_word] |= static_cast<uint32_t>(v) << (bits * (idx % per_word));
  }
}
}  // namespace

void quantize_row(const float* w, int64_t in, QuantFormat fmt, uint32_t* q, float* scales,
                  float* biases) {
  const int gs = fmt.group_size;
  const float n_bins = static_cast<float>((1 << fmt.bits) - 1);
  std::fill(q, q + in * fmt.bits / 32, 0u);
  for (int64_t g = 0; g < in / gs; ++g) {
    const float* x = w + g * gs;
    const float wmax = *std::max_element(x, x + gs), wmin = *std::min_element(x, x + gs);
    float scale = std::max((wmax - wmin) / n_bins, 1e-7f);
    float edge;
    if (std::fabs(wmin) > std::fabs(wmax)) {
      edge = wmin;
    } else {
      scale = -scale;
      edge = wmax;
    }
    const float q0 = std::nearbyint(edge / scale);
    if (q0 != 0) scale = edge / q0;
    const float bias = q0 == 0 ? 0.0f : edge;
    scales[g] = scale;
    biases[g] = bias;
    pack_group(x, gs, fmt.bits, scale, bias, q, g * gs);
  }
}

QuantizedRows quantize_rows(const float* w, int64_t rows, int64_t in, QuantFormat fmt,
                            DType scale_dtype) {
  const int64_t gpr = in / fmt.group_size, wpr = in * fmt.bits / 32;
  const size_t ss = dtype_size(scale_dtype);
  QuantizedRows out;
  out.q.assign(rows * wpr, 0u);
  out.scales.resize(rows * gpr * ss);
  out.biases.resize(rows * gpr * ss);
  std::vector<float> s(gpr), b(gpr);
  for (int64_t r = 0; r < rows; ++r) {
    // Like MLX: q is computed against the f32 scale and bias, which are then stored rounded.
    quantize_row(w + r * in, in, fmt, out.q.data() + r * wpr, s.data(), b.data());
    from_f32(scale_dtype, s.data(), gpr, out.scales.data() + r * gpr * ss);
    from_f32(scale_dtype, b.data(), gpr, out.biases.data() + r * gpr * ss);
  }
  return out;
}

}  // namespace gp
