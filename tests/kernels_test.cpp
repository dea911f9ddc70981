// Every SIMD kernel (kernels/cpu, through ops.h) against its scalar reference (kernels/ref), on
// every SIMD target this CPU runs, over many sizes, dtypes, thread counts and misaligned
// pointers; and the reference itself pinned by hand-computed values.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "base/thread_pool.h"
#include "hwy/targets.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/linear_q8.h"
#include "kernels/cpu/q8_arm.h"
#include "kernels/ops.h"
#include "kernels/ref/ref.h"
#include "tensor/dtype.h"
#include "tensor/weight.h"
#include "test_util.h"

namespace gp {
namespace {

// Runs fn once per SIMD target that is compiled in and that this CPU supports.
template <class Fn>
void for_each_target(const Fn& fn) {
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    SCOPED_TRACE(hwy::TargetName(target));
    ASSERT_STREQ(cpu::target_name(), hwy::TargetName(target));
    fn();
  }
  hwy::SetSupportedTargetsForTest(0);
}

// "TARGET: int8 kernel" of every int8 kernel run by for_each_q8_kernel, for the test log.
std::set<std::string>& q8_kernels_run() {
  static std::set<std::string> run;
  return run;
}

// Runs fn once per int8 kernel of linear_q8 that this CPU runs on the current target: on 64-bit
// ARM each NEON kernel set it supports (sdot, widening multiply-adds); on x86's AVX2 target
// vpdpbusd (AVX-VNNI) where the CPU has it and pmaddubsw + pmaddwd, on its AVX3 target 512-bit
// vpdpbusd (AVX512-VNNI) where the CPU has it and pmaddubsw + pmaddwd; elsewhere the one kernel.
template <class Fn>
void for_each_q8_kernel(const Fn& fn) {
#if defined(__aarch64__)
  for (const cpu::arm::Q8Kernels* k : cpu::arm::q8_kernels_available()) {
    cpu::arm::set_q8_kernels_for_test(k);
    SCOPED_TRACE(k->name);
    q8_kernels_run().insert(std::string(cpu::target_name()) + ": " + k->name);
    fn();
  }
  cpu::arm::set_q8_kernels_for_test(nullptr);
#else
  std::string last;
  for (bool vnni : {true, false}) {
    cpu::set_avx_vnni_enabled(vnni);
    cpu::set_avx512_vnni_enabled(vnni);
    const std::string name = cpu::linear_q8_kernel_name();
    if (name == last) continue;  // a target without a VNNI variant
    last = name;
    SCOPED_TRACE(name);
    q8_kernels_run().insert(std::string(cpu::target_name()) + ": " + name);
    fn();
  }
  cpu::set_avx_vnni_enabled(true);
  cpu::set_avx512_vnni_enabled(true);
#endif
}

// Prints the int8 kernels the tests ran once they are all done.
class Q8KernelsReport : public testing::Environment {
 public:
  void TearDown() override {
    if (q8_kernels_run().empty()) return;
    std::printf("int8 kernels tested against the reference on this CPU:\n");
    for (const std::string& k : q8_kernels_run()) std::printf("  %s\n", k.c_str());
  }
};
const testing::Environment* const q8_kernels_report =
    testing::AddGlobalTestEnvironment(new Q8KernelsReport);

// The dispatcher runs the best compiled target this CPU supports, and linear_q8 the best int8
// kernel; the int8 kernels go to the test log, to show what the other tests here ran.
TEST(Dispatch, BestTargetAndInt8Kernel) {
  const std::vector<int64_t> targets = hwy::SupportedAndGeneratedTargets();
  ASSERT_FALSE(targets.empty());
  EXPECT_STREQ(cpu::target_name(), hwy::TargetName(targets[0]));
#if defined(__aarch64__)
  const auto kernels = cpu::arm::q8_kernels_available();
  ASSERT_FALSE(kernels.empty());
  EXPECT_EQ(&cpu::arm::q8_kernels(), kernels[0]);
  std::cout << "int8 kernels run:";
  for (const cpu::arm::Q8Kernels* k : kernels) std::cout << " " << k->name;
  std::cout << " (default " << cpu::arm::q8_kernels().name << ")\n";
#else
  std::cout << "int8 kernels run: those of the SIMD targets tested\n";
#endif
}

// cpu_has_avx_vnni and cpu_has_avx512_vnni (CPUID) agree with the flags the Linux kernel
// reports, and each target names the int8 kernel it runs: the AVX2 target vpdpbusd exactly where
// the CPU has AVX-VNNI and it is not turned off, AVX3 its 512-bit vpdpbusd exactly where the CPU
// has AVX512-VNNI and it is not turned off, AVX3_DL its 512-bit vpdpbusd always.
TEST(Dispatch, AvxVnniAsTheCpuReportsIt) {
#if defined(__x86_64__) && defined(__linux__)
  std::ifstream f("/proc/cpuinfo");
  std::string line, flags;
  while (flags.empty() && std::getline(f, line))
    if (line.rfind("flags", 0) == 0) flags = line + " ";
  ASSERT_FALSE(flags.empty()) << "no flags line in /proc/cpuinfo";
  EXPECT_EQ(cpu::cpu_has_avx_vnni(), flags.find(" avx_vnni ") != std::string::npos);
  EXPECT_EQ(cpu::cpu_has_avx512_vnni(), flags.find(" avx512_vnni ") != std::string::npos);
#elif !defined(__x86_64__) && !defined(__i386__)
  EXPECT_FALSE(cpu::cpu_has_avx_vnni());
  EXPECT_FALSE(cpu::cpu_has_avx512_vnni());
#endif
  for_each_target([&] {
    const std::string target = cpu::target_name();
    std::printf("%s: %s\n", target.c_str(), cpu::linear_q8_kernel_name());
    if (target == "AVX2") {
      EXPECT_STREQ(cpu::linear_q8_kernel_name(), cpu::cpu_has_avx_vnni()
                                                     ? "vpdpbusd 256-bit (AVX-VNNI)"
                                                     : "pmaddubsw + pmaddwd 256-bit");
      cpu::set_avx_vnni_enabled(false);
      EXPECT_FALSE(cpu::avx_vnni_in_use());
      EXPECT_STREQ(cpu::linear_q8_kernel_name(), "pmaddubsw + pmaddwd 256-bit");
      cpu::set_avx_vnni_enabled(true);
      EXPECT_EQ(cpu::avx_vnni_in_use(), cpu::cpu_has_avx_vnni());
    }
    if (target == "AVX3") {
      EXPECT_STREQ(cpu::linear_q8_kernel_name(), cpu::cpu_has_avx512_vnni()
                                                     ? "vpdpbusd 512-bit (AVX512-VNNI)"
                                                     : "pmaddubsw + pmaddwd 256-bit");
      cpu::set_avx512_vnni_enabled(false);
      EXPECT_FALSE(cpu::avx512_vnni_in_use());
      EXPECT_STREQ(cpu::linear_q8_kernel_name(), "pmaddubsw + pmaddwd 256-bit");
      cpu::set_avx512_vnni_enabled(true);
      EXPECT_EQ(cpu::avx512_vnni_in_use(), cpu::cpu_has_avx512_vnni());
    }
    if (target == "AVX3_DL") {
      EXPECT_STREQ(cpu::linear_q8_kernel_name(), "vpdpbusd 512-bit (AVX512-VNNI)");
      cpu::set_avx512_vnni_enabled(false);  // AVX3_DL implies AVX512-VNNI: no other kernel
      EXPECT_STREQ(cpu::linear_q8_kernel_name(), "vpdpbusd 512-bit (AVX512-VNNI)");
      cpu::set_avx512_vnni_enabled(true);
    }
  });
}

// Replaces the global pool for the life of the object.
struct ScopedThreads {
  explicit ScopedThreads(int n) { ThreadPool::set_global_threads(n); }
  ~ScopedThreads() { ThreadPool::set_global_threads(0); }
};

// fn(threads) once per SIMD target (for_each_target) with the pool at 1 and at 3 threads.
template <class Fn>
void for_each_pool_and_target(const Fn& fn) {
  for (int threads : {1, 3}) {
    SCOPED_TRACE("threads=" + std::to_string(threads));
    ScopedThreads pool(threads);
    for_each_target([&] { fn(threads); });
  }
}

// n values of T starting `offset` elements into the storage, to test unaligned pointers.
template <class T>
struct Buf {
  Buf(size_t n, int offset) : storage(n + 1), p(storage.data() + offset) {}
  std::vector<T> storage;
  T* p;
};

std::vector<float> randn(size_t n, std::mt19937& rng, float sigma = 1.0f, float mean = 0.0f) {
  std::normal_distribution<float> dist(mean, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// A weight with its storage, offset by one element from the allocation when `offset` is 1.
struct TestWeight {
  Weight w;
  Buf<uint32_t> q{0, 0};
  Buf<uint8_t> scales{0, 0}, biases{0, 0}, data{0, 0};
};

TestWeight make_quantized(int64_t out, int64_t in, DType scale_dtype, int offset,
                          std::mt19937& rng) {
  // Rows of different magnitudes, groups of different offsets: realistic scales and biases.
  std::vector<float> f = randn(out * in, rng, 0.05f);
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t i = 0; i < in; ++i)
      f[o * in + i] = f[o * in + i] * (1 + o % 5) + 0.01f * (i / 64 % 3);
  }
  const QuantizedRows qr = quantize_rows(f.data(), out, in, QuantFormat{}, scale_dtype);
  const size_t ss = dtype_size(scale_dtype);
  TestWeight t;
  t.q = Buf<uint32_t>(qr.q.size(), offset);
  t.scales = Buf<uint8_t>(qr.scales.size() + ss, offset * ss);
  t.biases = Buf<uint8_t>(qr.biases.size() + ss, offset * ss);
  std::copy(qr.q.begin(), qr.q.end(), t.q.p);
  std::copy(qr.scales.begin(), qr.scales.end(), t.scales.p);
  std::copy(qr.biases.begin(), qr.biases.end(), t.biases.p);
  t.w.out = out;
  t.w.in = in;
  t.w.quantized = true;
  t.w.q = t.q.p;
  t.w.scales = t.scales.p;
  t.w.biases = t.biases.p;
  t.w.scale_dtype = scale_dtype;
  return t;
}

TestWeight make_float(int64_t out, int64_t in, DType dtype, int offset, std::mt19937& rng) {
  const std::vector<float> f = randn(out * in, rng, 0.1f);
  const size_t ds = dtype_size(dtype);
  TestWeight t;
  t.data = Buf<uint8_t>(f.size() * ds + ds, offset * ds);
  from_f32(dtype, f.data(), f.size(), t.data.p);
  t.w.out = out;
  t.w.in = in;
  t.w.data = t.data.p;
  t.w.dtype = dtype;
  return t;
}

// ops::linear_many with f32 activations against ref::linear: |y - ref| <= tol * (1 + sum_i |x_i
// w_i|).
void check_linear(const Weight& w, int64_t n, bool with_bias, int offset, std::mt19937& rng,
                  double tol = 1e-5) {
  SCOPED_TRACE("out=" + std::to_string(w.out) + " in=" + std::to_string(w.in) +
               " n=" + std::to_string(n) + " bias=" + std::to_string(with_bias) +
               " offset=" + std::to_string(offset));
  const std::vector<float> xv = randn(n * w.in, rng);
  Buf<float> x(n * w.in, offset), y(n * w.out, offset), bias(w.out, offset);
  std::copy(xv.begin(), xv.end(), x.p);
  const std::vector<float> bv = randn(w.out, rng);
  std::copy(bv.begin(), bv.end(), bias.p);
  const float* b = with_bias ? bias.p : nullptr;
  std::vector<float> expect(n * w.out);
  ref::linear(w, x.p, n, expect.data(), b);
  std::fill(y.p, y.p + n * w.out, std::nanf(""));
  ops::linear_many({{&w, y.p, b}}, x.p, n, ops::Activations::kF32);
  std::vector<float> row(w.in);
  int failures = 0;
  for (int64_t o = 0; o < w.out && failures < 5; ++o) {
    weight_row(w, o, row.data());
    for (int64_t t = 0; t < n; ++t) {
      double mag = 0;
      for (int64_t i = 0; i < w.in; ++i) mag += std::fabs(double{x.p[t * w.in + i]} * row[i]);
      const double got = y.p[t * w.out + o], want = expect[t * w.out + o];
      if (!(std::fabs(got - want) <= tol * (1 + mag))) {
        ADD_FAILURE() << "y[" << t << "," << o << "] = " << got << ", expected " << want
                      << " (magnitude " << mag << ")";
        ++failures;
      }
    }
  }
}

// Every target the CPU runs is compiled in, AVX3_DL (AVX-512 VNNI) and the SVE ones included:
// the kernels test each one, so the log names them.
TEST(Targets, EverySupportedTargetIsCompiled) {
  const std::vector<int64_t> tested = hwy::SupportedAndGeneratedTargets();
  std::string names;
  for (int64_t target : tested)
    names += std::string(names.empty() ? "" : " ") + hwy::TargetName(target);
  std::printf("SIMD targets tested on this CPU: %s\n", names.c_str());
  for (int64_t target :
       {int64_t{HWY_AVX3_DL}, int64_t{HWY_AVX3}, int64_t{HWY_AVX2}, int64_t{HWY_SVE2_128},
        int64_t{HWY_SVE_256}, int64_t{HWY_SVE2}, int64_t{HWY_SVE}, int64_t{HWY_NEON}}) {
    if (hwy::SupportedTargets() & target) {
      EXPECT_NE(std::find(tested.begin(), tested.end(), target), tested.end())
          << hwy::TargetName(target);
    }
  }
}

TEST(RefLinear, MatchesHandDequantization) {
  // Two rows, two groups. Row 0: words 0x76543210, 0xFEDCBA98 repeated, so element k holds
  // k % 16 (low nibble first). Row 1: every word 0x0000000F, so only k % 8 == 0 holds 15.
  std::vector<uint32_t> q(2 * 16);
  for (int i = 0; i < 16; ++i) q[i] = i % 2 == 0 ? 0x76543210u : 0xFEDCBA98u;
  for (int i = 16; i < 32; ++i) q[i] = 0x0000000Fu;
  // [out=2][groups=2] scale and bias, all exact in bf16.
  const float s[4] = {0.5f, 0.25f, 2.0f, -1.0f}, b[4] = {-1.0f, 3.0f, 0.5f, 0.0f};
  std::vector<uint8_t> sb(8), bb(8);
  from_f32(DType::BF16, s, 4, sb.data());
  from_f32(DType::BF16, b, 4, bb.data());
  Weight w;
  w.out = 2;
  w.in = 128;
  w.quantized = true;
  w.q = q.data();
  w.scales = sb.data();
  w.biases = bb.data();
  w.scale_dtype = DType::BF16;
  std::vector<float> x(2 * 128);
  for (int k = 0; k < 128; ++k) x[k] = 1.0f, x[128 + k] = static_cast<float>(k);
  // By hand. Row 0, x = 1: group 0: sum(k%16)=480 -> 480*0.5 - 64 = 176; group 1: 480*0.25 +
  // 64*3 = 312. Row 1, x = 1: group 0: 8 nibbles of 15 -> 120*2 + 64*0.5 = 272; group 1: -120.
  // Row 0, x = k: group 0: sum k*(k%16) over k<64 = 16*6*120 + 4*1240 = 16480 -> 8240 - 2016
  // = 6224; group 1: 16480 + 64*480 = 47200 -> 11800 + 3*6112 = 30136; total 36360.
  // Row 1, x = k: group 0: 15*(0+8+..+56) = 3360 -> 6720 + 0.5*2016 = 7728; group 1:
  // 15*(64+72+..+120) = 11040 -> -11040; total -3312.
  const float expect[4] = {176 + 312, 272 - 120, 36360, -3312};
  float y[4];
  ref::linear(w, x.data(), 2, y, nullptr);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(y[i], expect[i]) << i;
  for_each_target([&] {
    float z[4] = {0, 0, 0, 0}, z1[2];
    ops::linear_many({{&w, z}}, x.data(), 2, ops::Activations::kF32);
    ops::linear_many({{&w, z1}}, x.data() + 128, 1, ops::Activations::kF32);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(z[i], expect[i]) << i;
    EXPECT_EQ(z1[0], expect[2]);
    EXPECT_EQ(z1[1], expect[3]);
  });
}

// The KV cache's f16 conversions give tensor/dtype's bits on every target (vectors on x86 from
// AVX2 up and on 64-bit ARM, the scalar code elsewhere and for NaNs): every half, f32 values over
// every exponent, from odd offsets and with tails shorter than a vector.
TEST(HalfFloat, KernelConversionsMatchDtypeOnEveryTarget) {
  const std::vector<uint16_t> halves = test::every_half();
  std::vector<float> want_f(halves.size());
  to_f32(DType::F16, halves.data(), halves.size(), want_f.data());
  const std::vector<float> x = test::floats_of_every_exponent();
  std::vector<uint16_t> want_h(x.size());
  from_f32(DType::F16, x.data(), x.size(), want_h.data());
  std::string ran;
  for_each_target([&] {
    ran += std::string(ran.empty() ? "" : ", ") + cpu::target_name();
    for (size_t off : {size_t{0}, size_t{3}}) {
      const size_t n = halves.size() - off - 5;  // a tail after the last whole vector
      std::vector<float> f(n);
      ops::f16_to_f32(halves.data() + off, static_cast<int64_t>(n), f.data());
      for (size_t i = 0; i < n; ++i) {
        ASSERT_EQ(std::bit_cast<uint32_t>(f[i]), std::bit_cast<uint32_t>(want_f[off + i]))
            << "half " << off + i;
      }
      const size_t m = x.size() - off - 5;
      std::vector<uint16_t> h(m);
      ops::f32_to_f16(x.data() + off, static_cast<int64_t>(m), h.data());
      for (size_t i = 0; i < m; ++i) {
        ASSERT_EQ(h[i], want_h[off + i]) << "f32 bits " << std::bit_cast<uint32_t>(x[off + i]);
      }
    }
  });
  std::cout << "[          ] f16 conversions checked on: " << ran << "\n";
}

TEST(Linear, QuantizedMatchesReference) {
  std::mt19937 rng(1);
  const DType dtypes[3] = {DType::BF16, DType::F16, DType::F32};
  struct Shape {
    int64_t out, in, n;
  };
  const Shape shapes[] = {{1, 64, 1},    {7, 64, 2},    {65, 128, 1},   {333, 192, 3},
                          {17, 1984, 1}, {100, 640, 7}, {5, 576, 13},   {48, 256, 6},
                          {33, 320, 50}, {333, 64, 1},  {70, 1152, 29}, {64, 512, 12}};
  for_each_target([&] {
    int c = 0;
    for (const Shape& s : shapes) {
      for (DType dt : dtypes) {
        SCOPED_TRACE(dtype_name(dt));
        TestWeight t = make_quantized(s.out, s.in, dt, c % 2, rng);
        check_linear(t.w, s.n, c % 3 != 0, (c / 2) % 2, rng);
        ++c;
      }
    }
  });
}

TEST(Linear, FloatMatchesReference) {
  std::mt19937 rng(2);
  const DType dtypes[3] = {DType::BF16, DType::F16, DType::F32};
  struct Shape {
    int64_t out, in, n;
  };
  // Float weights need not have in % 64 == 0: the original vision fc2 has in = 4304.
  const Shape shapes[] = {{1, 64, 1},    {7, 128, 2},   {65, 64, 1},   {333, 192, 3},
                          {9, 1152, 1},  {45, 576, 13}, {33, 320, 50}, {9, 4304, 1},
                          {21, 4304, 7}, {5, 37, 1},    {6, 37, 9},    {70, 3, 2}};
  for_each_target([&] {
    int c = 0;
    for (const Shape& s : shapes) {
      for (DType dt : dtypes) {
        SCOPED_TRACE(dtype_name(dt));
        TestWeight t = make_float(s.out, s.in, dt, c % 2, rng);
        check_linear(t.w, s.n, c % 3 != 0, (c / 2) % 2, rng);
        ++c;
      }
    }
  });
}

TEST(Linear, ModelShapesAndThreadCounts) {
  std::mt19937 rng(3);
  TestWeight gate = make_quantized(1030, 2560, DType::BF16, 1, rng);
  TestWeight down = make_quantized(257, 2560 * 2, DType::F16, 0, rng);
  for (int threads : {1, 2, 3, 5}) {
    SCOPED_TRACE("threads=" + std::to_string(threads));
    ScopedThreads pool(threads);
    check_linear(gate.w, 1, false, 1, rng);
    check_linear(down.w, 1, true, 0, rng);
    check_linear(gate.w, 37, true, 0, rng);
  }
}

// cpu::linear_q8 (one row) against ref::linear: the int8 rounding of x moves each product
// q_k * s_g * x_k by at most |q_k * s_g| * dx_g / 2, dx_g = max|x_g| / 127.
void check_linear_q8(const Weight& w, const std::vector<float>& xv, const float* bias, int offset,
                     double extra_tol) {
  SCOPED_TRACE("out=" + std::to_string(w.out) + " in=" + std::to_string(w.in) +
               " offset=" + std::to_string(offset));
  Buf<float> x(w.in, offset), y(w.out, offset);
  std::copy(xv.begin(), xv.end(), x.p);
  std::vector<float> expect(w.out);
  ref::linear(w, x.p, 1, expect.data(), bias);
  std::fill(y.p, y.p + w.out, std::nanf(""));
  cpu::linear_q8(w, x.p, 1, y.p, bias);
  const int64_t gpr = w.groups_per_row();
  std::vector<float> row(w.in);
  int failures = 0;
  for (int64_t o = 0; o < w.out && failures < 5; ++o) {
    weight_row(w, o, row.data());
    double mag = 0, bound = 0;
    for (int64_t g = 0; g < gpr; ++g) {
      const double b = load_float(w.scale_dtype, w.biases, o * gpr + g);
      double amax = 0, qs = 0;
      for (int64_t i = g * 64; i < (g + 1) * 64; ++i) {
        amax = std::max(amax, std::fabs(double{x.p[i]}));
        qs += std::fabs(row[i] - b);  // |q_k * s_g|
        mag += std::fabs(double{x.p[i]} * row[i]);
      }
      bound += qs * amax / 127 / 2;
    }
    const double got = y.p[o], want = expect[o];
    if (!(std::fabs(got - want) <= extra_tol * bound + 1e-5 * (1 + mag))) {
      ADD_FAILURE() << "y[" << o << "] = " << got << ", expected " << want << " (int8 bound "
                    << bound << ", magnitude " << mag << ")";
      ++failures;
    }
  }
}

TEST(LinearQ8, WithinInt8ErrorOfReference) {
  std::mt19937 rng(10);
  const DType dtypes[3] = {DType::BF16, DType::F16, DType::F32};
  struct Shape {
    int64_t out, in;
  };
  const Shape shapes[] = {{1, 64}, {7, 128}, {65, 640}, {333, 192}, {1030, 2560}, {257, 10240}};
  for_each_target([&] {
    for_each_q8_kernel([&] {
      int c = 0;
      for (const Shape& s : shapes) {
        for (DType dt : dtypes) {
          SCOPED_TRACE(dtype_name(dt));
          TestWeight t = make_quantized(s.out, s.in, dt, c % 2, rng);
          const std::vector<float> x = randn(s.in, rng), b = randn(s.out, rng);
          check_linear_q8(t.w, x, c % 2 ? b.data() : nullptr, (c / 2) % 2, 1.0);
          ++c;
        }
      }
    });
  });
}

TEST(LinearQ8, ExactWhenActivationsAreInt8) {
  // Integers in [-127, 127] with 127 in every group: dx = 1 and the int8 row is x itself, so
  // only f32 rounding separates the result from the reference (and nibble order must match).
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> dist(-127, 127);
  for_each_target([&] {
    for_each_q8_kernel([&] {
      for (int64_t in : {64, 576, 2560}) {
        TestWeight t = make_quantized(77, in, DType::BF16, 1, rng);
        std::vector<float> x(in);
        for (int64_t i = 0; i < in; ++i)
          x[i] = i % 64 == 5 ? 127.0f : static_cast<float>(dist(rng));
        check_linear_q8(t.w, x, nullptr, 0, 0.0);
      }
    });
  });
}

// cpu::linear_q8 over n rows against ref::linear, row by row with the bound of check_linear_q8.
void check_linear_q8_batch(const Weight& w, int64_t n, const std::vector<float>& xv,
                           const float* bias, int offset, double extra_tol) {
  SCOPED_TRACE("n=" + std::to_string(n) + " out=" + std::to_string(w.out) +
               " in=" + std::to_string(w.in) + " offset=" + std::to_string(offset));
  Buf<float> x(n * w.in, offset), y(n * w.out, offset);
  std::copy(xv.begin(), xv.end(), x.p);
  std::vector<float> expect(n * w.out);
  ref::linear(w, x.p, n, expect.data(), bias);
  std::fill(y.p, y.p + n * w.out, std::nanf(""));
  cpu::linear_q8(w, x.p, n, y.p, bias);
  const int64_t gpr = w.groups_per_row();
  std::vector<float> row(w.in);
  int failures = 0;
  for (int64_t o = 0; o < w.out && failures < 5; ++o) {
    weight_row(w, o, row.data());
    for (int64_t t = 0; t < n && failures < 5; ++t) {
      const float* xt = x.p + t * w.in;
      double mag = 0, bound = 0;
      for (int64_t g = 0; g < gpr; ++g) {
        const double b = load_float(w.scale_dtype, w.biases, o * gpr + g);
        double amax = 0, qs = 0;
        for (int64_t i = g * 64; i < (g + 1) * 64; ++i) {
          amax = std::max(amax, std::fabs(double{xt[i]}));
          qs += std::fabs(row[i] - b);
          mag += std::fabs(double{xt[i]} * row[i]);
        }
        bound += qs * amax / 127 / 2;
      }
      const double got = y.p[t * w.out + o], want = expect[t * w.out + o];
      if (!(std::fabs(got - want) <= extra_tol * bound + 1e-5 * (1 + mag))) {
        ADD_FAILURE() << "y[" << t << ", " << o << "] = " << got << ", expected " << want
                      << " (int8 bound " << bound << ", magnitude " << mag << ")";
        ++failures;
      }
    }
  }
}

TEST(LinearQ8, BatchWithinInt8ErrorOfReference) {
  std::mt19937 rng(12);
  const DType dtypes[3] = {DType::BF16, DType::F16, DType::F32};
  struct Shape {
    int64_t out, in, n;
  };
  const Shape shapes[] = {{1, 64, 2},      {7, 128, 7},   {65, 640, 64},
                          {333, 192, 2},   {37, 2560, 7}, {19, 10240, 3},
                          {131, 576, 513}, {9, 1152, 64}, {70, 4096, 13}};
  for_each_target([&] {
    for_each_q8_kernel([&] {
      int c = 0;
      for (const Shape& s : shapes) {
        for (DType dt : dtypes) {
          SCOPED_TRACE(dtype_name(dt));
          TestWeight t = make_quantized(s.out, s.in, dt, c % 2, rng);
          const std::vector<float> x = randn(s.n * s.in, rng), b = randn(s.out, rng);
          check_linear_q8_batch(t.w, s.n, x, c % 2 ? b.data() : nullptr, (c / 2) % 2, 1.0);
          ++c;
        }
      }
    });
  });
}

TEST(LinearQ8, BatchModelShapesAndThreadCounts) {
  std::mt19937 rng(13);
  TestWeight gate = make_quantized(1030, 2560, DType::BF16, 1, rng);
  TestWeight down = make_quantized(257, 10240, DType::F16, 0, rng);
  const std::vector<float> xg = randn(37 * 2560, rng), xd = randn(9 * 10240, rng);
  const std::vector<float> b = randn(1030, rng);
  for (int threads : {1, 2, 3}) {
    SCOPED_TRACE("threads=" + std::to_string(threads));
    ScopedThreads pool(threads);
    check_linear_q8_batch(gate.w, 37, xg, b.data(), 1, 1.0);
    check_linear_q8_batch(down.w, 9, xd, nullptr, 0, 1.0);
  }
}

TEST(LinearQ8, BatchExactWhenActivationsAreInt8) {
  std::mt19937 rng(14);
  std::uniform_int_distribution<int> dist(-127, 127);
  for_each_target([&] {
    for_each_q8_kernel([&] {
      for (int64_t n : {2, 7, 64}) {
        for (int64_t in : {64, 576, 2560}) {
          TestWeight t = make_quantized(77, in, DType::BF16, 1, rng);
          std::vector<float> x(n * in);
          for (int64_t i = 0; i < n * in; ++i) {
            x[i] = i % 64 == 5 ? 127.0f : static_cast<float>(dist(rng));
          }
          check_linear_q8_batch(t.w, n, x, nullptr, 0, 0.0);
        }
      }
    });
  });
}

// ops::linear_many is the same arithmetic as one linear (or linear_q8) per output: the fused
// one-row pass over q/k/v-like weights gives bitwise the same values, on every target and thread
// count, and a float weight among them (no int8 path) falls back to separate calls.
TEST(LinearMany, SameValuesAsSeparateLinears) {
  std::mt19937 rng(15);
  TestWeight q = make_quantized(2048, 2560, DType::BF16, 1, rng);
  TestWeight k = make_quantized(1024, 2560, DType::F16, 0, rng);
  TestWeight v = make_quantized(36, 2560, DType::BF16, 0, rng);
  TestWeight f = make_float(40, 2560, DType::BF16, 0, rng);
  const std::vector<float> bias = randn(2048, rng);
  for (int64_t n : {1, 3}) {
    const std::vector<float> x = randn(n * 2560, rng);
    for (ops::Activations act : {ops::Activations::kInt8, ops::Activations::kF32}) {
      for (bool with_float : {false, true}) {
        const std::vector<const TestWeight*> ws = {&q, &k, with_float ? &f : &v};
        std::vector<std::vector<float>> got(3);
        for (size_t j = 0; j < 3; ++j) got[j].resize(n * ws[j]->w.out);
        for (int threads : {1, 2, 3}) {
          ScopedThreads pool(threads);
          for_each_target([&] {
            for (size_t j = 0; j < 3; ++j) std::fill(got[j].begin(), got[j].end(), std::nanf(""));
            const ops::LinearOut outs[3] = {{&ws[0]->w, got[0].data(), bias.data()},
                                            {&ws[1]->w, got[1].data()},
                                            {&ws[2]->w, got[2].data()}};
            ops::linear_many(outs, x.data(), n, act);
            // Against separate calls on the same target and thread count.
            for (size_t j = 0; j < 3; ++j) {
              std::vector<float> sep(got[j].size());
              const float* b = j == 0 ? bias.data() : nullptr;
              if (act == ops::Activations::kInt8) {
                cpu::linear_q8(ws[j]->w, x.data(), n, sep.data(), b);
              } else {
                ops::linear_many({{&ws[j]->w, sep.data(), b}}, x.data(), n, ops::Activations::kF32);
              }
              EXPECT_EQ(got[j], sep)
                  << "output " << j << " n=" << n << " threads=" << threads
                  << " int8=" << (act == ops::Activations::kInt8) << " float=" << with_float;
            }
          });
        }
      }
    }
  }
}

// ---------------------------------------------------------------- batch invariance
//
// Each row of a linear's or attention's result is computed in one fixed order whatever the batch:
// row r of a batch of n is bitwise the one-row (decode) result of that row, whatever n, the
// thread count and the rows beside it. So a request's tokens do not depend on how its prompt was
// chunked, on the prompt cache, or on which sequences share a batch.

// Row r of ops::linear_many (f32 or int8 activations) over any n >= 2 rows == that row in a batch
// of two, bitwise. The one-row (decode) kernels sum in another order: one order for both measured
// 30 % slower decode on this project's machine (docs/BENCHMARKS.md), so n = 1 makes no such
// promise.
void check_rows_invariant(const Weight& w, ops::Activations act, const std::vector<float>& x,
                          const std::vector<float>& bias, const std::vector<int64_t>& ns) {
  const bool with_bias = !bias.empty(), int8 = act == ops::Activations::kInt8;
  const int64_t n_max = static_cast<int64_t>(x.size()) / w.in;
  auto run = [&](const float* xr, int64_t n, float* y) {
    ops::linear_many({{&w, y, with_bias ? bias.data() : nullptr}}, xr, n, act);
  };
  std::vector<float> one(n_max * w.out);  // every row as the first of a pair
  std::vector<float> pair(2 * w.in), pair_y(2 * w.out);
  for (int64_t t = 0; t < n_max; ++t) {
    std::copy(x.begin() + t * w.in, x.begin() + (t + 1) * w.in, pair.begin());
    const int64_t other = (t * 7 + 3) % n_max;
    std::copy(x.begin() + other * w.in, x.begin() + (other + 1) * w.in, pair.begin() + w.in);
    run(pair.data(), 2, pair_y.data());
    std::copy(pair_y.begin(), pair_y.begin() + w.out, one.begin() + t * w.out);
  }
  for (int64_t n : ns) {
    // Rows [first, first + n): a batch that does not start at row 0 has other neighbours.
    for (int64_t first : {int64_t{0}, n_max - n}) {
      std::vector<float> y(n * w.out, std::nanf(""));
      run(x.data() + first * w.in, n, y.data());
      for (int64_t t = 0; t < n; ++t) {
        ASSERT_EQ(std::memcmp(y.data() + t * w.out, one.data() + (first + t) * w.out,
                              w.out * sizeof(float)),
                  0)
            << "row " << t << " of a batch of " << n << " (from row " << first << "), out=" << w.out
            << " in=" << w.in << " int8=" << int8 << " bias=" << with_bias;
      }
    }
  }
}

// Shapes: K within one panel, K with a partial last panel (int8 panels are 2048 inputs, f32
// ones 256), outputs not a multiple of any panel width; float weights have no int8 path.
TEST(BatchInvariance, LinearRowsEqualPairResults) {
  std::mt19937 rng(21);
  std::vector<TestWeight> ws;
  ws.push_back(make_quantized(37, 192, DType::BF16, 1, rng));
  ws.push_back(make_quantized(70, 2624, DType::F16, 0, rng));
  ws.push_back(make_quantized(33, 4160, DType::BF16, 0, rng));
  ws.push_back(make_float(19, 200, DType::BF16, 1, rng));
  for_each_pool_and_target([&](int) {
    for_each_q8_kernel([&] {
      for (const TestWeight& t : ws) {
        // 256 rows (several token blocks of both kernels) on the smallest weight only: the
        // emulated aarch64 CI runs this on every target.
        const bool small = t.w.in < 256;
        const std::vector<int64_t> ns = small ? std::vector<int64_t>{2, 3, 7, 16, 65, 256}
                                              : std::vector<int64_t>{2, 3, 7, 16, 65};
        const std::vector<float> x = randn((small ? 256 : 65) * t.w.in, rng);
        const std::vector<float> bias = randn(t.w.out, rng);
        for (ops::Activations act : {ops::Activations::kInt8, ops::Activations::kF32}) {
          check_rows_invariant(t.w, act, x, {}, ns);
          check_rows_invariant(t.w, act, x, bias, {5});
        }
      }
    });
  });
}

// Quantized weights for the bitwise kernel comparisons: outputs of full and of last partial
// panels, fewer than one 16-row block of the vertical kernel, K within one panel chunk and past
// it, an odd group count (the unpaired last group of the VNNI layout), each scale dtype; and
// with large_out > 0 a large_out x 2560 weight: several row blocks on the thread pool, the last
// panel partial over more than 16 outputs.
std::vector<TestWeight> few_row_weights(std::mt19937& rng, int64_t large_out = 0) {
  std::vector<TestWeight> ws;
  ws.push_back(make_quantized(9, 128, DType::F16, 1, rng));
  ws.push_back(make_quantized(37, 192, DType::BF16, 1, rng));
  ws.push_back(make_quantized(70, 2624, DType::F16, 0, rng));
  ws.push_back(make_quantized(45, 4160, DType::BF16, 0, rng));
  ws.push_back(make_quantized(300, 576, DType::F32, 1, rng));
  if (large_out > 0) ws.push_back(make_quantized(large_out, 2560, DType::BF16, 1, rng));
  return ws;
}

// The n rows [n, w.out] of got equal want's, bit for bit, row by row (the first differing row
// is reported).
void expect_rows_bitwise(const std::vector<float>& got, const std::vector<float>& want,
                         const Weight& w, int64_t n, const float* b) {
  for (int64_t r = 0; r < n; ++r)
    ASSERT_EQ(std::memcmp(got.data() + r * w.out, want.data() + r * w.out, w.out * sizeof(float)),
              0)
        << "row " << r << " of " << n << ", out=" << w.out << " in=" << w.in
        << " bias=" << (b != nullptr);
}

// linear_q8's n rows of x through w (whatever path it takes) equal the panel kernel's, bit for
// bit, row by row.
void expect_rows_of_the_panel_kernel(const Weight& w, const float* x, int64_t n, const float* b) {
  std::vector<float> got(n * w.out, std::nanf("")), want(n * w.out, std::nanf(""));
  cpu::linear_q8(w, x, n, got.data(), b);
  cpu::linear_q8_gemm(w, x, n, want.data(), b);
  expect_rows_bitwise(got, want, w, n, b);
}

// The few-row int8 kernel (2 <= n <= linear_q8_few_rows_max()) against the panel kernel it
// stands in for, bitwise, row by row, with and without bias.
TEST(BatchInvariance, FewRowKernelEqualsPanelKernelBitwise) {
  std::mt19937 rng(23);
  const std::vector<TestWeight> ws = few_row_weights(rng, 1050);
  std::string ran;
  for_each_pool_and_target([&](int threads) {
    const int64_t max_rows = cpu::linear_q8_few_rows_max();
    if (threads == 1 && max_rows > 0)
      ran += std::string(ran.empty() ? "" : " ") + cpu::target_name();
    for_each_q8_kernel([&] {
      for (const TestWeight& t : ws) {
        const std::vector<float> x = randn(16 * t.w.in, rng), bias = randn(t.w.out, rng);
        for (int64_t n = 2; n <= std::max<int64_t>(max_rows, 4); ++n) {
          for (const float* b : {static_cast<const float*>(nullptr), bias.data()})
            ASSERT_NO_FATAL_FAILURE(expect_rows_of_the_panel_kernel(t.w, x.data(), n, b));
        }
      }
    });
  });
  std::printf("few-row int8 kernel tested on: %s\n",
              ran.empty() ? "(none of these targets)" : ran.c_str());
}

// Every batch path of n = 9..129 rows (the short-prompt kernel up to 128 rows on AVX3_DL,
// panels beyond and elsewhere) against the panel kernel, bitwise, row by row, with and without
// bias: padded row tiles (n not a multiple of 4 or 8), several row blocks on the pool, partial last
// panels, odd group counts and inputs past the first chunk of kQKC.
TEST(BatchInvariance, ShortPromptKernelEqualsPanelKernelBitwise) {
  std::mt19937 rng(25);
  const std::vector<TestWeight> ws = few_row_weights(rng, 1050);
  for_each_pool_and_target([&](int threads) {
    for_each_q8_kernel([&] {
      for (const TestWeight& t : ws) {
        const std::vector<float> x = randn(129 * t.w.in, rng), bias = randn(t.w.out, rng);
        for (int64_t n : {9, 13, 16, 17, 33, 64, 128, 129}) {
          if (n > 64 && threads == 1) continue;  // the limit once, on the pool (CI time)
          for (const float* b : {static_cast<const float*>(nullptr), bias.data()})
            ASSERT_NO_FATAL_FAILURE(expect_rows_of_the_panel_kernel(t.w, x.data(), n, b));
        }
      }
    });
  });
}

// w read from a copy of its nibbles repacked as a load repacks them (cpu::q8_repack), whatever
// q8_repack_gains says of its shape, its mapped nibbles replaced by 0xFF bytes (kept in
// `store`), so that any read of them shows; w itself where the current target has no such layout.
Weight repacked(const Weight& w, std::vector<uint8_t>& store, std::vector<uint32_t>& garbage) {
  store.assign(cpu::q8_repack_bytes(w), 0);
  if (store.empty()) return w;
  cpu::q8_repack(w, store.data());
  garbage.assign(w.out * w.in / 8, 0xFFFFFFFFu);
  Weight r = w;
  r.vq = store.data();
  r.q = garbage.data();
  return r;
}

// A weight repacked as a load repacks it gives the panel kernel's bits over the mapped rows, row
// by row, for every row count: one row (the vertical kernel, in place of the one-row kernel that
// reads the mapped rows), the few-row and short-prompt kernels, and the panels beyond 128 rows
// (packed from the repacked copy); with and without bias; 16-row blocks cut by w.out, halves of
// a 32-output block past it, odd group counts, each scale dtype. The int8 kernels never read
// the mapped nibbles of a repacked weight (they are garbage here). Only AVX3_DL repacks;
// elsewhere the test says it ran nothing.
TEST(BatchInvariance, RepackedWeightEqualsPanelKernelBitwise) {
  std::mt19937 rng(27);
  const std::vector<TestWeight> ws = few_row_weights(rng, 1050);
  std::string ran;
  for_each_pool_and_target([&](int threads) {
    for (const TestWeight& t : ws) {
      std::vector<uint8_t> store;
      std::vector<uint32_t> garbage;
      const Weight r = repacked(t.w, store, garbage);
      if (!r.vq) return;
      if (threads == 1 && &t == &ws[0])
        ran += std::string(ran.empty() ? "" : " ") + cpu::target_name();
      const std::vector<float> x = randn(200 * t.w.in, rng), bias = randn(t.w.out, rng);
      for (int64_t n : {1, 2, 5, 8, 9, 16, 17, 64, 128, 129, 200}) {
        if (n > 64 && threads == 1) continue;  // the panels once, on the pool (CI time)
        for (const float* b : {static_cast<const float*>(nullptr), bias.data()}) {
          std::vector<float> got(n * t.w.out, std::nanf("")), want(n * t.w.out, std::nanf(""));
          cpu::linear_q8(r, x.data(), n, got.data(), b);
          cpu::linear_q8_gemm(t.w, x.data(), n, want.data(), b);
          ASSERT_NO_FATAL_FAILURE(expect_rows_bitwise(got, want, t.w, n, b));
        }
      }
    }
  });
  std::printf("repacked int8 layout tested on: %s\n",
              ran.empty() ? "(none of these targets)" : ran.c_str());
}

// ops::linear_many over int8 weights of one input (q/k/v- and gate/up-like: output widths that
// are and are not multiples of the 16- and 32-output blocks, bias on some) equals each weight
// through linear_q8 alone, bitwise, for n = 1, the few-row range, the short-prompt range (where
// one pass over the pool spans the row blocks of every weight) and past it, on every target and
// int8 kernel. in = 192 (3 groups) runs inline; in = 2112 (33 groups, past the first kQKC
// inputs, where partial panels add their bias) is over kGemvInlineBytes, on the pool. Small
// shapes: the emulated aarch64 CI runs this on every SVE and NEON target.
TEST(BatchInvariance, FusedLinearsEqualSeparateLinearsBitwise) {
  std::mt19937 rng(26);
  struct Case {
    std::vector<TestWeight> ws;
    std::vector<int> threads;
    std::vector<int64_t> ns;
  };
  std::vector<Case> cases(2);
  cases[0].ws.push_back(make_quantized(37, 192, DType::F16, 1, rng));
  cases[0].ws.push_back(make_quantized(9, 192, DType::BF16, 0, rng));
  cases[0].ws.push_back(make_quantized(70, 192, DType::F32, 1, rng));
  cases[0].threads = {1, 3};
  cases[0].ns = {1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 16, 17, 33, 64, 100, 128, 129, 140};
  cases[1].ws.push_back(make_quantized(160, 2112, DType::BF16, 0, rng));
  cases[1].ws.push_back(make_quantized(45, 2112, DType::F16, 1, rng));
  cases[1].ws.push_back(make_quantized(70, 2112, DType::BF16, 0, rng));
  cases[1].threads = {3};
  cases[1].ns = {1, 4, 5, 8, 9, 17, 64, 128, 129};
  constexpr int64_t kGuard = 4;  // floats past each output, which nothing may write
  std::string ran;
  for (const Case& c : cases) {
    const int64_t in = c.ws[0].w.in, n_max = c.ns.back();
    const std::vector<float> x = randn(n_max * in, rng), bias = randn(c.ws[0].w.out, rng);
    const std::vector<float> bias2 = randn(c.ws[2].w.out, rng);
    const float* biases[3] = {bias.data(), nullptr, bias2.data()};
    for (int threads : c.threads) {
      SCOPED_TRACE("threads=" + std::to_string(threads));
      ScopedThreads pool(threads);
      for_each_target([&] {
        if (in == 192 && threads == 1)
          ran += std::string(ran.empty() ? "" : " ") + cpu::target_name();
        for_each_q8_kernel([&] {
          for (int64_t n : c.ns) {
            std::vector<std::vector<float>> got(3), sep(3);
            std::vector<ops::LinearOut> outs;
            for (size_t j = 0; j < 3; ++j) {
              const int64_t size = n * c.ws[j].w.out;
              got[j].assign(size + kGuard, std::nanf(""));
              sep[j].assign(size + kGuard, std::nanf(""));
              outs.push_back({&c.ws[j].w, got[j].data(), biases[j]});
            }
            ops::linear_many(outs, x.data(), n, ops::Activations::kInt8);
            for (size_t j = 0; j < 3; ++j) {
              cpu::linear_q8(c.ws[j].w, x.data(), n, sep[j].data(), biases[j]);
              const size_t bytes = n * c.ws[j].w.out * sizeof(float);
              EXPECT_FALSE(std::isnan(got[j][0]));
              ASSERT_EQ(std::memcmp(got[j].data(), sep[j].data(), bytes), 0)
                  << "output " << j << " n=" << n << " out=" << c.ws[j].w.out << " in=" << in
                  << " bias=" << (biases[j] != nullptr);
              for (int64_t i = 0; i < kGuard; ++i)
                ASSERT_TRUE(std::isnan(got[j][n * c.ws[j].w.out + i]))
                    << "written past output " << j;
            }
          }
        });
      });
    }
  }
  std::printf("fused linears tested on: %s\n", ran.c_str());
}

// The cases of the int8 kernel-variant tests: 1 and 3 threads; each weight with random x (65 rows)
// and bias; n rows of x from 1 to 65; without and with the bias; linear_q8 and linear_q8_gemm.
// check(t, x, n, b, gemm, what), `what` naming the case.
template <typename Check>
void for_each_q8_case(const std::vector<TestWeight>& ws, std::mt19937& rng, const Check& check) {
  for (int threads : {1, 3}) {
    SCOPED_TRACE("threads=" + std::to_string(threads));
    ScopedThreads pool(threads);
    for (const TestWeight& t : ws) {
      const std::vector<float> x = randn(65 * t.w.in, rng), bias = randn(t.w.out, rng);
      for (int64_t n : {1, 2, 3, 5, 8, 9, 16, 65}) {
        for (const float* b : {static_cast<const float*>(nullptr), bias.data()}) {
          for (bool gemm : {false, true}) {
            check(t, x.data(), n, b, gemm,
                  "n=" + std::to_string(n) + " out=" + std::to_string(t.w.out) +
                      " in=" + std::to_string(t.w.in) + " bias=" + std::to_string(b != nullptr) +
                      " gemm=" + std::to_string(gemm));
          }
        }
      }
    }
  }
}

// The AVX2 target's two int8 kernels, vpdpbusd (AVX-VNNI) and pmaddubsw + pmaddwd, give the
// same outputs bit for bit (the same exact int32 sums into the same float chains): one row, few
// rows and panels, odd group counts, partial panels, with and without bias, 1 and 3 threads.
TEST(BatchInvariance, AvxVnniKernelEqualsPmaddubswBitwise) {
  if (!cpu::cpu_has_avx_vnni()) {
    GTEST_SKIP() << "not run: this CPU reports no AVX-VNNI (CPUID leaf 7.1, EAX bit 4), so its "
                    "AVX2 target runs only pmaddubsw + pmaddwd (tested by the other tests)";
  }
  const std::vector<int64_t> targets = hwy::SupportedAndGeneratedTargets();
  if (std::find(targets.begin(), targets.end(), int64_t{HWY_AVX2}) == targets.end())
    GTEST_SKIP() << "not run: the AVX2 target is not built or not supported here";
  std::mt19937 rng(24);
  std::vector<TestWeight> ws = few_row_weights(rng, 1030);
  hwy::SetSupportedTargetsForTest(HWY_AVX2);
  struct Restore {  // also when an assertion below ends the test early
    ~Restore() {
      cpu::set_avx_vnni_enabled(true);
      hwy::SetSupportedTargetsForTest(0);
    }
  } restore;
  ASSERT_STREQ(cpu::target_name(), "AVX2");
  auto run = [](bool avx_vnni, const Weight& w, const float* x, int64_t n, const float* b,
                bool gemm) {
    cpu::set_avx_vnni_enabled(avx_vnni);
    std::vector<float> y(n * w.out, std::nanf(""));
    (gemm ? cpu::linear_q8_gemm : cpu::linear_q8)(w, x, n, y.data(), b);
    return y;
  };
  for_each_q8_case(
      ws, rng,
      [&](const TestWeight& t, const float* x, int64_t n, const float* b, bool gemm,
          const std::string& what) {
        const std::vector<float> vnni = run(true, t.w, x, n, b, gemm);
        const std::vector<float> plain = run(false, t.w, x, n, b, gemm);
        EXPECT_FALSE(std::isnan(vnni[0]));
        ASSERT_EQ(std::memcmp(vnni.data(), plain.data(), vnni.size() * sizeof(float)), 0) << what;
      });
}

// |got - want| <= rel * |want| + abs for every element.
void expect_close(const float* got, const float* want, int64_t n, double rel, double abs,
                  const std::string& what) {
  int failures = 0;
  for (int64_t i = 0; i < n && failures < 5; ++i) {
    if (!(std::fabs(double{got[i]} - want[i]) <= rel * std::fabs(want[i]) + abs)) {
      ADD_FAILURE() << what << "[" << i << "] = " << got[i] << ", expected " << want[i];
      ++failures;
    }
  }
}

// The AVX3 target (Intel Skylake-SP and later without AVX3_DL's VBMI: Cascade Lake, Cooper Lake)
// runs AVX3_DL's 512-bit vpdpbusd one-row and panel kernels where the CPU has AVX512-VNNI, and
// its 256-bit pmaddubsw + pmaddwd ones where not (or turned off). Integer sums are exact, so the
// outputs equal bit for bit: VNNI on and AVX3_DL for every n (the same kernels and float
// chains); VNNI on and off for every n >= 2 and for the panel kernel at any n (each output
// column's chain is the same whatever the panel width). One row with VNNI off sums its groups in
// the 8-lane chains of the 256-bit kernel (a different float order): within f32 rounding there.
TEST(BatchInvariance, Avx512VnniOnAvx3EqualsAvx3DlAndPmaddubswBitwise) {
  if (!cpu::cpu_has_avx512_vnni()) {
    GTEST_SKIP() << "not run: this CPU reports no AVX512-VNNI (CPUID leaf 7, ECX bit 11), so its "
                    "AVX3 target runs only pmaddubsw + pmaddwd (tested by the other tests)";
  }
  const std::vector<int64_t> targets = hwy::SupportedAndGeneratedTargets();
  auto has = [&](int64_t t) {
    return std::find(targets.begin(), targets.end(), t) != targets.end();
  };
  if (!has(HWY_AVX3)) GTEST_SKIP() << "not run: the AVX3 target is not built or not supported here";
  const bool with_dl = has(HWY_AVX3_DL);
  std::mt19937 rng(25);
  std::vector<TestWeight> ws = few_row_weights(rng, 1030);
  ws.push_back(make_quantized(40, 10240, DType::BF16, 0, rng));
  struct Restore {  // also when an assertion below ends the test early
    ~Restore() {
      cpu::set_avx512_vnni_enabled(true);
      hwy::SetSupportedTargetsForTest(0);
    }
  } restore;
  // y of linear_q8 (or linear_q8_gemm) on `target`, with AVX512-VNNI on or off.
  auto run = [](int64_t target, bool vnni, const Weight& w, const float* x, int64_t n,
                const float* b, bool gemm) {
    hwy::SetSupportedTargetsForTest(target);
    cpu::set_avx512_vnni_enabled(vnni);
    EXPECT_STREQ(cpu::target_name(), hwy::TargetName(target));
    EXPECT_STREQ(cpu::linear_q8_kernel_name(), vnni || target == HWY_AVX3_DL
                                                   ? "vpdpbusd 512-bit (AVX512-VNNI)"
                                                   : "pmaddubsw + pmaddwd 256-bit");
    std::vector<float> y(n * w.out, std::nanf(""));
    (gemm ? cpu::linear_q8_gemm : cpu::linear_q8)(w, x, n, y.data(), b);
    return y;
  };
  for_each_q8_case(
      ws, rng,
      [&](const TestWeight& t, const float* x, int64_t n, const float* b, bool gemm,
          const std::string& what) {
        const std::vector<float> on = run(HWY_AVX3, true, t.w, x, n, b, gemm);
        const std::vector<float> off = run(HWY_AVX3, false, t.w, x, n, b, gemm);
        EXPECT_FALSE(std::isnan(on[0]));
        const size_t bytes = on.size() * sizeof(float);
        if (n == 1 && !gemm) {
          expect_close(on.data(), off.data(), t.w.out, 1e-5, 1e-4, "VNNI on/off, " + what);
        } else {
          // With a bias, outputs [lo, hi) are in a full panel of 8 columns, which starts
          // from the bias, and in the last partial one of 32, which adds it after the first
          // chunk of inputs: within rounding there.
          const int64_t out = t.w.out;
          const int64_t lo = b ? out - out % 32 : 0, hi = b ? out - out % 8 : 0;
          for (int64_t r = 0; r < n; ++r) {
            const float *p = on.data() + r * out, *q = off.data() + r * out;
            ASSERT_EQ(std::memcmp(p, q, lo * sizeof(float)), 0) << "VNNI on/off, " << what;
            ASSERT_EQ(std::memcmp(p + hi, q + hi, (out - hi) * sizeof(float)), 0)
                << "VNNI on/off, " << what;
            expect_close(p + lo, q + lo, hi - lo, 1e-5, 1e-5, "VNNI on/off, " + what);
          }
        }
        if (with_dl) {
          const std::vector<float> dl = run(HWY_AVX3_DL, true, t.w, x, n, b, gemm);
          ASSERT_EQ(std::memcmp(on.data(), dl.data(), bytes), 0) << "AVX3_DL, " << what;
        }
      });
  std::printf("AVX3 + AVX512-VNNI (vpdpbusd 512-bit) tested against AVX3 pmaddubsw + pmaddwd%s\n",
              with_dl ? " and AVX3_DL" : " (no AVX3_DL on this CPU)");
}

TEST(Norms, MatchReference) {
  std::mt19937 rng(4);
  for_each_target([&] {
    int c = 0;
    for (int64_t n : {1, 3, 40}) {
      for (int64_t d : {1, 7, 64, 72, 1152, 2560, 2563}) {
        const int off = c++ % 2;
        SCOPED_TRACE("n=" + std::to_string(n) + " d=" + std::to_string(d));
        const std::vector<float> xv = randn(n * d, rng, 2.0f, 0.5f), wv = randn(d, rng),
                                 bv = randn(d, rng);
        Buf<float> x(n * d, off), w(d, off), b(d, off), y(n * d, off);
        std::copy(xv.begin(), xv.end(), x.p);
        std::copy(wv.begin(), wv.end(), w.p);
        std::copy(bv.begin(), bv.end(), b.p);
        std::vector<float> want(n * d);
        ref::rms_norm(x.p, w.p, n, d, 1e-6f, want.data());
        ops::rms_norm(x.p, w.p, n, d, 1e-6f, y.p);
        expect_close(y.p, want.data(), n * d, 1e-5, 1e-6, "rms_norm");
        ops::rms_norm(x.p, w.p, n, d, 1e-6f, x.p);  // in place
        expect_close(x.p, want.data(), n * d, 1e-5, 1e-6, "rms_norm in place");
        std::copy(xv.begin(), xv.end(), x.p);
        ref::layer_norm(x.p, w.p, b.p, n, d, 1e-6f, want.data());
        ops::layer_norm(x.p, w.p, b.p, n, d, 1e-6f, y.p);
        expect_close(y.p, want.data(), n * d, 1e-5, 1e-5, "layer_norm");
        ops::layer_norm(x.p, w.p, b.p, n, d, 1e-6f, x.p);
        expect_close(x.p, want.data(), n * d, 1e-5, 1e-5, "layer_norm in place");
      }
    }
  });
}

TEST(Rope, MatchesReference) {
  std::mt19937 rng(5);
  for_each_target([&] {
    int c = 0;
    for (int head_dim : {2, 8, 64, 72, 256}) {
      for (int n_heads : {1, 3, 8}) {
        for (float base : {10000.0f, 1000000.0f}) {
          const float pos_scale = c % 2 ? 0.125f : 1.0f;
          const int off = c++ % 2;
          const int64_t n = 9;
          // Positions up to 131072 (and 0): angles where f32 arithmetic would drift.
          const int32_t pos[n] = {0, 1, 7, 1023, 4095, 8191, 40000, 131071, 131072};
          const int64_t count = n * n_heads * head_dim;
          const std::vector<float> xv = randn(count, rng);
          Buf<float> x(count, off);
          std::copy(xv.begin(), xv.end(), x.p);
          std::vector<float> want = xv;
          ref::rope(want.data(), n, n_heads, head_dim, pos, base, pos_scale);
          std::vector<float> cs(n * head_dim);
          ops::rope_angles(pos, n, head_dim, base, pos_scale, cs.data());
          ops::rope(x.p, n, n_heads, head_dim, cs.data());
          const int half = head_dim / 2;
          for (int64_t r = 0; r < n * n_heads; ++r) {
            for (int i = 0; i < half; ++i) {
              const int64_t lo = r * head_dim + i, hi = lo + half;
              const double mag = std::fabs(xv[lo]) + std::fabs(xv[hi]);
              ASSERT_NEAR(x.p[lo], want[lo], 1e-6 * mag) << "hd=" << head_dim << " r=" << r;
              ASSERT_NEAR(x.p[hi], want[hi], 1e-6 * mag) << "hd=" << head_dim << " r=" << r;
            }
          }
        }
      }
    }
  });
}

TEST(Gelu, MatchesReference) {
  std::mt19937 rng(6);
  std::vector<float> g = randn(4099, rng, 3.0f);
  // Edges: zero, tiny, the cancellation region of 1 + tanh, saturation, overflow of exp.
  const float special[] = {0.0f,   -0.0f,  1e-30f,  -1e-30f, 1e-8f, -3.0f,  -5.0f, -8.0f, -9.5f,
                           -12.0f, -20.0f, -100.0f, 3.0f,    10.0f, 100.0f, 1e30f, -1e30f};
  std::copy(std::begin(special), std::end(special), g.begin());
  for (int i = 0; i < 200; ++i) g[100 + i] = -12.0f + 0.06f * i;  // dense over [-12, 0]
  const std::vector<float> u = randn(g.size(), rng);
  for_each_target([&] {
    for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{17}, static_cast<int64_t>(g.size())}) {
      for (int off : {0, 1}) {
        Buf<float> a(n, off), b(n, off), out(n, off);
        std::copy(g.begin(), g.begin() + n, a.p);
        std::copy(u.begin(), u.begin() + n, b.p);
        std::vector<float> want(g.begin(), g.begin() + n), want_mul(n);
        ref::gelu_tanh(want.data(), n);
        ref::gelu_tanh_mul(g.data(), u.data(), n, want_mul.data());
        ops::gelu_tanh_mul(a.p, b.p, n, out.p);
        // Below x ~ -9.3 the reference's 1 + tanh rounds to 0 in f64; the kernel keeps the tiny
        // true value (< 1e-15), hence the absolute term.
        expect_close(out.p, want_mul.data(), n, 1e-6, 1e-15, "gelu_tanh_mul");
        ops::gelu_tanh_mul(a.p, b.p, n, a.p);  // aliasing the input
        expect_close(a.p, want_mul.data(), n, 1e-6, 1e-15, "gelu_tanh_mul in place");
        std::copy(g.begin(), g.begin() + n, a.p);
        ops::gelu_tanh(a.p, n);
        expect_close(a.p, want.data(), n, 1e-6, 1e-15, "gelu_tanh");
      }
    }
  });
}

