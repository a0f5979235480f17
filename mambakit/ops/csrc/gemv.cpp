// Matrix-vector products for decoding: y (m, n) = x (m, k) · W (n, k)ᵀ · scale (n) + bias (n), m small.
//
// Decoding one token reads every weight once, so a step costs bytes over memory bandwidth. These
// kernels stream each weight row once for all m input rows (batched decode pays for the weights
// once, not m times), convert fp32 / bf16 / int8 weights to fp32 in registers and accumulate in
// fp32. bf16 is the top half of an fp32 (a shift); int8 rows carry one fp32 scale per output
// channel (weight-only quantization). Reference twin: F.linear on the dequantized weight
// (ops/linear.py; tests compare them). Python checks every shape before calling.
#include <cstdint>
#include <cstring>

namespace {

inline float to_f32(float w) { return w; }
inline float to_f32(int8_t w) { return static_cast<float>(w); }
inline float to_f32(uint16_t w) {  // bf16 bits -> fp32
  const uint32_t bits = static_cast<uint32_t>(w) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

constexpr int64_t kRows = 4;  // input rows sharing one pass over a weight row

// R input rows (at x, stride x_stride) dotted with one weight row: acc[q] = x_q · w.
template <int R, typename W>
inline void dots(const float* x, int64_t x_stride, const W* w, int64_t k, float* acc) {
  const float* x0 = x;
  const float* x1 = x + (R > 1 ? x_stride : 0);
  const float* x2 = x + (R > 2 ? 2 * x_stride : 0);
  const float* x3 = x + (R > 3 ? 3 * x_stride : 0);
  float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
  for (int64_t i = 0; i < k; ++i) {
    const float wi = to_f32(w[i]);
    a0 += wi * x0[i];
    if (R > 1) a1 += wi * x1[i];
    if (R > 2) a2 += wi * x2[i];
    if (R > 3) a3 += wi * x3[i];
  }
  acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3;
}

template <typename W>
void gemv(const float* x, int64_t x_stride, const W* w, const float* scale, const float* bias, float* y,
          int64_t y_stride, int64_t m, int64_t n, int64_t k, int32_t threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t j = 0; j < n; ++j) {
    const W* wj = w + j * k;
    const float s = scale ? scale[j] : 1.0f, b = bias ? bias[j] : 0.0f;
    for (int64_t r = 0; r < m; r += kRows) {
      const int64_t rows = m - r < kRows ? m - r : kRows;
      const float* xr = x + r * x_stride;
      float acc[kRows];
      switch (rows) {
        case 1: dots<1>(xr, x_stride, wj, k, acc); break;
        case 2: dots<2>(xr, x_stride, wj, k, acc); break;
        case 3: dots<3>(xr, x_stride, wj, k, acc); break;
        default: dots<4>(xr, x_stride, wj, k, acc); break;
      }
      for (int64_t q = 0; q < rows; ++q) y[(r + q) * y_stride + j] = acc[q] * s + b;
    }
  }
}

}  // namespace

extern "C" {

void mk_gemv_f32(const float* x, int64_t x_stride, const float* w, const float* scale, const float* bias,
                 float* y, int64_t y_stride, int64_t m, int64_t n, int64_t k, int32_t threads) {
  gemv(x, x_stride, w, scale, bias, y, y_stride, m, n, k, threads);
}
void mk_gemv_bf16(const float* x, int64_t x_stride, const uint16_t* w, const float* scale,
                  const float* bias, float* y, int64_t y_stride, int64_t m, int64_t n, int64_t k,
                  int32_t threads) {
  gemv(x, x_stride, w, scale, bias, y, y_stride, m, n, k, threads);
}
void mk_gemv_i8(const float* x, int64_t x_stride, const int8_t* w, const float* scale, const float* bias,
                float* y, int64_t y_stride, int64_t m, int64_t n, int64_t k, int32_t threads) {
  gemv(x, x_stride, w, scale, bias, y, y_stride, m, n, k, threads);
}

}  // extern "C"
