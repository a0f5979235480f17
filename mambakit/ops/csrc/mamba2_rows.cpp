// Mamba-2's gated, grouped RMSNorm on CPU, one pass over each (position, channel) row instead of
// ~8 PyTorch ops and their saved intermediates:
//   out = RMSNorm_g(y · SiLU(z)) · w      (or RMSNorm_g(y) · w · SiLU(z) when norm_before_gate)
// with RMSNorm_g normalising each group of `group` channels. y and z are read in place at a row
// stride (z is a column slice of in_proj's output).
// mk_rmsnorm_gated_f32: the forward. mk_rmsnorm_gated_bwd_f32: its gradients, recomputing the
//   normalised row instead of keeping it: with o the normalised input (y·SiLU(z), or y), r its
//   group's 1/rms and g = d(out)·w (gated first when norm_before_gate),
//     d o = r·g − o·r³·Σ_group(g·o)/group,   d w = Σ_rows d(out)·o·r,
//   then through the gate: SiLU'(z) = σ(z)(1 + z(1 − σ(z))).
// (The conv + SiLU stage that used to live here is csrc/causal_conv1d.cpp, shared with Mamba-1.)
//
// Reference twin: rms_norm_gated_ref (ops/mamba2_cpu.py) under autograd, which tests compare; the
// Python side checks every shape before calling.
// Loops calling exp_ / sigmoid_ vectorise because every kernel builds with -fno-trapping-math
// (cpu_kernels.FLAGS).
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "fastmath.h"

using namespace mk;

namespace {

// What the norm normalises: y · SiLU(z) when gated first (z non-null), else y.
inline void norm_input(const float* yr, const float* zr, int64_t d, float* o) {
  if (zr) {
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) o[c] = yr[c] * (zr[c] * sigmoid_(zr[c]));
  } else {
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) o[c] = yr[c];
  }
}

// 1 / rms of one group of channels.
inline float inv_rms(const float* o, int64_t group, float eps) {
  float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
  for (int64_t c = 0; c < group; ++c) ss += o[c] * o[c];
  return 1.0f / std::sqrt(ss / static_cast<float>(group) + eps);
}

}  // namespace

extern "C" {

void mk_rmsnorm_gated_f32(const float* y, int64_t ys, const float* z, int64_t zs, const float* w,
                          float* out, int64_t rows, int64_t d, int64_t group, float eps,
                          int32_t norm_before_gate, int32_t threads) {
  const int nt = threads > 0 ? threads : omp_get_max_threads();
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* yr = y + r * ys;
    const float* zr = z ? z + r * zs : nullptr;
    float* o = out + r * d;
    norm_input(yr, zr && !norm_before_gate ? zr : nullptr, d, o);
    for (int64_t g0 = 0; g0 < d; g0 += group) {
      const float scale = inv_rms(o + g0, group, eps);
#pragma omp simd
      for (int64_t c = g0; c < g0 + group; ++c) o[c] *= scale * w[c];
    }
    if (zr && norm_before_gate) {
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) o[c] *= zr[c] * sigmoid_(zr[c]);
    }
  }
}

// dout (rows, d) contiguous -> dy (rows, d), dz (rows, d) when z, and per-thread partial sums of
// dw in dw_part (threads, d), zeroed by the caller, which sums them.
void mk_rmsnorm_gated_bwd_f32(const float* y, int64_t ys, const float* z, int64_t zs, const float* w,
                              const float* dout, float* dy, float* dz, float* dw_part, int64_t rows,
                              int64_t d, int64_t group, float eps, int32_t norm_before_gate,
                              int32_t threads) {
  const int nt = threads > 0 ? threads : omp_get_max_threads();
  const bool gate_first = z && !norm_before_gate, gate_last = z && norm_before_gate;
#pragma omp parallel num_threads(nt)
  {
    std::vector<float> o_buf(d), g_buf(d);
    float *o = o_buf.data(), *g = g_buf.data();
    float* dw = dw_part + static_cast<int64_t>(omp_get_thread_num()) * d;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float* yr = y + r * ys;
      const float* zr = z ? z + r * zs : nullptr;
      const float* dor = dout + r * d;
      float* dyr = dy + r * d;
      float* dzr = dz ? dz + r * d : nullptr;
      norm_input(yr, gate_first ? zr : nullptr, d, o);
      for (int64_t g0 = 0; g0 < d; g0 += group) {
        const float inv = inv_rms(o + g0, group, eps);
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int64_t c = g0; c < g0 + group; ++c) {
          float dd = dor[c];
          if (gate_last) {  // out = n·SiLU(z) with n = o·inv·w: dz here, and d n = dout·SiLU(z)
            const float zc = zr[c], sg = sigmoid_(zc);
            dzr[c] = dd * o[c] * inv * w[c] * sg * (1.0f + zc * (1.0f - sg));
            dd *= zc * sg;
          }
          dw[c] += dd * o[c] * inv;
          g[c] = dd * w[c];
          dot += g[c] * o[c];
        }
        const float k3 = inv * inv * inv * dot / static_cast<float>(group);
#pragma omp simd
        for (int64_t c = g0; c < g0 + group; ++c) g[c] = inv * g[c] - o[c] * k3;  // d o
      }
      if (gate_first) {  // o = y·SiLU(z)
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) {
          const float zc = zr[c], sg = sigmoid_(zc);
          dyr[c] = g[c] * zc * sg;
          dzr[c] = g[c] * yr[c] * sg * (1.0f + zc * (1.0f - sg));
        }
      } else {
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) dyr[c] = g[c];
      }
    }
  }
}

}  // extern "C"
