// The Mamba-2 mixer's two elementwise stages around the SSD, for prefill on CPU, each one pass over
// (position, channel) rows instead of several PyTorch ops with their layout copies:
//
// mk_conv_silu_rows_f32: the depthwise causal conv over x‖B‖C, then SiLU, reading in_proj's output
//   rows in place (row stride xs; channels contiguous) and writing (b, l, d) rows, so x, B and C are
//   plain views for the SSD kernel. PyTorch's path transposes to (b, d, l), concatenates the
//   carried state, convolves, applies SiLU and transposes back: four full passes and strided copies.
//   y[t, c] = silu(bias[c] + Σ_j w[j, c] · in[t - (k-1) + j, c]), in[-s] = state[c, k-1-s].
//   Also returns the conv state: the last k-1 inputs (b, d, k-1).
// mk_rmsnorm_gated_f32: Mamba-2's gated, grouped RMSNorm, out = RMSNorm_g(y · SiLU(z)) · w (or
//   RMSNorm_g(y) · w · SiLU(z) when norm_before_gate), one pass per row instead of ~8 ops.
//
// Reference twins: conv_silu_rows_ref / rms_norm_gated_ref (ops/mamba2_cpu.py), which tests
// compare; the Python side checks every shape before calling.
// Loops calling exp_ / sigmoid_ vectorise because every kernel builds with -fno-trapping-math
// (cpu_kernels.FLAGS).
#include <omp.h>

#include <cmath>
#include <cstdint>

#include "fastmath.h"

using namespace mk;

extern "C" {

void mk_conv_silu_rows_f32(const float* x, int64_t xs, const float* state, const float* wT,
                           const float* bias, float* y, float* state_out, int64_t b, int64_t l,
                           int64_t d, int64_t k, int32_t silu, int32_t threads) {
  const int nt = threads > 0 ? threads : omp_get_max_threads();
  const int64_t km = k - 1;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t it = 0; it < b * l; ++it) {
    const int64_t i = it / l, t = it % l;
    float* yr = y + it * d;
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) yr[c] = bias ? bias[c] : 0.0f;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t src = t - km + j;
      const float* w = wT + j * d;
      if (src >= 0) {
        const float* xr = x + (i * l + src) * xs;
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) yr[c] += w[c] * xr[c];
      } else {  // before the sequence: the carried state (k-1 + src is its column)
        const float* st = state + i * d * km + (km + src);
        for (int64_t c = 0; c < d; ++c) yr[c] += w[c] * st[c * km];
      }
    }
    if (silu) {
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) yr[c] = yr[c] * sigmoid_(yr[c]);
    }
  }
  // The new state: inputs at positions l-(k-1) .. l-1 (from the old state when l < k-1).
  for (int64_t i = 0; i < b; ++i)
    for (int64_t c = 0; c < d; ++c)
      for (int64_t j = 0; j < km; ++j) {
        const int64_t pos = l - km + j;
        state_out[(i * d + c) * km + j] =
            pos >= 0 ? x[(i * l + pos) * xs + c] : state[(i * d + c) * km + (km + pos)];
      }
}

void mk_rmsnorm_gated_f32(const float* y, int64_t ys, const float* z, int64_t zs, const float* w,
                          float* out, int64_t rows, int64_t d, int64_t group, float eps,
                          int32_t norm_before_gate, int32_t threads) {
  const int nt = threads > 0 ? threads : omp_get_max_threads();
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* yr = y + r * ys;
    const float* zr = z ? z + r * zs : nullptr;
    float* o = out + r * d;
    if (zr && !norm_before_gate) {
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) o[c] = yr[c] * (zr[c] * sigmoid_(zr[c]));
    } else {
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) o[c] = yr[c];
    }
    for (int64_t g0 = 0; g0 < d; g0 += group) {
      float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
      for (int64_t c = g0; c < g0 + group; ++c) ss += o[c] * o[c];
      const float scale = 1.0f / std::sqrt(ss / static_cast<float>(group) + eps);
#pragma omp simd
      for (int64_t c = g0; c < g0 + group; ++c) o[c] *= scale * w[c];
    }
    if (zr && norm_before_gate) {
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) o[c] *= zr[c] * sigmoid_(zr[c]);
    }
  }
}

}  // extern "C"
