// Kernel micro-benchmarks at the model's shapes, with the rates that compare to the machine's
// roofline: GB/s of weights read for decode (vs. the memory bandwidth probe), GFLOP/s for
// prefill, vision and attention.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "base/sys.h"
#include "base/thread_pool.h"
#include "hwy/targets.h"
#include "kernels/cpu/bandwidth.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/linear_q8.h"
#include "kernels/ops.h"
#include "tensor/dtype.h"
#include "tensor/weight.h"

namespace gp {
namespace {

// Random 4-bit weights with BF16 scales: the values do not matter for speed, only the layout.
struct QuantWeight {
  std::vector<uint32_t> q;
  std::vector<uint16_t> scales, biases;
  Weight w;
  QuantWeight(int64_t out, int64_t in, uint32_t seed)
      : q(out * in / 8), scales(out * in / 64), biases(out * in / 64) {
    std::mt19937 rng(seed);
    for (auto& v : q) v = rng();
    for (size_t i = 0; i < scales.size(); ++i) {
      scales[i] = f32_to_bf16(0.001f * (1 + i % 7));
      biases[i] = f32_to_bf16(-0.008f * (1 + i % 5));
    }
    w.out = out;
    w.in = in;
    w.quantized = true;
    w.q = q.data();
    w.scales = scales.data();
    w.biases = biases.data();
    w.scale_dtype = DType::BF16;
  }
};

struct FloatWeight {
  std::vector<uint16_t> data;
  Weight w;
  FloatWeight(int64_t out, int64_t in) : data(out * in) {
    for (size_t i = 0; i < data.size(); ++i) data[i] = f32_to_bf16(0.01f * (i % 13) - 0.06f);
    w.out = out;
    w.in = in;
    w.data = data.data();
    w.dtype = DType::BF16;
  }
};

std::vector<float> activations(int64_t n) {
  std::vector<float> x(n);
  std::mt19937 rng(7);
  std::normal_distribution<float> dist;
  for (auto& v : x) v = dist(rng);
  return x;
}

// Sum of a 1 GiB buffer over all threads (the probe gemma-bench uses too): the bandwidth a
// streaming kernel can hope for.
void BM_MemoryBandwidth(benchmark::State& state) {
  double gbs = 0;
  for (auto _ : state) gbs = cpu::read_bandwidth_gbs(size_t{1} << 30, 1);
  state.counters["GB/s"] = gbs;
}
BENCHMARK(BM_MemoryBandwidth)->UseRealTime()->Unit(benchmark::kMillisecond);

// One token through a quantized linear (q8: cpu::linear_q8, int8 activations). Unless hot, copies
// of the weight are cycled until they exceed any cache (256 MB), as in a real decode step where
// each layer's weights come from DRAM.
void BM_LinearDecode(benchmark::State& state) {
  const int64_t in = state.range(0), out = state.range(1);
  const bool q8 = state.range(2) != 0, hot = state.range(3) != 0;
  const size_t bytes = QuantWeight(1, in, 0).w.bytes() * out;
  const size_t copies = hot ? 1 : std::max<size_t>(1, (size_t{256} << 20) / bytes + 1);
  std::vector<QuantWeight> ws;
  for (size_t c = 0; c < copies; ++c) ws.emplace_back(out, in, static_cast<uint32_t>(c));
  const std::vector<float> x = activations(in);
  std::vector<float> y(out);
  size_t c = 0;
  for (auto _ : state) {
    if (q8) {
      cpu::linear_q8(ws[c].w, x.data(), 1, y.data());
    } else {
      ops::linear_many({{&ws[c].w, y.data()}}, x.data(), 1, ops::Activations::kF32);
    }
    c = (c + 1) % copies;
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * ws[0].w.bytes()));
}
BENCHMARK(BM_LinearDecode)
    ->ArgNames({"in", "out", "q8", "hot"})
    ->ArgsProduct({{2560}, {10240, 2048, 262208}, {0, 1}, {0}})
    ->Args({10240, 2560, 0, 0})
    ->Args({10240, 2560, 1, 0})
    // Weights resident in L2 (hot): the compute rate of the kernel, without DRAM.
    ->Args({2560, 256, 0, 1})
    ->Args({2560, 256, 1, 1})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

void set_flops(benchmark::State& state, double flops_per_iter) {
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops_per_iter * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}

// n activation rows through a quantized (or BF16 float) linear.
void BM_LinearBatch(benchmark::State& state) {
  const int64_t n = state.range(0), in = state.range(1), out = state.range(2);
  const bool quantized = state.range(3) != 0;
  QuantWeight qw(quantized ? out : 1, in, 1);
  FloatWeight fw(quantized ? 1 : out, in);
  const Weight& w = quantized ? qw.w : fw.w;
  const std::vector<float> x = activations(n * in);
  std::vector<float> y(n * out);
  for (auto _ : state) {
    ops::linear_many({{&w, y.data()}}, x.data(), n, ops::Activations::kF32);
    benchmark::DoNotOptimize(y.data());
  }
  set_flops(state, 2.0 * n * in * out);
}
BENCHMARK(BM_LinearBatch)
    ->ArgNames({"n", "in", "out", "q4"})
    ->Args({512, 2560, 10240, 1})  // prefill gate/up
    ->Args({512, 10240, 2560, 1})  // prefill down
    ->Args({4096, 1152, 4352, 1})  // vision fc1 (mobile)
    ->Args({4096, 4304, 1152, 0})  // vision fc2, BF16 float (original)
    ->Args({8, 2560, 10240, 1})    // a few rows
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// Prefill through a quantized linear: the f32 path (q8 = 0, f32 activations, as BM_LinearBatch)
// next to the int8-activation path (q8 = 1, cpu::linear_q8), same weights and rows.
void BM_LinearPrefillQ8(benchmark::State& state) {
  const int64_t n = state.range(0), in = state.range(1), out = state.range(2);
  const bool q8 = state.range(3) != 0;
  QuantWeight qw(out, in, 1);
  const std::vector<float> x = activations(n * in);
  std::vector<float> y(n * out);
  for (auto _ : state) {
    if (q8) {
      cpu::linear_q8(qw.w, x.data(), n, y.data());
    } else {
      ops::linear_many({{&qw.w, y.data()}}, x.data(), n, ops::Activations::kF32);
    }
    benchmark::DoNotOptimize(y.data());
  }
  set_flops(state, 2.0 * n * in * out);
}
BENCHMARK(BM_LinearPrefillQ8)
    ->ArgNames({"n", "in", "out", "q8"})
    ->ArgsProduct({{512}, {2560}, {10240}, {0, 1, 2}})  // prefill gate/up
    ->ArgsProduct({{512}, {10240}, {2560}, {0, 1, 2}})  // prefill down
    ->ArgsProduct({{8}, {2560}, {10240}, {0, 1, 2}})    // a few rows
    ->ArgsProduct({{4096}, {1152}, {4352}, {0, 1, 2}})  // vision fc1, 896 px
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// Attention: n_q queries over n_k keys; K/V token-major [n_k][n_kv_heads][head_dim] or
// head-major [n_kv_heads][n_k][head_dim] (as the KV cache stores them), f32 or f16 (the
// default KV cache).
void BM_Attention(benchmark::State& state) {
  const int64_t n_q = state.range(0), n_k = state.range(1);
  const int n_heads = static_cast<int>(state.range(2)), n_kv = static_cast<int>(state.range(3));
  const int hd = static_cast<int>(state.range(4));
  const bool causal = state.range(5) != 0, head_major = state.range(6) != 0;
  const DType dtype = state.range(7) ? DType::F16 : DType::F32;
  const std::vector<float> q = activations(n_q * n_heads * hd);
  const std::vector<float> k = activations(n_k * n_kv * hd), v = activations(n_k * n_kv * hd);
  std::vector<uint8_t> k_stored(k.size() * dtype_size(dtype)), v_stored(k_stored.size());
  from_f32(dtype, k.data(), k.size(), k_stored.data());
  from_f32(dtype, v.data(), v.size(), v_stored.data());
  std::vector<float> out(q.size());
  std::vector<int32_t> q_pos(n_q), k_pos(n_k);
  for (int64_t i = 0; i < n_k; ++i) k_pos[i] = static_cast<int32_t>(i);
  for (int64_t i = 0; i < n_q; ++i) q_pos[i] = static_cast<int32_t>(n_k - n_q + i);
  ops::KvSegment seg{k_stored.data(),
                     v_stored.data(),
                     n_k,
                     head_major ? hd : int64_t{n_kv} * hd,
                     head_major ? n_k * hd : hd,
                     causal ? k_pos.data() : nullptr,
                     nullptr,
                     dtype};
  for (auto _ : state) {
    ops::attention(q.data(), n_q, n_heads, n_kv, hd, causal ? q_pos.data() : nullptr, nullptr,
                   {&seg, 1}, ops::AttentionMask{causal, 0}, 0.0625f, out.data());
    benchmark::DoNotOptimize(out.data());
  }
  // Q·Kᵀ and P·V over the visible pairs.
  double pairs = static_cast<double>(n_q) * n_k;
  if (causal) pairs -= static_cast<double>(n_q) * (n_q - 1) / 2;
  set_flops(state, 4.0 * pairs * n_heads * hd);
  // K and V read once: the roofline of decode.
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * 2 * k_stored.size()));
}
BENCHMARK(BM_Attention)
    ->ArgNames({"n_q", "n_k", "heads", "kv_heads", "head_dim", "causal", "head_major", "f16"})
    ->Args({4096, 4096, 16, 16, 72, 0, 0, 0})  // vision, original resolution
    ->Args({2304, 2304, 16, 16, 72, 0, 0, 0})  // vision, mobile resolution
    ->Args({512, 512, 8, 4, 256, 1, 0, 0})     // text prefill
    ->Args({512, 512, 8, 4, 256, 1, 1, 1})     // text prefill over an f16 cache
    ->Args({1, 64, 8, 4, 256, 1, 1, 1})        // text decode, 64 tokens in, f16 cache
    ->Args({1, 4096, 8, 4, 256, 1, 1, 0})      // decode, 4K context, f32 [kv_heads][n][hd]
    ->Args({1, 4096, 8, 4, 256, 1, 1, 1})      // the same, f16 cache (the default)
    ->Args({1, 4096, 8, 4, 256, 1, 0, 0})      // f32, token-major [n][kv_heads][hd]
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

