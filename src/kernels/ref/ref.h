// Scalar reference of every op in kernels/ops.h: plain loops, single-threaded, the ground truth
// that the SIMD kernels are tested against.
#pragma once

#include "kernels/ops.h"

namespace gp::ref {

void linear(const Weight& w, const float* x, int64_t n, float* y, const float* bias);
void rms_norm(const float* x, const float* w, int64_t n, int64_t d, float eps, float* y);
void layer_norm(const float* x, const float* w, const float* b, int64_t n, int64_t d, float eps,
                float* y);
void rope(float* x, int64_t n, int n_heads, int head_dim, const int32_t* pos, float base,
          float pos_scale);
void gelu_tanh_mul(const float* g, const float* u, int64_t n, float* out);
void gelu_tanh(float* x, int64_t n);
void add(float* x, const float* y, int64_t n);
void attention(const float* q, int64_t n_q, int n_heads, int n_kv_heads, int head_dim,
               const int32_t* q_pos, const int32_t* q_group, std::span<const ops::KvSegment> kv,
               ops::AttentionMask mask, float scale, float* out);

// True when query (qp, qg) may attend to key (kp, kg) under `mask` (shared by every backend).
inline bool visible(int32_t qp, int32_t qg, int32_t kp, int32_t kg, ops::AttentionMask mask) {
  if (kp < 0) return false;
  if (qg >= 0 && qg == kg) return true;
  if (mask.causal && kp > qp) return false;
  if (mask.window > 0 && qp - kp >= mask.window) return false;
  return true;
}

}  // namespace gp::ref