TEST(Add, MatchesReference) {
  std::mt19937 rng(7);
  for_each_target([&] {
    for (int64_t n : {1, 15, 1000, 300001}) {
      const std::vector<float> xv = randn(n, rng), yv = randn(n, rng);
      Buf<float> x(n, 1), y(n, 0);
      std::copy(xv.begin(), xv.end(), x.p);
      std::copy(yv.begin(), yv.end(), y.p);
      std::vector<float> want = xv;
      ref::add(want.data(), yv.data(), n);
      ops::add(x.p, y.p, n);
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(x.p[i], want[i]) << i;
    }
  });
}

// ---------------------------------------------------------------- attention

// Keys and values of one segment, with their storage: [n][n_kv_heads][head_dim] (token-major)
// or [n_kv_heads][n][head_dim] (head-major).
struct TestSegment {
  Buf<float> k{0, 0}, v{0, 0};
  std::vector<uint16_t> k16, v16;  // the same values as F16, for an F16 segment
  std::vector<int32_t> pos, group;
  ops::KvSegment seg;
};

TestSegment make_segment(int64_t n, int n_kv_heads, int head_dim, bool head_major, int offset,
                         std::vector<int32_t> pos, std::vector<int32_t> group, std::mt19937& rng,
                         DType dtype = DType::F32) {
  TestSegment s;
  const int64_t count = n * n_kv_heads * head_dim;
  s.k = Buf<float>(count, offset);
  s.v = Buf<float>(count, offset);
  const std::vector<float> kv = randn(count, rng), vv = randn(count, rng);
  std::copy(kv.begin(), kv.end(), s.k.p);
  std::copy(vv.begin(), vv.end(), s.v.p);
  s.pos = std::move(pos);
  s.group = std::move(group);
  s.seg.k = s.k.p;
  s.seg.pos_stride = head_major ? head_dim : int64_t{n_kv_heads} * head_dim;
  s.seg.head_stride = head_major ? n * head_dim : head_dim;
  // Empty slots hold garbage (NaN here) that must never reach the output.
  for (int64_t j = 0; j < static_cast<int64_t>(s.pos.size()); ++j) {
    if (s.pos[j] >= 0) continue;
    for (int h = 0; h < n_kv_heads; ++h) {
      const int64_t off = j * s.seg.pos_stride + h * s.seg.head_stride;
      std::fill(s.k.p + off, s.k.p + off + head_dim, std::nanf(""));
      std::fill(s.v.p + off, s.v.p + off + head_dim, std::nanf(""));
    }
  }
  s.seg.v = s.v.p;
  if (dtype == DType::F16) {  // k16, v16 hold the f16 encoding (NaN stays NaN)
    s.k16.resize(count);
    s.v16.resize(count);
    from_f32(DType::F16, s.k.p, count, s.k16.data());
    from_f32(DType::F16, s.v.p, count, s.v16.data());
    s.seg.k = s.k16.data();
    s.seg.v = s.v16.data();
    s.seg.dtype = DType::F16;
  }
  s.seg.n = n;
  s.seg.pos = s.pos.empty() ? nullptr : s.pos.data();
  s.seg.group = s.group.empty() ? nullptr : s.group.data();
  return s;
}

