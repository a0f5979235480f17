// Causal depthwise conv1d + SiLU over a whole sequence (the short convolution of both Mamba
// mixers), forward and backward: one kernel for ops/mamba_inner.py (Mamba-1, output (b, d, l) for
// the scan) and ops/mamba2_cpu.py (Mamba-2, output (b, l, d) rows for the SSD, with a carried
// conv state for prefill and chunked continuation).
//
// Why not F.conv1d + F.silu: torch's depthwise conv wants a padded (b, d, k-1+l) copy of its input
// and keeps its output and the SiLU's for the backward. Here the input is read in place from the
// in_proj output (b, l, ·) with a row stride, the pre-activation is recomputed in the backward (k
// multiply-adds per value) instead of kept, and dx is written straight into the in_proj
// gradient's layout.
//
// Layouts: x (b, l, ·) with channel c of step t of row i at x[i*x_bstride + t*x_lstride + c];
// u and du with element (i, c, t) at [i*bstride + c*cstride + t*lstride] ((b, d, l) or (b, l, d));
// state, state_out (b, d, k-1) contiguous or null (null state: zeros before step 0); w (d, k);
// bias (d) or null; dx like x (its own strides); dw (d, k), dbias (d). Channels are spread over
// threads in blocks of kBlock: a block's inputs are gathered into per-thread rows along time (one
// 64-byte read per step), every loop after that is stride-1 in time, and in the backward a thread
// owns its channels' dw and dbias (batch rows are summed inside); a du along channels ((b, l, d)
// rows) is gathered the same way. The forward into (b, l, d) rows walks positions instead
// (conv_rows). k <= 8 (checked in Python).
// Reference twin: ops.conv.causal_conv1d + SiLU under autograd; tests compare both layouts.
#include <algorithm>
#include <cstdint>
#include <vector>

#include <omp.h>

#include "fastmath.h"

namespace {
using namespace mk;

constexpr int64_t kBlock = 16;  // channels per task: one 64-byte row of x per step

// Channels c0..c0+nc-1 of row i of x, steps -(k-1)..l-1, transposed to rows of `pitch` floats
// (the state, or zeros, before step 0): xt[j * pitch + (k-1) + t] = x[i, t, c0 + j]. The reads
// are 64-byte rows of x; everything after runs along time, stride-1, as the scan does.
inline void gather(const float* x, int64_t x_bstride, int64_t x_lstride, const float* state, int64_t d,
                   int64_t i, int64_t c0, int64_t nc, int64_t l, int64_t k, int64_t pitch, float* xt) {
  for (int64_t j = 0; j < nc; ++j) {
    if (state) {
      std::copy(state + (i * d + c0 + j) * (k - 1), state + (i * d + c0 + j + 1) * (k - 1), xt + j * pitch);
    } else {
      std::fill(xt + j * pitch, xt + j * pitch + (k - 1), 0.0f);
    }
  }
  const float* xi = x + i * x_bstride + c0;
  for (int64_t t = 0; t < l; ++t) {
    const float* row = xi + t * x_lstride;
    for (int64_t j = 0; j < nc; ++j) xt[j * pitch + (k - 1) + t] = row[j];
  }
}

// The reverse of `gather` for an output or gradient: element (i, c0+j, t) of a (b, d, l) or
// (b, l, d) tensor from rows[j * pitch + t], or (read) the other way round.
inline void scatter(const float* rows, int64_t pitch, int64_t nc, int64_t l, float* dst, int64_t cstride,
                    int64_t lstride) {
  for (int64_t t = 0; t < l; ++t) {
    float* out = dst + t * lstride;
    for (int64_t j = 0; j < nc; ++j) out[j * cstride] = rows[j * pitch + t];
  }
}
inline void gather_rows(const float* src, int64_t cstride, int64_t lstride, int64_t nc, int64_t l, int64_t pitch,
                        float* rows) {
  for (int64_t t = 0; t < l; ++t) {
    const float* in = src + t * lstride;
    for (int64_t j = 0; j < nc; ++j) rows[j * pitch + t] = in[j * cstride];
  }
}

// pre[t] = bias + Σ_tap w[tap] xt[t + tap] for one channel (xt padded as in `gather`).
inline void conv_row(const float* xt, const float* w, float bias, int64_t l, int64_t k, float* pre) {
#pragma omp simd
  for (int64_t t = 0; t < l; ++t) pre[t] = bias;
  for (int64_t tap = 0; tap < k; ++tap) {
    const float wt = w[tap];
    const float* src = xt + tap;
#pragma omp simd
    for (int64_t t = 0; t < l; ++t) pre[t] += wt * src[t];
  }
}

// The forward for (b, l, d) rows out (Mamba-2's SSD reads them): rows in, rows out, so it walks
// positions and vectorises along channels, each input row read k times while in cache. (The
// channel-block walk above, gathering whole sequences and scattering them back, took twice as long
// for this layout at L = 2048: its per-thread blocks outgrow L1.) Same results as that walk.
void conv_rows(const float* x, int64_t x_bstride, int64_t x_lstride, const float* state, const float* w,
               const float* bias, float* u, int64_t u_bstride, int64_t u_lstride, float* state_out, int64_t b,
               int64_t d, int64_t l, int64_t k, int32_t threads) {
  const int64_t km = k - 1;
  std::vector<float> wT(k * d);  // taps-major, so each tap is a contiguous channel vector
  for (int64_t c = 0; c < d; ++c)
    for (int64_t j = 0; j < k; ++j) wT[j * d + c] = w[c * k + j];
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t it = 0; it < b * l; ++it) {
    const int64_t i = it / l, t = it % l;
    float* yr = u + i * u_bstride + t * u_lstride;
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) yr[c] = bias ? bias[c] : 0.0f;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t src = t - km + j;
      const float* wj = wT.data() + j * d;
      if (src >= 0) {
        const float* xr = x + i * x_bstride + src * x_lstride;
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) yr[c] += wj[c] * xr[c];
      } else if (state) {  // before the sequence: the carried state (k-1 + src is its column)
        const float* st = state + i * d * km + (km + src);
        for (int64_t c = 0; c < d; ++c) yr[c] += wj[c] * st[c * km];
      }
    }
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) yr[c] = yr[c] * sigmoid_(yr[c]);
  }
  if (!state_out) return;
  for (int64_t i = 0; i < b; ++i)  // the inputs at positions l-(k-1) .. l-1 (from the state when l < k-1)
    for (int64_t c = 0; c < d; ++c)
      for (int64_t j = 0; j < km; ++j) {
        const int64_t pos = l - km + j;
        state_out[(i * d + c) * km + j] = pos >= 0 ? x[i * x_bstride + pos * x_lstride + c]
                                                   : (state ? state[(i * d + c) * km + (km + pos)] : 0.0f);
      }
}

}  // namespace