void BM_RmsNormPrefill(benchmark::State& state) {
  const std::vector<float> x = activations(512 * 2560), w = activations(2560);
  std::vector<float> y(x.size());
  for (auto _ : state) {
    ops::rms_norm(x.data(), w.data(), 512, 2560, 1e-6f, y.data());
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * x.size() * 8));
}
BENCHMARK(BM_RmsNormPrefill)->UseRealTime()->Unit(benchmark::kMicrosecond);

void BM_GeluTanhMulPrefill(benchmark::State& state) {
  const std::vector<float> g = activations(512 * 10240), u = activations(512 * 10240);
  std::vector<float> out(g.size());
  for (auto _ : state) {
    ops::gelu_tanh_mul(g.data(), u.data(), static_cast<int64_t>(g.size()), out.data());
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * g.size()));
}
BENCHMARK(BM_GeluTanhMulPrefill)->UseRealTime()->Unit(benchmark::kMicrosecond);

void BM_RopePrefill(benchmark::State& state) {
  std::vector<float> x = activations(512 * 8 * 256);
  std::vector<int32_t> pos(512);
  for (int i = 0; i < 512; ++i) pos[i] = 1000 + i;
  std::vector<float> cs(512 * 256);
  ops::rope_angles(pos.data(), 512, 256, 1e6f, 0.125f, cs.data());  // once per batch, all layers
  for (auto _ : state) {
    ops::rope(x.data(), 512, 8, 256, cs.data());
    benchmark::DoNotOptimize(x.data());
  }
}
BENCHMARK(BM_RopePrefill)->UseRealTime()->Unit(benchmark::kMicrosecond);

