#include "kernels/ref/ref.h"

#include <cmath>
#include <limits>
#include <vector>

#include "tensor/dtype.h"

namespace gp::ref {

void linear(const Weight& w, const float* x, int64_t n, float* y, const float* bias) {
  std::vector<float> row(w.in);
  for (int64_t o = 0; o < w.out; ++o) {
    weight_row(w, o, row.data());
    for (int64_t t = 0; t < n; ++t) {
      double acc = 0;
      for (int64_t i = 0; i < w.in; ++i) acc += static_cast<double>(x[t * w.in + i]) * row[i];
      y[t * w.out + o] = static_cast<float>(acc) + (bias ? bias[o] : 0.0f);
    }
  }
}

void rms_norm(const float* x, const float* w, int64_t n, int64_t d, float eps, float* y) {
  for (int64_t t = 0; t < n; ++t) {
    double ss = 0;
    for (int64_t i = 0; i < d; ++i) ss += static_cast<double>(x[t * d + i]) * x[t * d + i];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / d + eps));
    for (int64_t i = 0; i < d; ++i) y[t * d + i] = x[t * d + i] * inv * (1.0f + w[i]);
  }
}

void layer_norm(const float* x, const float* w, const float* b, int64_t n, int64_t d, float eps,
                float* y) {
  for (int64_t t = 0; t < n; ++t) {
    double mean = 0, var = 0;
    for (int64_t i = 0; i < d; ++i) mean += x[t * d + i];
    mean /= d;
    for (int64_t i = 0; i < d; ++i) var += (x[t * d + i] - mean) * (x[t * d + i] - mean);
    var /= d;
    const double inv = 1.0 / std::sqrt(var + eps);
    for (int64_t i = 0; i < d; ++i)
      y[t * d + i] = static_cast<float>((x[t * d + i] - mean) * inv) * w[i] + b[i];
  }
}

void rope(float* x, int64_t n, int n_heads, int head_dim, const int32_t* pos, float base,
          float pos_scale) {
  const int half = head_dim / 2;
  for (int64_t t = 0; t < n; ++t) {
    const double p = static_cast<double>(pos[t]) * pos_scale;
    for (int i = 0; i < half; ++i) {
      const double inv_freq = std::pow(static_cast<double>(base), -2.0 * i / head_dim);
      const double c = std::cos(p * inv_freq), s = std::sin(p * inv_freq);
      for (int h = 0; h < n_heads; ++h) {
        float* v = x + (t * n_heads + h) * head_dim;
        const double a = v[i], b = v[i + half];
        v[i] = static_cast<float>(a * c - b * s);
        v[i + half] = static_cast<float>(b * c + a * s);
      }
    }
  }
}

static float gelu_tanh_scalar(float v) {
  const double x = v;
  return static_cast<float>(0.5 * x *
                            (1.0 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))));
}

void gelu_tanh_mul(const float* g, const float* u, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = gelu_tanh_scalar(g[i]) * u[i];
}

void gelu_tanh(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = gelu_tanh_scalar(x[i]);
}

void add(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

void attention(const float* q, int64_t n_q, int n_heads, int n_kv_heads, int head_dim,
               const int32_t* q_pos, const int32_t* q_group, std::span<const ops::KvSegment> kv,
               ops::AttentionMask mask, float scale, float* out) {
  const int group = n_heads / n_kv_heads;
  std::vector<double> scores;
  for (int64_t t = 0; t < n_q; ++t) {
    const int32_t qp = q_pos ? q_pos[t] : 0, qg = q_group ? q_group[t] : -1;
    for (int h = 0; h < n_heads; ++h) {
      const float* qv = q + (t * n_heads + h) * head_dim;
      const int kh = h / group;
      scores.clear();
      double max_s = -std::numeric_limits<double>::infinity();
      for (const auto& seg : kv) {
        for (int64_t j = 0; j < seg.n; ++j) {
          const bool ok = !q_pos || !seg.pos ||
                          visible(qp, qg, seg.pos[j], seg.group ? seg.group[j] : -1, mask);
          double s = -std::numeric_limits<double>::infinity();
          if (ok) {
            const int64_t off = j * seg.pos_stride + kh * seg.head_stride;
            double dot = 0;
            for (int i = 0; i < head_dim; ++i)
              dot += static_cast<double>(qv[i]) * load_float(seg.dtype, seg.k, off + i);
            s = dot * scale;
          }
          scores.push_back(s);
          max_s = std::max(max_s, s);
        }
      }
      float* o = out + (t * n_heads + h) * head_dim;
      std::vector<double> acc(head_dim, 0.0);
      double sum = 0;
      size_t idx = 0;
      for (const auto& seg : kv) {
        for (int64_t j = 0; j < seg.n; ++j, ++idx) {
          if (scores[idx] == -std::numeric_limits<double>::infinity()) continue;
          const double p = std::exp(scores[idx] - max_s);
          sum += p;
          const int64_t off = j * seg.pos_stride + kh * seg.head_stride;
          for (int i = 0; i < head_dim; ++i) acc[i] += p * load_float(seg.dtype, seg.v, off + i);
        }
      }
      for (int i = 0; i < head_dim; ++i) o[i] = sum > 0 ? static_cast<float>(acc[i] / sum) : 0.0f;
    }
  }
}

}  // namespace gp::ref