extern "C" {

// u = SiLU(conv(x) + bias); state_out (if not null) = the last k-1 inputs (from the state when
// l < k-1). `scratch` holds threads · 2 · kBlock · (l + k - 1) floats.
void mk_conv1d_silu_fwd_f32(const float* x, int64_t x_bstride, int64_t x_lstride, const float* state,
                            const float* w, const float* bias, float* u, int64_t u_bstride, int64_t u_cstride,
                            int64_t u_lstride, float* state_out, float* scratch, int64_t b, int64_t d,
                            int64_t l, int64_t k, int32_t threads) {
  if (u_cstride == 1) {
    conv_rows(x, x_bstride, x_lstride, state, w, bias, u, u_bstride, u_lstride, state_out, b, d, l, k, threads);
    return;
  }
  const int64_t nblocks = (d + kBlock - 1) / kBlock, pitch = l + k - 1;
#pragma omp parallel num_threads(threads)
  {
    float* xt = scratch + omp_get_thread_num() * 2 * kBlock * pitch;
    float* ut = xt + kBlock * pitch;  // the block's outputs when u runs along channels
#pragma omp for collapse(2) schedule(static)
    for (int64_t i = 0; i < b; ++i) {
      for (int64_t blk = 0; blk < nblocks; ++blk) {
        const int64_t c0 = blk * kBlock, nc = std::min(kBlock, d - c0);
        gather(x, x_bstride, x_lstride, state, d, i, c0, nc, l, k, pitch, xt);
        for (int64_t j = 0; j < nc; ++j) {
          const int64_t c = c0 + j;
          float* row = u_lstride == 1 ? u + i * u_bstride + c * u_cstride : ut + j * pitch;
          conv_row(xt + j * pitch, w + c * k, bias ? bias[c] : 0.0f, l, k, row);
#pragma omp simd
          for (int64_t t = 0; t < l; ++t) row[t] = row[t] * sigmoid_(row[t]);
          if (state_out) std::copy(xt + j * pitch + l, xt + j * pitch + l + k - 1, state_out + (i * d + c) * (k - 1));
        }
        if (u_lstride != 1) scatter(ut, pitch, nc, l, u + i * u_bstride + c0 * u_cstride, u_cstride, u_lstride);
      }
    }
  }
}

// From du = ∂L/∂u: dx (strided like x), dw = Σ_i,t g x, dbias = Σ_i,t g, with g = du · SiLU'(pre)
// and the pre-activation recomputed (with the state as the inputs before step 0; the state itself
// gets no gradient). `scratch` holds threads · 3 · kBlock · (l + k - 1) floats.
void mk_conv1d_silu_bwd_f32(const float* x, int64_t x_bstride, int64_t x_lstride, const float* state,
                            const float* w, const float* bias, const float* du, int64_t du_bstride,
                            int64_t du_cstride, int64_t du_lstride, float* dx, int64_t dx_bstride,
                            int64_t dx_lstride, float* dw, float* dbias, float* scratch, int64_t b,
                            int64_t d, int64_t l, int64_t k, int32_t threads) {
  const int64_t nblocks = (d + kBlock - 1) / kBlock, pitch = l + k - 1;
#pragma omp parallel num_threads(threads)
  {
    float* xt = scratch + omp_get_thread_num() * 3 * kBlock * pitch;
    float* g = xt + kBlock * pitch;   // g[j * pitch + t], zero for t >= l
    float* dut = g + kBlock * pitch;  // the block's du when it runs along channels
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < nblocks; ++blk) {  // one thread owns a block's dw and dbias
      const int64_t c0 = blk * kBlock, nc = std::min(kBlock, d - c0);
      for (int64_t j = 0; j < nc; ++j) {
        std::fill(dw + (c0 + j) * k, dw + (c0 + j + 1) * k, 0.0f);
        if (dbias) dbias[c0 + j] = 0.0f;
      }
      for (int64_t i = 0; i < b; ++i) {
        gather(x, x_bstride, x_lstride, state, d, i, c0, nc, l, k, pitch, xt);
        if (du_lstride != 1) gather_rows(du + i * du_bstride + c0 * du_cstride, du_cstride, du_lstride, nc, l, pitch, dut);
        for (int64_t j = 0; j < nc; ++j) {
          const int64_t c = c0 + j;
          const float *xj = xt + j * pitch, *wc = w + c * k;
          const float* duj = du_lstride == 1 ? du + i * du_bstride + c * du_cstride : dut + j * pitch;
          float* gj = g + j * pitch;
          conv_row(xj, wc, bias ? bias[c] : 0.0f, l, k, gj);
          float db = 0.0f;
#pragma omp simd reduction(+ : db)
          for (int64_t t = 0; t < l; ++t) {  // d SiLU(p)/dp = σ(p)(1 + p(1 - σ(p)))
            const float p = gj[t], sg = sigmoid_(p);
            gj[t] = duj[t] * sg * (1.0f + p * (1.0f - sg));
            db += gj[t];
          }
          std::fill(gj + l, gj + pitch, 0.0f);
          if (dbias) dbias[c] += db;
          for (int64_t tap = 0; tap < k; ++tap) {  // output t read input t - (k-1) + tap
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int64_t t = 0; t < l; ++t) acc += gj[t] * xj[t + tap];
            dw[c * k + tap] += acc;
          }
          // dx[s] = Σ_tap w[tap] g[s + (k-1) - tap]: the same shifted sum, into xt's row (no
          // longer needed), as dx[s] at xj[s].
          float* dxj = xt + j * pitch;
#pragma omp simd
          for (int64_t s = 0; s < l; ++s) dxj[s] = 0.0f;
          for (int64_t tap = 0; tap < k; ++tap) {
            const float wt = wc[tap];
            const float* src = gj + (k - 1) - tap;
#pragma omp simd
            for (int64_t s = 0; s < l; ++s) dxj[s] += wt * src[s];
          }
        }
        float* dxi = dx + i * dx_bstride + c0;
        for (int64_t t = 0; t < l; ++t) {
          float* row = dxi + t * dx_lstride;
          for (int64_t j = 0; j < nc; ++j) row[j] = xt[j * pitch + t];
        }
      }
    }
  }
}

}  // extern "C"

