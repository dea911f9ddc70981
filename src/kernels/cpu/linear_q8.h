// The int8-activation linear (ops::Activations::kInt8 of ops::linear_many) on its own, for the
// kernel tests and benchmarks that hold it against the f32 linear.
#pragma once

#include <cstdint>

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

}  // namespace gp::cpu
