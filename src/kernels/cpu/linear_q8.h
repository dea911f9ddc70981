// The int8-activation linear (ops::Activations::kInt8 of ops::linear_many) on its own, for the
// kernel tests and benchmarks that hold it against the f32 linear.
#pragma once

#include <cstdint>
#include <vector>

#include "tensor/weight.h"

namespace gp::cpu {

// As cpu::linear, but for a 4-bit group-64 weight each row of x [n, w.in] is first quantized to
// int8 per group of 64 and the products are exact integer sums; other weights run cpu::linear.
void linear_q8(const Weight& w, const float* x, int64_t n, float* y, const float* bias = nullptr);

// linear_q8 through the panel kernel (GemmQ8) for every n, the few-row kernel's reference in
// the tests, whose rows it must equal bitwise.
void linear_q8_gemm(const Weight& w, const float* x, int64_t n, float* y, const float* bias);

// The most rows (n >= 2) that linear_q8 runs through the few-row kernel on the current SIMD
// target; 0 where that target has none.
int64_t linear_q8_few_rows_max();

// The load-time repack (issue 16 item 3, EngineOptions::repack). q8_repack_bytes: the bytes of
// w's nibbles in the layout that the current target's int8 kernels read fastest (AVX3_DL: the
// vertical kernels' 16 rows transposed per group); 0 on other targets and for weights without an
// int8 path. q8_repack_gains: whether a load asked to repack should repack w (the layout exists
// and w has at most 4096 inputs: wider ones decode slower from it, docs/BENCHMARKS.md).
// q8_repack writes that layout into dst (q8_repack_bytes(w) bytes), read from w.q, on the thread
// pool; with w.vq = dst the int8 kernels of this target read dst and never w.q.
size_t q8_repack_bytes(const Weight& w);
bool q8_repack_gains(const Weight& w);
void q8_repack(const Weight& w, uint8_t* dst);

// The int8 kernel linear_q8 runs on the current SIMD target, e.g. "vpdpbusd 256-bit (AVX-VNNI)".
const char* linear_q8_kernel_name();

// x86: whether the CPU reports AVX-VNNI (CPUID leaf 7 subleaf 1, EAX bit 4): the VEX vpdpbusd
// of Alder Lake and later Intel client parts and of AMD Zen 5. False elsewhere.
bool cpu_has_avx_vnni();
// Whether the AVX2 target's int8 kernels run vpdpbusd instead of pmaddubsw + pmaddwd (the same
// outputs bit for bit): where the CPU has AVX-VNNI, unless set_avx_vnni_enabled(false).
bool avx_vnni_in_use();
// For tests and benchmarks: false runs pmaddubsw + pmaddwd on the AVX2 target of a CPU with
// AVX-VNNI; true (the default) uses AVX-VNNI where the CPU has it, never where it has not.
void set_avx_vnni_enabled(bool enabled);

// x86: whether the CPU reports AVX512-VNNI (CPUID leaf 7 subleaf 0, ECX bit 11): the EVEX
// vpdpbusd of Intel Cascade Lake and later server parts, Ice Lake and AMD Zen 4 on. False
// elsewhere.
bool cpu_has_avx512_vnni();
// Whether the AVX3 target's one-row and panel int8 kernels run 512-bit vpdpbusd instead of
// 256-bit pmaddubsw + pmaddwd: where the CPU has AVX512-VNNI (Cascade Lake, Cooper Lake: CPUs
// without the VBMI of AVX3_DL, whose kernels always run it), unless
// set_avx512_vnni_enabled(false).
bool avx512_vnni_in_use();
// For tests and benchmarks: false runs pmaddubsw + pmaddwd on the AVX3 target of a CPU with
// AVX512-VNNI; true (the default) uses it where the CPU has it, never where it has not.
void set_avx512_vnni_enabled(bool enabled);

}  // namespace gp::cpu
