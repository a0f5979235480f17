// One-token Mamba decode step on CPU: the elementwise work between the mixer's matmuls, fused.
//
// A decode step of a 130M Mamba is ~20 ms of memory-bound matrix-vector products and, in eager
// PyTorch, ~7 ms of some 30 tiny elementwise ops per layer (conv window shift, SiLU, softplus,
// exp(ΔA), state update, C·h, D skip, gate). These two kernels do that work in one pass each, so
// a step costs its matmuls plus two calls per layer. Reference twins: causal_conv1d_step and
// selective_state_step in mambakit/ops (tests compare them).
//
// Layouts: rows of batch i at `x + i * x_stride` etc., so views into in_proj's (b, 2 d) output
// and x_proj's (b, r + 2n) output are read in place. conv states (b, d, k-1), conv_w (d, k),
// ssm states (b, d, n), A_log (d, n) contiguous. New states go to separate buffers (they may alias
// the old ones), so a state someone still holds is never changed behind their back.
#include <cstdint>

#include "fastmath.h"

using namespace mk;

extern "C" {

// y = SiLU(conv_w · [state, x] + bias); state_out = last k-1 inputs. x row stride x_stride.
void mk_conv_step_f32(const float* x, int64_t x_stride, const float* state, float* state_out,
                      const float* w, const float* bias, float* y, int64_t b, int64_t d, int64_t k) {
#pragma omp parallel for if (b * d >= 1024) schedule(static)
  for (int64_t bc = 0; bc < b * d; ++bc) {
    const int64_t i = bc / d, c = bc % d;
    const float* s = state + bc * (k - 1);
    float* so = state_out + bc * (k - 1);
    const float* wc = w + c * k;
    const float xt = x[i * x_stride + c];
    float acc = bias ? bias[c] : 0.0f;
    for (int64_t j = 0; j < k - 1; ++j) acc += wc[j] * s[j];
    acc += wc[k - 1] * xt;
    for (int64_t j = 0; j + 1 < k - 1; ++j) so[j] = s[j + 1];  // forward copy: safe if aliased
    if (k > 1) so[k - 2] = xt;
    y[bc] = acc * sigmoid_(acc);
  }
}

// Δ = softplus(dt + dt_bias); h' = exp(Δ A) h + Δ B x; y = (C·h' + D x) · SiLU(z), A = -exp(A_log).
// B, C rows at stride bc_stride (views into x_proj's output); z row stride z_stride.
void mk_ssm_step_f32(const float* h, float* h_out, const float* x, const float* dt, const float* dt_bias,
                     const float* A_log, const float* B, const float* C, int64_t bc_stride,
                     const float* D, const float* z, int64_t z_stride, float* y, int64_t b,
                     int64_t d, int64_t n) {
#pragma omp parallel for if (b * d * n >= (1 << 12)) schedule(static)
  for (int64_t bc = 0; bc < b * d; ++bc) {
    const int64_t i = bc / d, c = bc % d;
    const float xt = x[bc], delta = softplus_(dt[bc] + (dt_bias ? dt_bias[c] : 0.0f));
    const float *Bi = B + i * bc_stride, *Ci = C + i * bc_stride, *Al = A_log + c * n;
    const float* hc = h + bc * n;
    float* ho = h_out + bc * n;
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t k = 0; k < n; ++k) {
      const float hk = exp_(-delta * exp_(Al[k])) * hc[k] + delta * Bi[k] * xt;
      ho[k] = hk;
      acc += hk * Ci[k];
    }
    if (D) acc += D[c] * xt;
    if (z) {
      const float zt = z[i * z_stride + c];
      acc *= zt * sigmoid_(zt);
    }
    y[bc] = acc;
  }
}

}  // extern "C"