std::vector<int32_t> iota(int64_t n, int32_t first) {
  std::vector<int32_t> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = first + static_cast<int32_t>(i);
  return v;
}

struct AttnCase {
  std::string name;
  int64_t n_q;
  int n_heads, n_kv_heads, head_dim;
  std::vector<int32_t> q_pos, q_group;  // empty: null
  std::vector<TestSegment> segs;
  ops::AttentionMask mask;
};

void check_attention(AttnCase& c, std::mt19937& rng, int offset) {
  SCOPED_TRACE(c.name + " offset=" + std::to_string(offset));
  const int64_t count = c.n_q * c.n_heads * c.head_dim;
  const std::vector<float> qv = randn(count, rng);
  Buf<float> q(count, offset), out(count, offset);
  std::copy(qv.begin(), qv.end(), q.p);
  std::vector<ops::KvSegment> kv;
  for (auto& s : c.segs) kv.push_back(s.seg);
  const int32_t* q_pos = c.q_pos.empty() ? nullptr : c.q_pos.data();
  const int32_t* q_group = c.q_group.empty() ? nullptr : c.q_group.data();
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  std::vector<float> want(count);
  ref::attention(q.p, c.n_q, c.n_heads, c.n_kv_heads, c.head_dim, q_pos, q_group, kv, c.mask, scale,
                 want.data());
  std::fill(out.p, out.p + count, std::nanf(""));
  ops::attention(q.p, c.n_q, c.n_heads, c.n_kv_heads, c.head_dim, q_pos, q_group, kv, c.mask, scale,
                 out.p);
  // Outputs are convex combinations of values ~N(0, 1).
  expect_close(out.p, want.data(), count, 0, 2e-5, "attention");
}

