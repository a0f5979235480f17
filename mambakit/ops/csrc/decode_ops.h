// The per-channel work of a one-token Mamba decode step, shared by decode_step.cpp (the ops one
// at a time) and mamba_block_step.cpp (a block, or the whole model, in one call): each function
// computes one (batch row, channel) pair, so callers split channels over threads as they like.
#pragma once
#include <cstdint>

#include "fastmath.h"

namespace mk {

// Causal conv of one channel over [state (k-1), xt]: returns conv_w · [state, xt] + bias (then
// SiLU if silu); state_out gets the last k-1 inputs (forward copy: safe if it aliases state).
inline float conv_step_channel(const float* s, float* so, const float* wc, float bias, float xt, int64_t k,
                               bool silu) {
  float acc = bias;
  for (int64_t j = 0; j < k - 1; ++j) acc += wc[j] * s[j];
  acc += wc[k - 1] * xt;
  for (int64_t j = 0; j + 1 < k - 1; ++j) so[j] = s[j + 1];
  if (k > 1) so[k - 2] = xt;
  return silu ? acc * sigmoid_(acc) : acc;
}

// One channel of mamba_ssm's selective_state_update, given its Δ (bias added, softplus'd):
// h' = exp(Δ A) h + Δ B x into ho (n values); returns C·h' + D x, gated by SiLU(z) if z is given.
inline float state_update_channel(const float* hc, float* ho, const float* Ac, const float* Bi, const float* Ci,
                                  float delta, float xt, const float* D, const float* z, int64_t n) {
  const float dx = delta * xt;
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int64_t k = 0; k < n; ++k) {
    const float hk = exp_(delta * Ac[k]) * hc[k] + Bi[k] * dx;
    ho[k] = hk;
    acc += hk * Ci[k];
  }
  if (D) acc += *D * xt;
  if (z) acc *= *z * sigmoid_(*z);
  return acc;
}

}  // namespace mk
