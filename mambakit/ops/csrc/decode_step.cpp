// One-token Mamba decode step on CPU: the elementwise work between the mixer's matmuls, fused.
//
// A decode step of a 130M Mamba is memory-bound matrix-vector products plus, in eager PyTorch,
// some 30 tiny elementwise ops per layer (conv window shift, SiLU, softplus, exp(ΔA), state
// update, C·h, D skip, gate). These two kernels do that work in one pass each. Reference twins:
// causal_conv1d_step_ref (ops/conv.py) and selective_state_update_ref (ops/state_update.py);
// tests compare them. The Python side (ops/step_cpu.py) checks every shape before calling.
//
// Layouts: rows of batch i at `x + i * x_stride` etc., so views into in_proj's (b, 2 d) output
// and x_proj's (b, r + 2n) output are read in place; the last dimension is always stride 1.
// conv states (b, d, k-1), conv_w (d, k), ssm states (b, d, n), A (d, n) contiguous. New states
// go to separate buffers, so a state someone still holds is never changed behind their back.
#include <cstdint>

#include "decode_ops.h"

using namespace mk;

extern "C" {

// y = conv_w · [state, x] + bias (then SiLU if silu); state_out = last k-1 inputs.
void mk_conv_step_f32(const float* x, int64_t x_stride, const float* state, float* state_out,
                      const float* w, const float* bias, float* y, int64_t b, int64_t d, int64_t k,
                      int32_t silu) {
#pragma omp parallel for if (b * d >= (1 << 15)) schedule(static)  // a 130M step: serial (µs)
  for (int64_t bc = 0; bc < b * d; ++bc) {
    const int64_t i = bc / d, c = bc % d;
    y[bc] = conv_step_channel(state + bc * (k - 1), state_out + bc * (k - 1), w + c * k, bias ? bias[c] : 0.0f,
                              x[i * x_stride + c], k, silu != 0);
  }
}

// mamba_ssm's selective_state_update: Δ = dt + dt_bias (softplus'd if softplus);
// h' = exp(Δ A) h + Δ B x; y = (C·h' + D x) · SiLU(z). Channel c reads B/C group c / (d / g).
void mk_state_update_f32(const float* h, float* h_out, const float* x, int64_t x_stride,
                         const float* dt, int64_t dt_stride, const float* dt_bias, int32_t softplus,
                         const float* A, const float* B, int64_t B_bstride, int64_t B_gstride,
                         const float* C, int64_t C_bstride, int64_t C_gstride, int64_t g,
                         const float* D, const float* z, int64_t z_stride, float* y, int64_t b,
                         int64_t d, int64_t n) {
  const int64_t per_group = d / g;
#pragma omp parallel for if (b * d * n >= (1 << 18)) schedule(static)  // large batches only
  for (int64_t bc = 0; bc < b * d; ++bc) {
    const int64_t i = bc / d, c = bc % d, grp = c / per_group;
    float delta = dt[i * dt_stride + c] + (dt_bias ? dt_bias[c] : 0.0f);
    if (softplus) delta = softplus_(delta);
    y[bc] = state_update_channel(h + bc * n, h_out + bc * n, A + c * n, B + i * B_bstride + grp * B_gstride,
                                 C + i * C_bstride + grp * C_gstride, delta, x[i * x_stride + c], D ? D + c : nullptr,
                                 z ? z + i * z_stride + c : nullptr, n);
  }
}

}  // extern "C"
