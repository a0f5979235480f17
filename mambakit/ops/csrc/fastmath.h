// Vectorisable elementwise math shared by the fused CPU kernels (no libm calls in float, so
// `omp simd` loops stay vectorised).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace mk {

// exp(x) for float without a libm call, so `omp simd` loops stay vectorised (Cephes expf:
// Cody-Waite reduction x = k ln2 + r, degree-6 polynomial, 2^k built in the exponent bits;
// ~1 ulp). The clamp keeps 2^k a normal float: exp(-87) ~ 1.6e-38 stands in for underflow.
// Ternaries, not fmin/fmax: their NaN rules block vectorisation (a NaN x still yields NaN).
inline float exp_(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float shift = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  float k = (x * 1.44269504088896341f + shift) - shift;
  float r = x - k * 0.693359375f + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}
inline double exp_(double x) { return std::exp(x); }

// GCC vector extensions at the widest width the target has (64 bytes with AVX-512, 32 with AVX,
// else 16): one source for every ISA, so the logic tests check on an AVX2 machine is the logic an
// AVX-512 one runs (the GEMV and the SSD chunk kernels). -std=gnu++17 contracts a * b + c into
// FMAs where the target has them.
#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif
constexpr int64_t kVecLanes = kVecBytes / 4;
typedef float VecF __attribute__((vector_size(kVecBytes)));
inline VecF loadv(const float* p) {
  VecF v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void storev(float* p, VecF v) { std::memcpy(p, &v, sizeof v); }

// exp_ on eight floats at once (GCC vector extension: one AVX register, AVX2 or AVX-512
// machines alike), for kernels that keep vectors in named variables rather than `omp simd` loops.
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
inline v8f exp8(v8f x) {
  x = x < -87.0f ? v8f{} - 87.0f : (x > 88.0f ? v8f{} + 88.0f : x);
  const float shift = 12582912.0f;
  const v8f k = (x * 1.44269504088896341f + shift) - shift;
  const v8f r = x - k * 0.693359375f + k * 2.12194440e-4f;
  v8f p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const v8i bits = (__builtin_convertvector(k, v8i) + 127) << 23;
  return p * reinterpret_cast<const v8f&>(bits);
}
// softplus_ and sigmoid_ on eight floats (same formulas).
inline v8f softplus8(v8f x) {
  const v8f w = exp8(x > 0.0f ? -x : x);
  const v8f s = w / (2.0f + w), s2 = s * s;
  v8f p = s2 * (1.0f / 13) + 1.0f / 11;
  p = p * s2 + 1.0f / 9;
  p = p * s2 + 1.0f / 7;
  p = p * s2 + 1.0f / 5;
  p = p * s2 + 1.0f / 3;
  p = p * s2 + 1.0f;
  return (x > 0.0f ? x : v8f{}) + 2.0f * s * p;
}
inline v8f sigmoid8(v8f x) { return 1.0f / (1.0f + exp8(-x)); }
inline v8f load8(const float* p) { v8f v; std::memcpy(&v, p, sizeof v); return v; }
inline void store8(float* p, v8f v) { std::memcpy(p, &v, sizeof v); }

// softplus(x) = max(x, 0) + log1p(exp(-|x|)); log1p(w) = 2 atanh(w / (2 + w)) as an odd series in
// s = w/(2+w) <= 1/3, accurate to float precision for tiny w and free of libm calls.
inline float softplus_(float x) {
  float w = exp_(x > 0.0f ? -x : x);
  float s = w / (2.0f + w), s2 = s * s;
  float p = 1.0f / 13;
  p = p * s2 + 1.0f / 11;
  p = p * s2 + 1.0f / 9;
  p = p * s2 + 1.0f / 7;
  p = p * s2 + 1.0f / 5;
  p = p * s2 + 1.0f / 3;
  p = p * s2 + 1.0f;
  return (x > 0.0f ? x : 0.0f) + 2.0f * s * p;
}
inline double softplus_(double x) { return x > 20.0 ? x : std::log1p(std::exp(x)); }  // = torch

template <typename T> inline T sigmoid_(T x) { return T(1) / (T(1) + exp_(-x)); }

}  // namespace mk
