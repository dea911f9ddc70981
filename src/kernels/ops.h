// The compute operations of the engine: the only kernel header model code includes.
// Each op has a scalar reference (kernels/ref) and a SIMD twin (kernels/cpu, Highway with
// runtime dispatch); the ops here run the SIMD version, spread over the global thread pool.
// Activations are f32 and row-major. Kernels never throw.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <span>

#include "tensor/weight.h"

namespace gp::ops {

// How a linear treats its activations. kF32: exact f32 products. kInt8: for a 4-bit group-64
// weight each row of x is first quantized to int8 per group of 64 (x ≈ dx_g * xq_g, |error| <=
// dx_g / 2 = max|x_g| / 254) and the products are exact integer sums (the bias term uses the exact
// sum of x_g): faster, slightly less precise; other weights run as kF32.
enum class Activations { kF32, kInt8 };

// One output of linear_many: y = x · wᵀ (+ bias).
struct LinearOut {
  const Weight* w;
  float* y;
  const float* bias = nullptr;
};

// The linear op: y[t, o] = sum_i x[t, i] * W[o, i] (+ bias[o]) for one or several weights of the
// same input x [n, in] (every w has that `in`; each y [n, w.out], bias [w.out] or null), e.g. q, k
// and v. With int8 activations and one row, a few (batched decode) or up to 128 (a short prompt, on
// AVX3_DL), x is quantized once and the rows of all the weights share one pass over the thread
// pool: decode reads the weights as one stream instead of several short ones. Batch invariance: row
// t of any call with n >= 2 is bitwise the same whatever the other rows and the thread count; n = 1
// (the decode kernels) sums in another order, except for weights repacked at load (Weight::vq),
// whose one row gets the bits of the others.
void linear_many(std::span<const LinearOut> outs, const float* x, int64_t n, Activations act);
inline void linear_many(std::initializer_list<LinearOut> outs, const float* x, int64_t n,
                        Activations act) {
  linear_many(std::span(outs.begin(), outs.size()), x, n, act);
}

// The load-time repack of int8 weights: the bytes of a copy of w's nibbles in the layout that
// this CPU's int8 kernels read faster than the checkpoint's rows (AVX3_DL: 16 rows side by side
// per group of 64 inputs), where a load should make one; 0 where it should not (other CPUs,
// weights without an int8 path, or whose kernels gain nothing from it).
size_t repack_bytes(const Weight& w);
// Writes that copy of w's nibbles into dst (repack_bytes(w) bytes), on the thread pool. With
// w.vq = dst the int8 linears read it instead of w.q, bitwise the same outputs as the panel kernel
// over w.q for every row count (one row included: the decode kernel over w.q sums in another
// order).
void repack(const Weight& w, uint8_t* dst);

// Gemma RMSNorm over rows of d: y = x / sqrt(mean(x^2) + eps) * (1 + w).  x, y [n, d]; may alias.
void rms_norm(const float* x, const float* w, int64_t n, int64_t d, float eps, float* y);

// LayerNorm over rows of d: y = (x - mean) / sqrt(var + eps) * w + b.  x, y [n, d]; may alias.
void layer_norm(const float* x, const float* w, const float* b, int64_t n, int64_t d, float eps,
                float* y);

// RoPE's angles (pos[t] * pos_scale) * base^(-2i/head_dim), i < head_dim/2, as their cosines then
// their sines: cs [n, head_dim]. One table serves every layer (and q and k) of a batch.
void rope_angles(const int32_t* pos, int64_t n, int head_dim, float base, float pos_scale,
                 float* cs);

// Rotate-half RoPE in place on x [n, n_heads, head_dim]: pairs (i, i + head_dim/2) rotate by the
// angles of row t of cs (rope_angles).
void rope(float* x, int64_t n, int n_heads, int head_dim, const float* cs);

// out = gelu_tanh(g) * u, elementwise over n values.  May alias g or u.
void gelu_tanh_mul(const float* g, const float* u, int64_t n, float* out);

// x = gelu_tanh(x), elementwise.
void gelu_tanh(float* x, int64_t n);

// x += y, elementwise.
void add(float* x, const float* y, int64_t n);

// n f32 values to IEEE halves (h: 2n bytes) and back, bitwise tensor/dtype's from_f32 / to_f32 for
// F16 (round to nearest even): the f16 KV cache's conversions, vectorized where the CPU converts.
void f32_to_f16(const float* x, int64_t n, void* h);
void f16_to_f32(const void* h, int64_t n, float* x);

// A run of cached or fresh keys and values. Element (j, h, i) of K is k[j*pos_stride +
// h*head_stride + i], stored as `dtype`: F32, or F16 (IEEE half, the default KV cache).
struct KvSegment {
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t n = 0;
  int64_t pos_stride = 0, head_stride = 0;
  const int32_t* pos = nullptr;  // [n] position of each key; < 0 marks an empty slot; null: no mask
  const int32_t* group = nullptr;  // [n] image id of each key (-1: none); null: all -1
  DType dtype = DType::F32;
};

// Which keys a query sees: (causal AND within the window) OR (same image group).
struct AttentionMask {
  bool causal = true;
  int window = 0;  // 0: unlimited; else a query at p sees keys at p-window+1 .. p
};

// Multi-head attention with grouped-query sharing (n_heads / n_kv_heads query heads per kv head).
// q, out [n_q, n_heads, head_dim]; q_pos / q_group [n_q] (null: no mask / no groups). With
// positions, each query's row is bitwise the same whatever the other queries of the call and the
// thread count, and whichever segment (cached or fresh) holds a key: it sums the keys by position.
void attention(const float* q, int64_t n_q, int n_heads, int n_kv_heads, int head_dim,
               const int32_t* q_pos, const int32_t* q_group, std::span<const KvSegment> kv,
               AttentionMask mask, float scale, float* out);

// The SIMD target the kernels run on this machine, as Highway names it (e.g. "AVX3_DL", "AVX2").
const char* simd_target();

}  // namespace gp::ops