std::vector<AttnCase> attention_cases(std::mt19937& rng) {
  std::vector<AttnCase> cases;
  auto add = [&](AttnCase c) { cases.push_back(std::move(c)); };
  {  // Text decode: one query at 299 over 300 cached keys, 8 heads on 4 kv heads of 256.
    AttnCase c{"decode causal", 1, 8, 4, 256, {299}, {}, {}, {}};
    c.segs.push_back(make_segment(300, 4, 256, false, 1, iota(300, 0), {}, rng));
    add(std::move(c));
  }
  {  // Local layer: sliding window of 128, keys in a ring (out of order) with empty slots.
    AttnCase c{"decode window ring", 1, 8, 4, 256, {700}, {}, {}, {true, 128}};
    std::vector<int32_t> pos(256);
    for (int i = 0; i < 256; ++i) pos[i] = i < 200 ? 512 + (i + 57) % 200 : -1;
    pos[3] = 700;
    c.segs.push_back(make_segment(256, 4, 256, true, 0, pos, {}, rng));
    add(std::move(c));
  }
  {  // Query heads per kv head taken in groups of up to four: 3 (one group), 6 (four and two),
     // with head_dim 44 (vectors and a scalar tail) and a partial last block of keys.
    for (int heads : {6, 12}) {
      AttnCase c{"decode gqa " + std::to_string(heads / 2) + " head_dim 44",
                 1,
                 heads,
                 2,
                 44,
                 {149},
                 {},
                 {},
                 {}};
      c.segs.push_back(make_segment(150, 2, 44, true, 1, iota(150, 0), {}, rng));
      add(std::move(c));
    }
  }
  {  // An F16 cache (head-major) before fresh F32 keys: decode, prefill, and a dense pass.
    AttnCase c{"decode f16 cache", 1, 8, 4, 256, {299}, {}, {}, {}};
    c.segs.push_back(make_segment(290, 4, 256, true, 0, iota(290, 0), {}, rng, DType::F16));
    c.segs.push_back(make_segment(10, 4, 256, false, 1, iota(10, 290), {}, rng));
    add(std::move(c));
    AttnCase d{"prefill f16 cache window", 40, 8, 4, 44, iota(40, 100), {}, {}, {true, 16}};
    d.segs.push_back(make_segment(100, 4, 44, true, 1, iota(100, 0), {}, rng, DType::F16));
    d.segs.push_back(make_segment(40, 4, 44, false, 0, iota(40, 100), {}, rng));
    add(std::move(d));
    AttnCase e{"unmasked f16", 150, 16, 16, 72, {}, {}, {}, {false, 0}};
    e.segs.push_back(make_segment(150, 16, 72, false, 1, {}, {}, rng, DType::F16));
    add(std::move(e));
  }
  {  // Long cache: the keys are split over threads and merged.
    AttnCase c{"decode long", 1, 8, 4, 64, {2999}, {}, {}, {}};
    c.segs.push_back(make_segment(3000, 4, 64, false, 0, iota(3000, 0), {}, rng));
    add(std::move(c));
  }
  {  // Prefill: cached keys + fresh keys (two segments), causal; and with a window.
    for (int window : {0, 16}) {
      AttnCase c{"prefill two segments window=" + std::to_string(window),
                 40,
                 8,
                 4,
                 64,
                 iota(40, 100),
                 {},
                 {},
                 {true, window}};
      c.segs.push_back(make_segment(100, 4, 64, true, 0, iota(100, 0), {}, rng));
      c.segs.push_back(make_segment(40, 4, 64, false, 1, iota(40, 100), {}, rng));
      add(std::move(c));
    }
  }
  {  // Image groups: soft tokens see each other both ways, across the window, not later images.
    std::vector<int32_t> grp(90, -1);
    for (int i = 5; i < 70; ++i) grp[i] = 0;
    for (int i = 74; i < 86; ++i) grp[i] = 1;
    for (int window : {0, 8}) {
      AttnCase c{"image groups window=" + std::to_string(window),
                 90,
                 4,
                 2,
                 32,
                 iota(90, 0),
                 grp,
                 {},
                 {true, window}};
      c.segs.push_back(make_segment(90, 2, 32, false, 0, iota(90, 0), grp, rng));
      add(std::move(c));
    }
    // Decode-sized (few queries) with groups: the last two soft tokens of an image.
    AttnCase c{"image groups few queries", 2, 4, 2, 32, {68, 69}, {0, 0}, {}, {true, 0}};
    c.segs.push_back(make_segment(90, 2, 32, false, 0, iota(90, 0), grp, rng));
    add(std::move(c));
  }
  {  // Queries that see nothing (all keys later or empty) output zeros.
    AttnCase c{"nothing visible", 13, 2, 1, 16, iota(13, 0), {}, {}, {true, 0}};
    std::vector<int32_t> pos(70, -1);
    for (int i = 0; i < 8; ++i) pos[i * 3] = 5 + i;
    c.segs.push_back(make_segment(70, 1, 16, false, 1, pos, {}, rng));
    add(std::move(c));
  }
  {  // Vision: no mask at all, 16 heads of 72 (not a multiple of the vector width).
    AttnCase c{"vision", 150, 16, 16, 72, {}, {}, {}, {false, 0}};
    c.segs.push_back(make_segment(150, 16, 72, false, 1, {}, {}, rng));
    add(std::move(c));
    AttnCase d{"vision one query", 1, 16, 16, 72, {}, {}, {}, {false, 0}};
    d.segs.push_back(make_segment(150, 16, 72, false, 0, {}, {}, rng));
    add(std::move(d));
  }
  {  // Dense (no mask) with head_dims that leave a partial vector on wide targets (40, 24, 20
     // on 16 lanes; 20 on 8), grouped heads, and a partial last key block.
    AttnCase c{"unmasked gqa head_dim 40", 70, 4, 2, 40, {}, {}, {}, {false, 0}};
    c.segs.push_back(make_segment(130, 2, 40, false, 1, {}, {}, rng));
    add(std::move(c));
    AttnCase d{"unmasked head_dim 24", 50, 2, 2, 24, {}, {}, {}, {false, 0}};
    d.segs.push_back(make_segment(200, 2, 24, true, 0, {}, {}, rng));
    add(std::move(d));
    AttnCase e{"unmasked head_dim 20", 33, 3, 1, 20, {}, {}, {}, {false, 0}};
    e.segs.push_back(make_segment(101, 1, 20, false, 1, {}, {}, rng));
    add(std::move(e));
  }
  {  // GQA with 4 query heads per kv head, odd head_dim; a segment without positions.
    AttnCase c{"gqa 4 odd head_dim", 20, 8, 2, 36, iota(20, 30), {}, {}, {true, 0}};
    c.segs.push_back(make_segment(30, 2, 36, false, 0, iota(30, 0), {}, rng));
    c.segs.push_back(make_segment(20, 2, 36, true, 1, iota(20, 30), {}, rng));
    c.segs.push_back(make_segment(5, 2, 36, false, 0, {}, {}, rng));
    add(std::move(c));
  }
  {  // More keys than one packed chunk, causal prefill at the end of a long context.
    AttnCase c{"prefill long context", 16, 4, 2, 32, iota(16, 5000), {}, {}, {true, 0}};
    c.segs.push_back(make_segment(5016, 2, 32, false, 0, iota(5016, 0), {}, rng));
    add(std::move(c));
    AttnCase d{"prefill long context window", 16, 4, 2, 32, iota(16, 5000), {}, {}, {true, 1024}};
    d.segs.push_back(make_segment(5016, 2, 32, true, 0, iota(5016, 0), {}, rng));
    add(std::move(d));
  }
  return cases;
}

