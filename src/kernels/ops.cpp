#include "kernels/ops.h"

#include "kernels/cpu/cpu.h"
#include "kernels/cpu/linear_q8.h"

namespace gp::ops {

void linear_many(std::span<const LinearOut> outs, const float* x, int64_t n, Activations act) {
  cpu::linear_many(outs, x, n, act);
}
size_t repack_bytes(const Weight& w) {
  return cpu::q8_repack_gains(w) ? cpu::q8_repack_bytes(w) : 0;
}
void repack(const Weight& w, uint8_t* dst) { cpu::q8_repack(w, dst); }
void rms_norm(const float* x, const float* w, int64_t n, int64_t d, float eps, float* y) {
  cpu::rms_norm(x, w, n, d, eps, y);
}
void layer_norm(const float* x, const float* w, const float* b, int64_t n, int64_t d, float eps,
                float* y) {
  cpu::layer_norm(x, w, b, n, d, eps, y);
}
void rope_angles(const int32_t* pos, int64_t n, int head_dim, float base, float pos_scale,
                 float* cs) {
  cpu::rope_angles(pos, n, head_dim, base, pos_scale, cs);
}
void rope(float* x, int64_t n, int n_heads, int head_dim, const float* cs) {
  cpu::rope(x, n, n_heads, head_dim, cs);
}
void gelu_tanh_mul(const float* g, const float* u, int64_t n, float* out) {
  cpu::gelu_tanh_mul(g, u, n, out);
}
void gelu_tanh(float* x, int64_t n) { cpu::gelu_tanh(x, n); }
void add(float* x, const float* y, int64_t n) { cpu::add(x, y, n); }
void f32_to_f16(const float* x, int64_t n, void* h) { cpu::f32_to_f16(x, n, h); }
void f16_to_f32(const void* h, int64_t n, float* x) { cpu::f16_to_f32(h, n, x); }
void attention(const float* q, int64_t n_q, int n_heads, int n_kv_heads, int head_dim,
               const int32_t* q_pos, const int32_t* q_group, std::span<const KvSegment> kv,
               AttentionMask mask, float scale, float* out) {
  cpu::attention(q, n_q, n_heads, n_kv_heads, head_dim, q_pos, q_group, kv, mask, scale, out);
}

const char* simd_target() { return cpu::target_name(); }

}  // namespace gp::ops
