// MLX's affine quantization (tensor/weight.h) against golden groups computed independently.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "tensor/dtype.h"
#include "tensor/weight.h"
#include "test_util.h"

namespace gp {
namespace {

uint32_t bits_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}

// One group of 64 values (given as multiples of 2^-12, exact in f32) with MLX's output for it.
struct Golden {
  std::vector<int> w4096;
  std::vector<uint32_t> q;  // 8 words, 8 nibbles each, element k at bits 4*(k%8)
  uint32_t scale, bias;     // f32 bit patterns
};

// Output of tests/data/mlx_quantize_golden.py (standard library only), which replays
// mlx/ops.cpp's affine_quantize for a float32 input (bits 4, group 64) op by op in float32:
//   scale = max((max - min) / 15, 1e-7), negated unless |min| > |max|; edge = min if |min| > |max|
//   else max; q0 = round(edge / scale) (half to even); if q0 != 0: scale = edge / q0, bias = edge,
//   else bias = 0; q = clip(round((w - bias) / scale), 0, 15).
// A constant or zero group keeps scale -1e-7 and q = 0; an all-positive group gets a negative
// scale.
const std::vector<Golden> kGolden = {
    // mixed, |min| > |max|
    {{3540,  -2568, -1934, -3564, -8634, -4232, -7686, -6720, 420,   3636,  -36,   1508,  -5816,
      -7648, 2138,  1816,  -3699, -1518, -6734, 308,   -4069, -2360, -3721, 944,   2117,  5000,
      -2194, 2932,  -1202, 3759,  2321,  -2110, -5936, -4167, 525,   4604,  -5386, -6496, -8837,
      -2326, 3807,  -8520, 1839,  4029,  2147,  -3361, 684,   -422,  -1676, -3756, 2853,  4125,
      -7960, -7700, 1438,  -5324, 2083,  1505,  1555,  -2995, 878,   999,   3751,  -1995},
     {0x2150687e, 0xcc13caea, 0xb675a286, 0x8de9d8fc, 0x7034fb53, 0xab6cfc0e, 0x4c11fd68,
      0x8ebb7ccc},
     0x3e5ceccd,
     0xc00a1400},  // scale 0.215747073, bias -2.1574707
    // mixed, |max| > |min|
    {{-1718, 1784,  1821,  -1839, 5816,  6966,  1697,  2706,  -25,   6759,  4161,  -600, 319,
      5882,  -2902, 1681,  1445,  4155,  -1138, 4916,  1406,  -1941, -1194, 3566,  -838, 6139,
      5813,  3554,  4904,  481,   1205,  739,   6357,  3568,  2721,  -789,  3042,  1853, 3989,
      4912,  -1059, -2401, 3028,  -1999, -227,  5154,  4716,  4881,  1889,  3470,  3686, 1701,
      2229,  779,   -2212, -306,  1162,  5951,  -2005, -2314, 5573,  -1376, -1301, 6728},
     {0x7802e88e, 0x8f2ac40b, 0x5de93d49, 0xa9a3521c, 0x3586c751, 0x343be6fd, 0xbea78568,
      0x0dd2fe29},
     0xbe1e5174,
     0x3fd9b000},  // scale -0.154607594, bias 1.70068359
    // all negative
    {{-2177, -1672, -5653, -975,  -5495, -1148, -176,  -6413, -3509, -6052, -5380, -2330, -3269,
      -8000, -5140, -2087, -575,  -2815, -7967, -7496, -4837, -5458, -1266, -380,  -2048, -6709,
      -7730, -6648, -5752, -6195, -6191, -994,  -3194, -5598, -6177, -7071, -7985, -4960, -5637,
      -3229, -1140, -6190, -4947, -454,  -6056, -2478, -4315, -2429, -2035, -7888, -1806, -274,
      -1180, -863,  -7522, -7104, -919,  -7728, -5753, -155,  -2166, -522,  -5042, -7376},
     {0x3fd5d4cb, 0xb509b548, 0xed5610ae, 0xd334312b, 0x94602359, 0xa7a4e63d, 0x21ddec0b,
      0x16ebf41d},
     0x3e055555,
     0xbffa0000},  // scale 0.130208328, bias -1.953125
    // all positive
    {{1792, 3409, 3541, 4129, 2291, 3593, 2619, 1559, 4103, 1355, 4880, 3585, 5201,
      5549, 3406, 1137, 3763, 5042, 3072, 4134, 840,  873,  5307, 3169, 1325, 2745,
      2946, 1984, 2394, 4836, 1583, 2196, 944,  5191, 1818, 4268, 4687, 2179, 679,
      5704, 3261, 5046, 5533, 3452, 2050, 3864, 2422, 1421, 3562, 5869, 3537, 869,
      3163, 1073, 5759, 3657, 499,  5738, 1669, 3578, 500,  5140, 5718, 5470},
     {0xc96a567b, 0xd71263c5, 0x72ee5826, 0xac39b89c, 0x0ea34b2d, 0xc95a7127, 0x60d7e606,
      0x102f6b0f},
     0xbdb76800,
     0x3fb76800},  // scale -0.089553833, bias 1.43286133
    // constant
    {{3072, 3072, 3072, 3072, 3072, 3072, 3072, 3072, 3072, 3072, 3072, 3072, 3072,
      3072, 3072, 3072, 3072, 3072, 3072, 3072, 3072, 3072, 3072, 3072, 3072, 3072,
      3072, 3072, 3072, 3072, 3072, 3072, 3072, 3072, 3072, 3072, 3072, 3072, 3072,
      3072, 3072, 3072, 3072, 3072, 3072, 3072, 3072, 3072, 3072, 3072, 3072, 3072,
      3072, 3072, 3072, 3072, 3072, 3072, 3072, 3072, 3072, 3072, 3072, 3072},
     {0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000,
      0x00000000},
     0xb3d6bf95,
     0x3f400000},  // scale -1.00000001e-07, bias 0.75
    // constant negative
    {{-5120, -5120, -5120, -5120, -5120, -5120, -5120, -5120, -5120, -5120, -5120, -5120, -5120,
      -5120, -5120, -5120, -5120, -5120, -5120, -5120, -5120, -5120, -5120, -5120, -5120, -5120,
      -5120, -5120, -5120, -5120, -5120, -5120, -5120, -5120, -5120, -5120, -5120, -5120, -5120,
      -5120, -5120, -5120, -5120, -5120, -5120, -5120, -5120, -5120, -5120, -5120, -5120, -5120,
      -5120, -5120, -5120, -5120, -5120, -5120, -5120, -5120, -5120, -5120, -5120, -5120},
     {0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000,
      0x00000000},
     0xb3d6bf95,
     0xbfa00000},  // scale -1.00000001e-07, bias -1.25
    // zero
    {{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
      0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
      0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
     {0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000,
      0x00000000},
     0xb3d6bf95,
     0x00000000},  // scale -1.00000001e-07, bias 0
    // tiny range near 0
    {{-2, -1, 0,  1,  -2, -1, 0,  1,  -2, -1, 0,  1,  -2, -1, 0,  1,  -2, -1, 0,  1,  -2, -1,
      0,  1,  -2, -1, 0,  1,  -2, -1, 0,  1,  -2, -1, 0,  1,  -2, -1, 0,  1,  -2, -1, 0,  1,
      -2, -1, 0,  1,  -2, -1, 0,  1,  -2, -1, 0,  1,  -2, -1, 0,  1,  -2, -1, 0,  1},
     {0xfa50fa50, 0xfa50fa50, 0xfa50fa50, 0xfa50fa50, 0xfa50fa50, 0xfa50fa50, 0xfa50fa50,
      0xfa50fa50},
     0x384ccccd,
     0xba000000},  // scale 4.88281257e-05, bias -0.00048828125
};

TEST(QuantizeRow, MatchesMlxBitForBit) {
  QuantFormat fmt;  // 4 bits, group 64
  std::vector<float> row;
  for (const Golden& g : kGolden)
    for (int v : g.w4096) row.push_back(static_cast<float>(v) / 4096.0f);
  const int64_t n_groups = static_cast<int64_t>(kGolden.size());
  std::vector<uint32_t> q(n_groups * 8);
  std::vector<float> scales(n_groups), biases(n_groups);
  quantize_row(row.data(), n_groups * 64, fmt, q.data(), scales.data(), biases.data());
  for (int64_t g = 0; g < n_groups; ++g) {
    for (int k = 0; k < 8; ++k) EXPECT_EQ(q[g * 8 + k], kGolden[g].q[k]) << "group " << g;
    EXPECT_EQ(bits_of(scales[g]), kGolden[g].scale) << "group " << g << ": " << scales[g];
    EXPECT_EQ(bits_of(biases[g]), kGolden[g].bias) << "group " << g << ": " << biases[g];
  }
}

// IEEE half encodings worked out by hand: rounding to nearest even at the half's precision, its
// subnormals (multiples of 2^-24), overflow to infinity from 65520 (the midpoint above 65504).
TEST(HalfFloat, KnownEncodings) {
  const std::vector<std::pair<float, uint16_t>> cases = {
      {0.0f, 0x0000},         {-0.0f, 0x8000},        {1.0f, 0x3c00},         {-2.0f, 0xc000},
      {65504.0f, 0x7bff},     {65519.0f, 0x7bff},     {65520.0f, 0x7c00},     {1e30f, 0x7c00},
      {0x1p-24f, 0x0001},     {0x1p-25f, 0x0000},     {0x3p-25f, 0x0002},     {0x1p-14f, 0x0400},
      {0x1.ff8p-15f, 0x03ff}, {0x1.ffcp-15f, 0x0400}, {0x1.ffep-15f, 0x0400}, {0x1.002p0f, 0x3c00},
      {0x1.006p0f, 0x3c02},   {0x1.0021p0f, 0x3c01},  {-0x1p-30f, 0x8000},
  };
  for (const auto& [f, h] : cases) {
    uint16_t got;
    from_f32(DType::F16, &f, 1, &got);
    EXPECT_EQ(got, h) << f;
    EXPECT_EQ(f32_to_f16(f), h) << f;
  }
  const float inf = INFINITY, nan = NAN;
  uint16_t got;
  from_f32(DType::F16, &inf, 1, &got);
  EXPECT_EQ(got, 0x7c00);
  from_f32(DType::F16, &nan, 1, &got);
  EXPECT_EQ(got & 0x7fff, 0x7e00);
}

// The array conversions (branch-free, vectorized) give the scalar ones' bits: every half to f32
// and back (the identity for every non-NaN half), and f32 values spread over every exponent.
TEST(HalfFloat, ArrayConversionsMatchTheScalarOnes) {
  const std::vector<uint16_t> halves = test::every_half();
  std::vector<float> f(halves.size());
  to_f32(DType::F16, halves.data(), halves.size(), f.data());
  std::vector<uint16_t> back(halves.size());
  from_f32(DType::F16, f.data(), f.size(), back.data());
  for (uint32_t h = 0; h < 65536; ++h) {
    ASSERT_EQ(bits_of(f[h]), bits_of(f16_to_f32(static_cast<uint16_t>(h)))) << h;
    const bool nan = (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0;
    if (!nan) {
      ASSERT_EQ(back[h], h) << h;
    }
  }
  const std::vector<float> x = test::floats_of_every_exponent();
  std::vector<uint16_t> y(x.size());
  from_f32(DType::F16, x.data(), x.size(), y.data());
  for (size_t i = 0; i < x.size(); ++i) {
    ASSERT_EQ(y[i], f32_to_f16(x[i])) << bits_of(x[i]);  // NaN: its sign, then 0x7e00
  }
}

}  // namespace
}  // namespace gp
