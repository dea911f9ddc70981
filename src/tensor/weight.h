// A linear layer's weight as stored in the checkpoint: MLX affine-quantized or plain float.
// Logical shape [out, in]; a linear computes y = x · Wᵀ.
#pragma once

#include <cstdint>
#include <vector>

#include "io/safetensors.h"

namespace gp {

// MLX affine quantization: value = q * scale + bias per group of `group_size` input columns.
struct QuantFormat {
  int bits = 4;
  int group_size = 64;
};

struct Weight {
  int64_t out = 0, in = 0;  // logical [out, in]
  bool quantized = false;
  // Quantized: q [out, in*bits/32] u32 (low nibble first); scales, biases [out, in/group_size].
  const uint32_t* q = nullptr;
  const void* scales = nullptr;
  const void* biases = nullptr;
  DType scale_dtype = DType::BF16;
  QuantFormat fmt;
  // Where the load repacked the nibbles (cpu::repack_q8, model/text_model.cpp): the same nibbles
  // in the vertical int8 kernels' layout, which the int8 kernels of the target that repacked them
  // read instead of q; null otherwise. q still views the checkpoint (for every other reader).
  const uint8_t* vq = nullptr;
  // Float: data [out, in] of `dtype`.
  const void* data = nullptr;
  DType dtype = DType::F32;

  bool empty() const { return out == 0; }
  int64_t groups_per_row() const { return in / fmt.group_size; }
  size_t bytes() const;  // bytes read to use the whole weight once
};

// Dequantizes (or converts) row r into out[in].
void weight_row(const Weight& w, int64_t r, float* out);

// MLX's affine quantization of one row of `in` values (in % group_size == 0), as SPEC §2 states it.
// q receives in*bits/32 words; scales, biases receive in/group_size f32 values.
void quantize_row(const float* w, int64_t in, QuantFormat fmt, uint32_t* q, float* scales,
                  float* biases);

// Quantizes rows [rows, in]; returns the packed words and scales/biases encoded in `scale_dtype`.
struct QuantizedRows {
  std::vector<uint32_t> q;
  std::vector<uint8_t> scales, biases;
};
QuantizedRows quantize_rows(const float* w, int64_t rows, int64_t in, QuantFormat fmt,
                            DType scale_dtype);

}  // namespace gp
