// One Mamba block's decode step in one call, and a whole Mamba LM's (every block, the final norm
// and the LM head) in one call: Block.step around a MambaMixer with RMSNorm,
//
//   h = RMSNorm(residual);  x, z = in_proj(h);  x = SiLU(conv_step(x));  dt, B, C = x_proj(x)
//   y = selective_state_update(x, dt_proj(dt), B, C, z);  residual_out = residual + out_proj(y)
//
// Why: at 130M the weights stream in ~30 ms per token on 2 Zen 3 cores; around them the eager
// step spends a few ms on small torch ops, and the per-layer call still spent ~30 µs of Python
// per layer, two OpenMP fork/joins per layer and ~0.1 ms per layer on work one thread did while
// the other core idled (conv, x_proj, dt_proj, state update). Here one parallel region runs the
// whole step: every stage is split over the threads, with a barrier only where a stage needs
// what another thread wrote:
//   norm (each thread its own copy) -> in_proj rows of the thread's channels (x and z) -> conv of
//   those channels | barrier | x_proj rows split | barrier | dt_proj and the state update of the
//   thread's channels | barrier | out_proj rows split, plus the residual | barrier (next layer).
// llama.cpp splits each op of its graph over its threads the same way, with a spin barrier after each.
// Twin: the unfused Block.step (and MixerLM.step over it); tests compare outputs and states.
// Python (ops/block_step_cpu.py) checks every shape. New states go to separate buffers, as in
// decode_step.cpp.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "decode_ops.h"
#include "gemv.h"

// Mirror of MambaBlockArgs in ops/cpu_kernels.py (order and types must match).
struct MambaBlockArgs {
  const float *residual, *norm_w;
  float* residual_out;                          // (b, d_model)
  const void *in_w, *xp_w, *out_w;              // weights (n, k): fp32, bf16 bits or int8
  const float *in_scale, *xp_scale, *out_scale;  // per-row scales of int8 weights, else NULL
  const float *in_bias, *xp_bias, *out_bias;
  const float *conv_w, *conv_b, *dt_w, *dt_b, *A, *D;
  const float *conv_state, *ssm_state;
  float *conv_state_out, *ssm_state_out;
  int64_t b, d_model, d_inner, d_state, dt_rank, d_conv;
  float eps;
  int32_t in_format, xp_format, out_format;     // 0 fp32, 1 bf16, 2 int8
  int32_t threads;
};

// Mirror of MambaLMArgs in ops/cpu_kernels.py. Every layer has the same d_model, d_inner, d_state,
// dt_rank and d_conv (checked in Python); a layer's residual / residual_out / b / threads fields
// are not read (the residual flows between layers here).
struct MambaLMArgs {
  const MambaBlockArgs* layers;
  int64_t n_layer;
  const float* residual;        // (b, d_model): the embeddings of the tokens
  const float* norm_w;          // the final RMSNorm
  float eps;
  int32_t head_format;
  const void* head_w;           // (vocab, d_model)
  const float *head_scale, *head_bias;
  int64_t vocab;
  float* logits;                // (b, vocab)
  int64_t b;
  int32_t threads;
};

namespace {

using namespace mk_gemv;

// [lo, hi) of thread t's share of n items, in runs of `align` (the last run may be short).
inline void share(int64_t n, int t, int nt, int64_t align, int64_t* lo, int64_t* hi) {
  const int64_t units = (n + align - 1) / align;
  *lo = std::min(n, units * t / nt * align);
  *hi = std::min(n, units * (t + 1) / nt * align);
}

void rms_norm(const float* r, const float* w, float eps, float* h, int64_t b, int64_t dm) {
  for (int64_t i = 0; i < b; ++i) {  // in fp32, as F.rms_norm
    const float* ri = r + i * dm;
    float ss = 0.0f;
    for (int64_t c = 0; c < dm; ++c) ss += ri[c] * ri[c];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(dm) + eps);
    for (int64_t c = 0; c < dm; ++c) h[i * dm + c] = ri[c] * inv * w[c];
  }
}

// What the threads of one call share: the intermediate activations of a layer, and a normed
// residual per thread (each thread norms for itself: no barrier).
struct Buffers {
  std::vector<float> h, xz, x, x_dbl, y;
  Buffers(int64_t b, int64_t dm, int64_t di, int64_t width, int nt)
      : h(nt * b * dm), xz(b * 2 * di), x(b * di), x_dbl(b * width), y(b * di) {}
};

