// SIMD twins of the ops in kernels/ops.h (linear: the f32 path of ops::linear_many; the int8 path
// is in linear_q8.h): Highway kernels compiled for every target of the
// build (SSE4, AVX2, AVX-512, NEON, ...) and picked at run time, spread over ThreadPool::global().
// Each one is tested against its scalar reference in kernels/ref.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "kernels/ops.h"

namespace gp::cpu {

void linear(const Weight& w, const float* x, int64_t n, float* y, const float* bias);
void linear_many(std::span<const ops::LinearOut> outs, const float* x, int64_t n,
                 ops::Activations act);
void rms_norm(const float* x, const float* w, int64_t n, int64_t d, float eps, float* y);
void layer_norm(const float* x, const float* w, const float* b, int64_t n, int64_t d, float eps,
                float* y);
void rope_angles(const int32_t* pos, int64_t n, int head_dim, float base, float pos_scale,
                 float* cs);
void rope(float* x, int64_t n, int n_heads, int head_dim, const float* cs);
void gelu_tanh_mul(const float* g, const float* u, int64_t n, float* out);
void gelu_tanh(float* x, int64_t n);
void add(float* x, const float* y, int64_t n);
void f32_to_f16(const float* x, int64_t n, void* h);
void f16_to_f32(const void* h, int64_t n, float* x);
void attention(const float* q, int64_t n_q, int n_heads, int n_kv_heads, int head_dim,
               const int32_t* q_pos, const int32_t* q_group, std::span<const ops::KvSegment> kv,
               ops::AttentionMask mask, float scale, float* out);

// Name of the SIMD target the dispatcher picks on this machine (e.g. "AVX2").
const char* target_name();

// For benchmarks: from now on the kernels run the SIMD target named (as target_name() spells
// it) instead of the best one; false, changing nothing, where that target is not built or this
// CPU lacks it. simd_targets_available() lists those it can run, best first.
bool select_simd_target(const std::string& name);
std::string simd_targets_available();

}  // namespace gp::cpu