TEST(Attention, MatchesReference) {
  std::mt19937 rng(8);
  std::vector<AttnCase> cases = attention_cases(rng);
  for_each_target([&] {
    int c = 0;
    for (AttnCase& a : cases) check_attention(a, rng, c++ % 2);
  });
}

TEST(Attention, ThreadCounts) {
  std::mt19937 rng(9);
  std::vector<AttnCase> cases = attention_cases(rng);
  for (int threads : {1, 3}) {
    SCOPED_TRACE("threads=" + std::to_string(threads));
    ScopedThreads pool(threads);
    for (AttnCase& a : cases) check_attention(a, rng, 0);
  }
}

// A model layer's attention over a KV cache, run as one batch of n positions and as n single
// positions: the cache holds positions [0, p) at slot pos % capacity (a ring when capacity is
// below p + n), the batch's fresh keys and values are f32 values already rounded to the cache's
// dtype (as the model stores them), and each decode step appends its position to the cache.
struct CacheCase {
  std::string name;
  int n_heads, n_kv_heads, head_dim;
  int64_t p, n, capacity;
  int window;
  DType dtype;
};

void check_prefill_equals_decode(const CacheCase& c, std::mt19937& rng) {
  SCOPED_TRACE(c.name);
  const int hd = c.head_dim, nkv = c.n_kv_heads, nh = c.n_heads;
  const int64_t total = c.p + c.n, es = dtype_size(c.dtype);
  // Keys and values of every position [total][nkv][hd], rounded to the cache dtype.
  std::vector<float> k = randn(total * nkv * hd, rng), v = randn(total * nkv * hd, rng);
  std::vector<uint8_t> tmp(k.size() * es);
  for (std::vector<float>* x : {&k, &v}) {
    from_f32(c.dtype, x->data(), x->size(), tmp.data());
    to_f32(c.dtype, tmp.data(), x->size(), x->data());
  }
  const std::vector<float> q = randn(c.n * nh * hd, rng);
  const std::vector<int32_t> q_pos = iota(c.n, static_cast<int32_t>(c.p));
  // The cache [nkv][capacity][hd] with its positions.
  std::vector<uint8_t> ck(nkv * c.capacity * hd * es), cv(ck.size());
  std::vector<int32_t> cpos(c.capacity, -1);
  auto store = [&](int64_t pos) {
    const int64_t slot = pos % c.capacity;
    for (int h = 0; h < nkv; ++h) {
      const size_t at = (h * c.capacity + slot) * hd * es;
      from_f32(c.dtype, k.data() + (pos * nkv + h) * hd, hd, ck.data() + at);
      from_f32(c.dtype, v.data() + (pos * nkv + h) * hd, hd, cv.data() + at);
    }
    cpos[slot] = static_cast<int32_t>(pos);
  };
  for (int64_t pos = 0; pos < c.p; ++pos) store(pos);
  auto run = [&](int64_t first, int64_t n, float* out) {
    std::vector<ops::KvSegment> segs;
    const int64_t n_cached = std::min(first, c.capacity);
    if (n_cached > 0) {
      segs.push_back(
          {ck.data(), cv.data(), n_cached, hd, c.capacity * hd, cpos.data(), nullptr, c.dtype});
    }
    segs.push_back({k.data() + first * nkv * hd, v.data() + first * nkv * hd, n, int64_t{nkv} * hd,
                    hd, q_pos.data() + (first - c.p), nullptr, DType::F32});
    ops::attention(q.data() + (first - c.p) * nh * hd, n, nh, nkv, hd, q_pos.data() + (first - c.p),
                   nullptr, segs, {true, c.window}, 1.0f / std::sqrt(static_cast<float>(hd)), out);
  };
  const int64_t row = int64_t{nh} * hd;
  std::vector<float> batch(c.n * row, std::nanf(""));
  run(c.p, c.n, batch.data());
  for (int64_t i = 0; i < c.n; ++i) {
    std::vector<float> one(row, std::nanf(""));
    run(c.p + i, 1, one.data());
    ASSERT_EQ(std::memcmp(one.data(), batch.data() + i * row, row * sizeof(float)), 0)
        << "position " << c.p + i << " decoded alone differs from row " << i << " of the batch";
    store(c.p + i);
  }
}

TEST(BatchInvariance, AttentionPrefillRowsEqualDecodeSteps) {
  std::mt19937 rng(23);
  const std::vector<CacheCase> cases = {
      {"global f16 gemma heads", 8, 4, 256, 100, 40, 4096, 0, DType::F16},
      {"global f32 few queries", 8, 4, 256, 130, 2, 4096, 0, DType::F32},
      {"ring f16 window", 4, 2, 64, 150, 40, 24, 16, DType::F16},
      {"ring f32 window long chunk", 4, 2, 64, 50, 70, 20, 12, DType::F32},
      {"empty cache f16", 4, 2, 64, 0, 30, 4096, 0, DType::F16},
      {"gqa 3 head_dim 44", 6, 2, 44, 70, 9, 4096, 0, DType::F32},
      {"long context f16", 8, 4, 64, 3000, 16, 4096, 0, DType::F16},
  };
  for_each_pool_and_target([&](int) {
    for (const CacheCase& c : cases) check_prefill_equals_decode(c, rng);
  });
}

}  // namespace
}  // namespace gp
