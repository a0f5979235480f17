// One-token Mamba-2 (SSD) decode step on CPU: mamba_ssm's selective_state_update with a scalar A
// and a scalar Δ per head, fused into one pass over the (b, h, p, n) state.
//
// Per head: Δ = clamp(softplus(dt + dt_bias), lo, hi); Ā = exp(Δ A) once for all p·n entries;
// h'[p, :] = Ā h[p, :] + Δ x[p] B;  y[p] = C · h'[p, :] + D x[p], then · SiLU(z[p]).
// Reference twin: ssd_step_ref (ops/ssd.py); tests compare them. The Python side
// (ops/ssd_step_cpu.py) checks every shape before calling.
//
// Layouts: rows of batch i at `x + i * x_stride` etc. (views into in_proj's and the conv's
// outputs are read in place; the last dimension is stride 1). x, z (b, h·p); dt (b, h);
// B, C (b, g·n) with group j at offset j·n; state (b, h, p, n) contiguous; D (h) or (h·p).
// The new state goes to a separate buffer: a state someone still holds is never changed.
#include <cstdint>

#include "fastmath.h"

using namespace mk;

extern "C" {

void mk_ssd_step_f32(const float* state, float* state_out, const float* x, int64_t x_stride,
                     const float* dt, int64_t dt_stride, const float* dt_bias, int32_t softplus,
                     float dt_lo, float dt_hi, const float* A, const float* B, int64_t B_stride,
                     const float* C, int64_t C_stride, int64_t g, const float* D, int32_t D_per_channel,
                     const float* z, int64_t z_stride, float* y, int64_t y_stride, int64_t b,
                     int64_t h, int64_t p, int64_t n) {
  const int64_t heads_per_group = h / g;
#pragma omp parallel for if (b * h * p * n >= (1 << 20)) schedule(static)  // big batches only
  for (int64_t bh = 0; bh < b * h; ++bh) {
    const int64_t i = bh / h, head = bh % h, grp = head / heads_per_group;
    float delta = dt[i * dt_stride + head] + (dt_bias ? dt_bias[head] : 0.0f);
    if (softplus) delta = softplus_(delta);
    delta = delta < dt_lo ? dt_lo : (delta > dt_hi ? dt_hi : delta);
    const float decay = exp_(delta * A[head]);
    const float *Bi = B + i * B_stride + grp * n, *Ci = C + i * C_stride + grp * n;
    for (int64_t c = 0; c < p; ++c) {
      const int64_t ch = head * p + c;  // channel within d_inner = h·p
      const float xt = x[i * x_stride + ch], dx = delta * xt;
      const float* hc = state + (bh * p + c) * n;
      float* ho = state_out + (bh * p + c) * n;
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int64_t k = 0; k < n; ++k) {
        const float hk = decay * hc[k] + dx * Bi[k];
        ho[k] = hk;
        acc += hk * Ci[k];
      }
      if (D) acc += D[D_per_channel ? ch : head] * xt;
      if (z) {
        const float zt = z[i * z_stride + ch];
        acc *= zt * sigmoid_(zt);
      }
      y[i * y_stride + ch] = acc;
    }
  }
}

}  // extern "C"