// The gate of the fused mixer's forward: y (b, l, d) = v (b, d, l) · SiLU(z), z read in place at
// z[i*z_bstride + t*z_lstride + c] (the second half of xz). In torch this was F.silu on a strided
// view then mul_ with v transposed: a column-wise read of v per output row. Here tiles of 16
// channels × 16 steps are read from v along time, gated and written to y along channels, so both
// sides move in 64-byte rows. Twin: the torch expression (ops/mamba_inner.py, gate_ref).
extern "C" void mk_gate_silu_f32(const float* v, const float* z, int64_t z_bstride, int64_t z_lstride, float* y,
                                 int64_t b, int64_t d, int64_t l, int32_t threads) {
  constexpr int64_t T = 16;
  const int64_t lt = (l + T - 1) / T, dt = (d + T - 1) / T;
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t i = 0; i < b; ++i)
    for (int64_t tile = 0; tile < lt * dt; ++tile) {
      const int64_t t0 = tile / dt * T, c0 = tile % dt * T;
      const int64_t nt = std::min(T, l - t0), nc = std::min(T, d - c0);
      float buf[T][T];  // buf[t][c] = v[i, c0 + c, t0 + t]
      for (int64_t c = 0; c < nc; ++c) {
        const float* vr = v + (i * d + c0 + c) * l + t0;
        for (int64_t t = 0; t < nt; ++t) buf[t][c] = vr[t];
      }
      for (int64_t t = 0; t < nt; ++t) {
        const float* zr = z + i * z_bstride + (t0 + t) * z_lstride + c0;
        float* yr = y + (i * l + t0 + t) * d + c0;
#pragma omp simd
        for (int64_t c = 0; c < nc; ++c) yr[c] = buf[t][c] * (zr[c] * sigmoid_(zr[c]));
      }
    }
}