// The int8-activation linear on the best SIMD target of this CPU (simd = 0: AVX3_DL's vpdpbusd
// where the CPU has AVX-512 VNNI), on forced AVX2 with pmaddubsw (simd = 1) and on forced AVX2
// with AVX-VNNI's 256-bit vpdpbusd (simd = 2, where the CPU has it), on forced AVX3 with
// pmaddubsw (simd = 3) and on forced AVX3 with AVX512-VNNI's 512-bit vpdpbusd (simd = 4, where
// the CPU has it: Cascade Lake's kernels), same weights and rows, for decode (n = 1, weights
// cycled through 256 MB as BM_LinearDecode) and prefill. Run with
// --benchmark_enable_random_interleaving=true --benchmark_repetitions=N so that they alternate
// on a busy machine.
void BM_LinearQ8Target(benchmark::State& state) {
  const int64_t n = state.range(0), in = state.range(1), out = state.range(2);
  const int64_t simd = state.range(3);
  const int64_t target = simd >= 3 ? HWY_AVX3 : simd >= 1 ? HWY_AVX2 : 0;
  if (target != 0 && (hwy::SupportedTargets() & target) == 0) {
    state.SkipWithError("this CPU does not run the forced target");
    return;
  }
  if (simd == 2 && !cpu::cpu_has_avx_vnni()) {
    state.SkipWithError("this CPU has no AVX-VNNI");
    return;
  }
  if (simd == 4 && !cpu::cpu_has_avx512_vnni()) {
    state.SkipWithError("this CPU has no AVX512-VNNI");
    return;
  }
  const size_t bytes = QuantWeight(1, in, 0).w.bytes() * out;
  // Decode and batched decode (a few rows) read the weights from DRAM, as in a model.
  const size_t copies = n > 16 ? 1 : std::max<size_t>(1, (size_t{256} << 20) / bytes + 1);
  std::vector<QuantWeight> ws;
  for (size_t c = 0; c < copies; ++c) ws.emplace_back(out, in, static_cast<uint32_t>(c));
  const std::vector<float> x = activations(n * in);
  std::vector<float> y(n * out);
  hwy::SetSupportedTargetsForTest(target);
  cpu::set_avx_vnni_enabled(simd != 1);
  cpu::set_avx512_vnni_enabled(simd != 3);
  size_t c = 0;
  for (auto _ : state) {
    cpu::linear_q8(ws[c].w, x.data(), n, y.data());
    c = (c + 1) % copies;
    benchmark::DoNotOptimize(y.data());
  }
  cpu::set_avx_vnni_enabled(true);
  cpu::set_avx512_vnni_enabled(true);
  hwy::SetSupportedTargetsForTest(0);
  set_flops(state, 2.0 * n * in * out);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * ws[0].w.bytes()));
}
BENCHMARK(BM_LinearQ8Target)
    ->ArgNames({"n", "in", "out", "simd"})
    ->ArgsProduct({{1}, {2560}, {10240}, {0, 1, 2, 3, 4}})
    ->ArgsProduct({{1}, {10240}, {2560}, {0, 1, 2, 3, 4}})
    ->ArgsProduct({{2, 4, 8}, {2560}, {10240}, {0, 1, 2, 3, 4}})
    ->ArgsProduct({{2, 4, 8}, {10240}, {2560}, {0, 1, 2, 3, 4}})
    ->ArgsProduct({{16, 64, 512}, {2560}, {10240}, {0, 1, 2, 3, 4}})
    ->ArgsProduct({{16, 512}, {10240}, {2560}, {0, 1, 2, 3, 4}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// linear_q8 (panels: 0) against the panel kernel (linear_q8_gemm, panels: 1) on the best target:
// on AVX3_DL linear_q8 takes the short-prompt kernel up to 32 rows, the same outputs bit for
// bit, so the pair is an in-process A/B of the two paths. The weights come from DRAM, as in a
// model.
void BM_LinearQ8Panels(benchmark::State& state) {
  const int64_t n = state.range(0), in = state.range(1), out = state.range(2);
  const bool panels = state.range(3) != 0;
  const size_t bytes = QuantWeight(1, in, 0).w.bytes() * out;
  const size_t copies = std::max<size_t>(1, (size_t{256} << 20) / bytes + 1);
  std::vector<QuantWeight> ws;
  for (size_t c = 0; c < copies; ++c) ws.emplace_back(out, in, static_cast<uint32_t>(c));
  const std::vector<float> x = activations(n * in);
  std::vector<float> y(n * out);
  size_t c = 0;
  for (auto _ : state) {
    (panels ? cpu::linear_q8_gemm : cpu::linear_q8)(ws[c].w, x.data(), n, y.data(), nullptr);
    c = (c + 1) % copies;
    benchmark::DoNotOptimize(y.data());
  }
  set_flops(state, 2.0 * n * in * out);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * ws[0].w.bytes()));
}
BENCHMARK(BM_LinearQ8Panels)
    ->ArgNames({"n", "in", "out", "panels"})
    ->ArgsProduct({{16, 32, 64, 128}, {2560}, {10240}, {0, 1}})
    ->ArgsProduct({{16, 32, 64, 128}, {10240}, {2560}, {0, 1}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// A short prompt's weights of one input, q/k/v (2560 -> 2048, 1024, 1024; mlp: 0) or gate/up
// (2560 -> 10240 twice; mlp: 1), through ops::linear_many (fused: 1: x quantized once and one
// pass over the pool for all of them) against one linear_q8 per weight (fused: 0), the same
// outputs bit for bit. The weights come from DRAM, as in a model.
void BM_LinearManyFused(benchmark::State& state) {
  const int64_t n = state.range(0), in = 2560;
  const bool mlp = state.range(1) != 0, fused = state.range(2) != 0;
  const std::vector<int64_t> outs =
      mlp ? std::vector<int64_t>{10240, 10240} : std::vector<int64_t>{2048, 1024, 1024};
  size_t bytes = 0;
  for (int64_t out : outs) bytes += QuantWeight(1, in, 0).w.bytes() * out;
  const size_t copies = std::max<size_t>(1, (size_t{256} << 20) / bytes + 1);
  std::vector<std::vector<QuantWeight>> ws(copies);
  std::vector<std::vector<float>> ys;
  for (int64_t out : outs) ys.emplace_back(n * out);
  std::vector<std::vector<ops::LinearOut>> sets(copies);
  for (size_t c = 0; c < copies; ++c) {
    for (size_t j = 0; j < outs.size(); ++j)
      ws[c].emplace_back(outs[j], in, static_cast<uint32_t>(c * outs.size() + j));
    for (size_t j = 0; j < outs.size(); ++j) sets[c].push_back({&ws[c][j].w, ys[j].data()});
  }
  const std::vector<float> x = activations(n * in);
  size_t c = 0;
  for (auto _ : state) {
    if (fused) {
      ops::linear_many(sets[c], x.data(), n, ops::Activations::kInt8);
    } else {
      for (const ops::LinearOut& o : sets[c]) cpu::linear_q8(*o.w, x.data(), n, o.y);
    }
    c = (c + 1) % copies;
    benchmark::DoNotOptimize(ys[0].data());
  }
  int64_t total_out = 0;
  for (int64_t out : outs) total_out += out;
  set_flops(state, 2.0 * n * in * total_out);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
}
BENCHMARK(BM_LinearManyFused)
    ->ArgNames({"n", "mlp", "fused"})
    ->ArgsProduct({{16, 64}, {0, 1}, {0, 1}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// linear_q8 over the mapped rows (repacked: 0) and over the load's repacked copy (cpu::q8_repack,
// repacked: 1) of the same weights, the same outputs bit for bit: an in-process A/B of the
// layouts (issue 16 item 3), whatever q8_repack_gains says of the shape. The weights come from
// DRAM, as in a model. Where the target has no repacked layout, repacked: 1 is skipped.
void BM_LinearQ8Repack(benchmark::State& state) {
  const int64_t n = state.range(0), in = state.range(1), out = state.range(2);
  const bool repack = state.range(3) != 0;
  const size_t bytes = QuantWeight(1, in, 0).w.bytes() * out;
  const size_t copies = std::max<size_t>(1, (size_t{256} << 20) / bytes + 1);
  std::vector<QuantWeight> ws;
  std::vector<std::vector<uint8_t>> packed(copies);
  for (size_t c = 0; c < copies; ++c) {
    ws.emplace_back(out, in, static_cast<uint32_t>(c));
    if (!repack) continue;
    packed[c].resize(cpu::q8_repack_bytes(ws[c].w));
    if (packed[c].empty()) {
      state.SkipWithError("this target has no repacked int8 layout");
      return;
    }
    cpu::q8_repack(ws[c].w, packed[c].data());
    ws[c].w.vq = packed[c].data();
  }
  const std::vector<float> x = activations(n * in);
  std::vector<float> y(n * out);
  size_t c = 0;
  for (auto _ : state) {
    cpu::linear_q8(ws[c].w, x.data(), n, y.data(), nullptr);
    c = (c + 1) % copies;
    benchmark::DoNotOptimize(y.data());
  }
  set_flops(state, 2.0 * n * in * out);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * ws[0].w.bytes()));
}
BENCHMARK(BM_LinearQ8Repack)
    ->ArgNames({"n", "in", "out", "repacked"})
    ->ArgsProduct({{1, 2, 4, 8, 16, 64, 512}, {2560}, {10240}, {0, 1}})
    ->ArgsProduct({{1, 2, 4, 8, 16, 64, 512}, {10240}, {2560}, {0, 1}})
    ->ArgsProduct({{1, 4, 16, 512}, {2048}, {2560}, {0, 1}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// The repack itself (a load must stay under 1 s warm): cpu::q8_repack of one weight into memory
// written before (as the load's, after its first touch), in bytes of nibbles per second on one
// thread.
void BM_Q8Repack(benchmark::State& state) {
  const int64_t in = state.range(0), out = state.range(1);
  const QuantWeight q(out, in, 0);
  std::vector<uint8_t> packed(cpu::q8_repack_bytes(q.w));
  if (packed.empty()) {
    state.SkipWithError("this target has no repacked int8 layout");
    return;
  }
  for (auto _ : state) {
    cpu::q8_repack(q.w, packed.data());
    benchmark::DoNotOptimize(packed.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * out * in / 2));
}
BENCHMARK(BM_Q8Repack)
    ->ArgNames({"in", "out"})
    ->Args({2560, 10240})
    ->Args({10240, 2560})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace gp

int main(int argc, char** argv) {
  // GP_THREADS=n runs the kernels on n threads (default: all hardware threads).
  if (const char* t = std::getenv("GP_THREADS")) gp::ThreadPool::set_global_threads(std::atoi(t));
  benchmark::Initialize(&argc, argv);
  benchmark::AddCustomContext("simd_target", gp::cpu::target_name());
  benchmark::AddCustomContext("threads", std::to_string(gp::ThreadPool::global().size()));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