// One layer's step by thread t of nt (inside a parallel region, or alone with nt = 1):
// residual (b, d_model) -> residual_out, states -> the layer's *_out states. Ends with a barrier.
void layer_step(const MambaBlockArgs& a, const float* residual, float* residual_out, int64_t b, Buffers& s, int t,
                int nt) {
  const int64_t dm = a.d_model, di = a.d_inner, n = a.d_state, r = a.dt_rank, kc = a.d_conv;
  const int64_t width = r + 2 * n;  // x_proj's output: dt (r), B (n), C (n)
  float* h = s.h.data() + t * b * dm;
  float *xz = s.xz.data(), *x = s.x.data(), *x_dbl = s.x_dbl.data(), *y = s.y.data();
  rms_norm(residual, a.norm_w, a.eps, h, b, dm);
  int64_t c0, c1;  // this thread's channels of d_inner (runs of 8: whole vectors of xz and y)
  share(di, t, nt, 8, &c0, &c1);
  with_rows(a.in_format, a.in_w, h, dm, b, dm, [&](const auto& rows) {   // x and z of channels [c0, c1)
    gemv_range(rows, a.in_scale, a.in_bias, xz, 2 * di, b, c0, c1);
    gemv_range(rows, a.in_scale, a.in_bias, xz, 2 * di, b, di + c0, di + c1);
  });
  for (int64_t i = 0; i < b; ++i)
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t bc = i * di + c;
      x[bc] = mk::conv_step_channel(a.conv_state + bc * (kc - 1), a.conv_state_out + bc * (kc - 1), a.conv_w + c * kc,
                                    a.conv_b ? a.conv_b[c] : 0.0f, xz[i * 2 * di + c], kc, true);
    }
#pragma omp barrier
  int64_t j0, j1;
  share(width, t, nt, 1, &j0, &j1);
  with_rows(a.xp_format, a.xp_w, x, di, b, di,
            [&](const auto& rows) { gemv_range(rows, a.xp_scale, a.xp_bias, x_dbl, width, b, j0, j1); });
#pragma omp barrier
  // dt_proj's low-rank product in fp32 (its bias goes into the softplus), then the state update
  const FloatRows<float> dt_rows{x_dbl, width, a.dt_w, r};
  for (int64_t i = 0; i < b; ++i)
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t bc = i * di + c;
      float dt;
      dt_rows.dots(c, i, 1, &dt);
      const float delta = mk::softplus_(dt + (a.dt_b ? a.dt_b[c] : 0.0f));
      const float* xd = x_dbl + i * width;
      y[bc] = mk::state_update_channel(a.ssm_state + bc * n, a.ssm_state_out + bc * n, a.A + c * n, xd + r,
                                       xd + r + n, delta, x[bc], a.D ? a.D + c : nullptr, xz + i * 2 * di + di + c, n);
    }
#pragma omp barrier
  share(dm, t, nt, 8, &j0, &j1);
  with_rows(a.out_format, a.out_w, y, di, b, di,
            [&](const auto& rows) { gemv_range(rows, a.out_scale, a.out_bias, residual_out, dm, b, j0, j1); });
  for (int64_t i = 0; i < b; ++i)
    for (int64_t j = j0; j < j1; ++j) residual_out[i * dm + j] += residual[i * dm + j];
#pragma omp barrier
}

}  // namespace

extern "C" void mk_mamba_block_step_f32(const MambaBlockArgs* a) {
  const int64_t b = a->b;
  Buffers s(b, a->d_model, a->d_inner, a->dt_rank + 2 * a->d_state, a->threads);
#pragma omp parallel num_threads(a->threads) if (a->threads > 1)
  layer_step(*a, a->residual, a->residual_out, b, s, omp_get_thread_num(), omp_get_num_threads());
}

extern "C" void mk_mamba_lm_step_f32(const MambaLMArgs* a) {
  const MambaBlockArgs& first = a->layers[0];
  const int64_t b = a->b, dm = first.d_model;
  Buffers s(b, dm, first.d_inner, first.dt_rank + 2 * first.d_state, a->threads);
  std::vector<float> residual(2 * b * dm);  // layers alternate between the two halves
#pragma omp parallel num_threads(a->threads) if (a->threads > 1)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const float* in = a->residual;
    for (int64_t l = 0; l < a->n_layer; ++l) {
      float* out = residual.data() + (l % 2) * b * dm;
      layer_step(a->layers[l], in, out, b, s, t, nt);
      in = out;
    }
    float* h = s.h.data() + t * b * dm;
    rms_norm(in, a->norm_w, a->eps, h, b, dm);
    int64_t j0, j1;
    share(a->vocab, t, nt, kColBlock, &j0, &j1);
    with_rows(a->head_format, a->head_w, h, dm, b, dm,
              [&](const auto& rows) { gemv_range(rows, a->head_scale, a->head_bias, a->logits, a->vocab, b, j0, j1); });
  }
}
