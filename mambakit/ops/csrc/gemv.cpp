// The decode GEMV kernels (gemv.h) exported for ops/step_cpu.py: y (m, n) = x (m, k) · W (n, k)ᵀ ·
// scale (n) + bias (n), the weight rows split over `threads`. See gemv.h for the arithmetic per
// weight format and the reference twins.
#include "gemv.h"

using namespace mk_gemv;

extern "C" {

// Which arithmetic this build uses (tests pick the matching twin): bit 0 = bf16 weights use
// bf16 dot products (x rounded to bf16); bits 1-2 = int8 path: 2 VNNI, 1 AVX2, 0 scalar.
int32_t mk_gemv_arithmetic() {
  int32_t flags = 0;
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
  flags |= 1;
#endif
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
  flags |= 2 << 1;
#elif defined(__AVX2__)
  flags |= 1 << 1;
#endif
  return flags;
}

void mk_gemv_f32(const float* x, int64_t x_stride, const float* w, const float* scale, const float* bias,
                 float* y, int64_t y_stride, int64_t m, int64_t n, int64_t k, int32_t threads) {
  gemv(FloatRows<float>{x, x_stride, w, k}, scale, bias, y, y_stride, m, n, threads);
}
void mk_gemv_bf16(const float* x, int64_t x_stride, const uint16_t* w, const float* scale,
                  const float* bias, float* y, int64_t y_stride, int64_t m, int64_t n, int64_t k,
                  int32_t threads) {
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
  gemv(Bf16DotRows(x, x_stride, m, w, k), scale, bias, y, y_stride, m, n, threads);
#else
  gemv(FloatRows<uint16_t>{x, x_stride, w, k}, scale, bias, y, y_stride, m, n, threads);
#endif
}
void mk_gemv_i8(const float* x, int64_t x_stride, const int8_t* w, const float* scale, const float* bias,
                float* y, int64_t y_stride, int64_t m, int64_t n, int64_t k, int32_t threads) {
  const QuantizedX xq(x, x_stride, m, k);
  gemv(Int8Rows{xq, w, k}, scale, bias, y, y_stride, m, n, threads);
}

}  // extern "C"
