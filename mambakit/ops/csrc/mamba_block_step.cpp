// One Mamba block's decode step in one call: Block.step around a MambaMixer with RMSNorm,
//
//   h = RMSNorm(residual);  x, z = in_proj(h);  x = SiLU(conv_step(x));  dt, B, C = x_proj(x)
//   y = selective_state_update(x, dt_proj(dt), B, C, z);  residual_out = residual + out_proj(y)
//
// Why: at 130M the weights stream in ~10 ms per token, while the eager step spends a few ms more
// on ~15 small torch ops and 5 kernel calls per layer around them (dispatch, checks, allocations).
// This strings the same kernels together (mk_gemv_*, mk_conv_step_f32, mk_state_update_f32),
// adding only the norm and the residual add, so a layer is one call. Twin: the unfused
// Block.step; tests compare output and both states. Python (ops/block_step_cpu.py) checks
// every shape. New states go to separate buffers, as in decode_step.cpp.
#include <cmath>
#include <cstdint>
#include <vector>

extern "C" {
void mk_gemv_f32(const float*, int64_t, const float*, const float*, const float*, float*, int64_t, int64_t,
                 int64_t, int64_t, int32_t);
void mk_gemv_bf16(const float*, int64_t, const uint16_t*, const float*, const float*, float*, int64_t,
                  int64_t, int64_t, int64_t, int32_t);
void mk_gemv_i8(const float*, int64_t, const int8_t*, const float*, const float*, float*, int64_t, int64_t,
                int64_t, int64_t, int32_t);
void mk_conv_step_f32(const float*, int64_t, const float*, float*, const float*, const float*, float*,
                      int64_t, int64_t, int64_t, int32_t);
void mk_state_update_f32(const float*, float*, const float*, int64_t, const float*, int64_t, const float*,
                         int32_t, const float*, const float*, int64_t, int64_t, const float*, int64_t, int64_t,
                         int64_t, const float*, const float*, int64_t, float*, int64_t, int64_t, int64_t);
}

// Mirror of MambaBlockArgs in ops/block_step_cpu.py (order and types must match).
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

namespace {

// y (m, n) = x (m, k) Wᵀ with the GEMV of W's format; threads only for matrices worth splitting
// (the rule of ops/step_cpu.py: x_proj and dt_proj finish before a second thread would start).
void linear(int32_t format, const void* w, const float* scale, const float* bias, const float* x, float* y,
            int64_t m, int64_t n, int64_t k, int32_t threads) {
  const int32_t t = n * k >= (1 << 17) ? threads : 1;
  if (format == 1)
    mk_gemv_bf16(x, k, static_cast<const uint16_t*>(w), scale, bias, y, n, m, n, k, t);
  else if (format == 2)
    mk_gemv_i8(x, k, static_cast<const int8_t*>(w), scale, bias, y, n, m, n, k, t);
  else
    mk_gemv_f32(x, k, static_cast<const float*>(w), scale, bias, y, n, m, n, k, t);
}

}  // namespace

extern "C" void mk_mamba_block_step_f32(const MambaBlockArgs* a) {
  const int64_t b = a->b, dm = a->d_model, di = a->d_inner, n = a->d_state, r = a->dt_rank;
  const int64_t width = r + 2 * n;  // x_proj's output: dt (r), B (n), C (n)
  std::vector<float> h(b * dm), xz(b * 2 * di), x(b * di), x_dbl(b * width), dt(b * di), y(b * di),
      out(b * dm);
  for (int64_t i = 0; i < b; ++i) {  // RMSNorm in fp32, as F.rms_norm
    const float* ri = a->residual + i * dm;
    float ss = 0.0f;
    for (int64_t c = 0; c < dm; ++c) ss += ri[c] * ri[c];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(dm) + a->eps);
    for (int64_t c = 0; c < dm; ++c) h[i * dm + c] = ri[c] * inv * a->norm_w[c];
  }
  linear(a->in_format, a->in_w, a->in_scale, a->in_bias, h.data(), xz.data(), b, 2 * di, dm, a->threads);
  mk_conv_step_f32(xz.data(), 2 * di, a->conv_state, a->conv_state_out, a->conv_w, a->conv_b, x.data(), b, di,
                   a->d_conv, 1);
  linear(a->xp_format, a->xp_w, a->xp_scale, a->xp_bias, x.data(), x_dbl.data(), b, width, di, a->threads);
  // dt_proj's low-rank product in fp32 (its bias goes into the state update's softplus)
  mk_gemv_f32(x_dbl.data(), width, a->dt_w, nullptr, nullptr, dt.data(), di, b, di, r, 1);
  mk_state_update_f32(a->ssm_state, a->ssm_state_out, x.data(), di, dt.data(), di, a->dt_b, 1, a->A,
                      x_dbl.data() + r, width, 0, x_dbl.data() + r + n, width, 0, 1, a->D, xz.data() + di,
                      2 * di, y.data(), b, di, n);
  linear(a->out_format, a->out_w, a->out_scale, a->out_bias, y.data(), out.data(), b, dm, di, a->threads);
  for (int64_t i = 0; i < b * dm; ++i) a->residual_out[i] = a->residual[i] + out[i];
}
