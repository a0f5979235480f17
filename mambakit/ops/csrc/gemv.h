// Matrix-vector products for decoding (the kernels; gemv.cpp exports them, mamba_block_step.cpp
// runs them on a thread's share of the rows inside its own parallel region): y (m, n) = x (m, k) · W (n, k)ᵀ · scale (n) + bias (n), m small.
//
// Decoding one token reads every weight once, so a step costs bytes over memory bandwidth — if the
// arithmetic keeps up. Each weight row is read once, as one sequential stream, and dotted with
// every row of x while it sits in cache (batched decode pays for the weights once; rows of x go 4
// at a time, sharing each weight load). Reading 2 or 4 weight rows side by side (shared loads of x)
// ran 2x slower here (Zen 4): the interleaved streams defeat the prefetcher. Per format:
//   fp32  fp32 FMAs.
//   bf16  with avx512_bf16: x rounded to bf16 once per call, then VDPBF16PS (bf16 pairs, fp32
//         accumulation; two weights per 32-bit lane, no conversion). Without it: each weight
//         widened to fp32 (bf16 is the top half of an fp32, a shift) and fp32 FMAs.
//   int8  x quantized on the fly per block of 32 values as llama.cpp's q8_0 (one scale
//         d_b = max|x_b| / 127 per block, kept in fp32), integer dot products per block,
//         Σ_b d_b · dot_b in fp32, times the weight row's scale (per output channel, as stored).
// Reference twins (ops/linear.py): linear_ref on the dequantized weight (x rounded to bf16 where
// the kernel does), linear_q8_ref for int8; tests compare them. Python checks every shape first.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fastmath.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace mk_gemv {
namespace {  // internal linkage: each translation unit that includes this gets its own copy


constexpr int64_t kBlock = 32;  // int8 path: values of x per quantization block (q8_0's)

// ---- fp32 and bf16 weights: fp32 arithmetic ---------------------------------------------------
// On the widest vectors the target has (fastmath.h's VecF).
using mk::kVecBytes;
using mk::VecF;
constexpr int64_t kLanes = mk::kVecLanes;
typedef uint16_t VecH __attribute__((vector_size(kVecBytes / 2)));
typedef uint32_t VecU __attribute__((vector_size(kVecBytes)));

inline float to_f32(float w) { return w; }
inline float to_f32(uint16_t w) {  // bf16 bits -> fp32
  const uint32_t bits = static_cast<uint32_t>(w) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline VecF load(const float* p) { return mk::loadv(p); }
inline VecF load(const uint16_t* p) {  // kLanes bf16 -> fp32: bf16 is the top half of an fp32
#if defined(__AVX512F__)  // one widening load (the generic form compiles to two half-width ones)
  return (VecF)_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16);
#elif defined(__AVX2__)
  return (VecF)_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16);
#else
  VecH h;
  std::memcpy(&h, p, sizeof h);
  VecF f;
  const VecU u = __builtin_convertvector(h, VecU) << 16;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}
inline float hsum(VecF v) {
  float s = 0.0f;
  for (int64_t l = 0; l < kLanes; ++l) s += v[l];
  return s;
}

// out[r] = Σ_i w[i] x[r·xs + i] for R rows of x against one weight row. The weight row is loaded
// (and for bf16 widened) once per R rows; U independent accumulators per row keep the FMA latency
// chain off the critical path. At m = 1 (memory-bound) this is within noise of the single chain
// `omp simd` made (0.9-1.0x of its time on a Zen 3 core); at m = 8 it takes 0.42-0.54x.
// R·U = 4 or 8 accumulators: within 16 AVX2 registers.
template <int R, int U, typename W>
inline void dot_tile(const float* x, int64_t xs, const W* w, int64_t k, float* out) {
  VecF acc[R][U] = {};
  int64_t i = 0;
  for (; i + U * kLanes <= k; i += U * kLanes)
    for (int u = 0; u < U; ++u) {
      const VecF wv = load(w + i + u * kLanes);
      for (int r = 0; r < R; ++r) acc[r][u] += wv * load(x + r * xs + i + u * kLanes);
    }
  for (; i + kLanes <= k; i += kLanes) {
    const VecF wv = load(w + i);
    for (int r = 0; r < R; ++r) acc[r][0] += wv * load(x + r * xs + i);
  }
  for (int r = 0; r < R; ++r) {
    VecF s = acc[r][0];
    for (int u = 1; u < U; ++u) s += acc[r][u];
    out[r] = hsum(s);
    for (int64_t t = i; t < k; ++t) out[r] += to_f32(w[t]) * x[r * xs + t];
  }
}

template <typename W>
struct FloatRows {
  const float* x;
  int64_t x_stride;
  const W* w;
  int64_t k;
  // out[i] = x[r0 + i] · w[j] for i < count: rows in fours (one weight load feeds four FMAs),
  // the rest one at a time with four chains each.
  void dots(int64_t j, int64_t r0, int64_t count, float* out) const {
    const W* wj = w + j * k;
    const float* xr = x + r0 * x_stride;
    int64_t i = 0;
    for (; i + 4 <= count; i += 4) dot_tile<4, 2>(xr + i * x_stride, x_stride, wj, k, out + i);
    for (; i < count; ++i) dot_tile<1, 4>(xr + i * x_stride, x_stride, wj, k, out + i);
  }
};

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
// ---- bf16 weights, bf16 activations, VDPBF16PS ------------------------------------------------
struct Bf16DotRows {
  std::vector<uint16_t> xb;  // x rounded to bf16 (round to nearest even), rows padded with 0 to kp
  int64_t kp;
  const uint16_t* w;
  int64_t k;

  Bf16DotRows(const float* x, int64_t x_stride, int64_t m, const uint16_t* w_, int64_t k_)
      : xb(), kp((k_ + 31) / 32 * 32), w(w_), k(k_) {
    xb.assign(m * kp, 0);
    for (int64_t r = 0; r < m; ++r)
      for (int64_t i = 0; i < k; i += 16) {
        const __mmask16 mask = k - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (k - i)) - 1);
        const __m256bh h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, x + r * x_stride + i));
        _mm256_mask_storeu_epi16(xb.data() + r * kp + i, mask, (__m256i)h);
      }
  }

  float dot(int64_t r, int64_t j) const {
    const uint16_t* xr = xb.data() + r * kp;
    const uint16_t* wj = w + j * k;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < k; i += 32) {  // x is padded; weight rows are not: mask the last load
      const __mmask32 mask = k - i >= 32 ? ~0u : (1u << (k - i)) - 1;
      const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(mask, wj + i);
      acc = _mm512_dpbf16_ps(acc, wv, (__m512bh)_mm512_loadu_si512(xr + i));
    }
    return _mm512_reduce_add_ps(acc);
  }
  void dots(int64_t j, int64_t r0, int64_t count, float* out) const {
    for (int64_t i = 0; i < count; ++i) out[i] = dot(r0 + i, j);
  }
};
#endif

// ---- int8 weights, int8 activations -------------------------------------------------------------
// Round half away from zero, as C's roundf and llama.cpp's q8_0; exact, and vectorisable (floor).
inline float round_away(float v) {
  const float a = std::fabs(v), f = std::floor(a);
  return std::copysign(f + std::floor(2.0f * (a - f)), v);
}

// x (m, k) quantized like llama.cpp's q8_0 (per block of kBlock values b: d_b = max|x_b| / 127,
// q = roundf(x / d_b), as x · (1 / d_b)), with d kept in fp32 (q8_0 stores it in fp16).
// q (m, kp) is zero past k; kp is a multiple of 64 (one 512-bit load).
struct QuantizedX {
  int64_t kp, nb;
  std::vector<int8_t> q;
  std::vector<float> d;  // (m, nb)
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
  std::vector<float> d16;     // (m, kp / 4): each d_b repeated over the 8 int32 lanes of its block
  std::vector<float> offset;  // (m,) 128 · Σ_b d_b Σ q_b: see Int8Rows
#endif

  QuantizedX(const float* x, int64_t x_stride, int64_t m, int64_t k)
      : kp((k + 63) / 64 * 64), nb((k + kBlock - 1) / kBlock), q(m * kp, 0), d(m * nb) {
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
    d16.assign(m * kp / 4, 0.0f);
    offset.assign(m, 0.0f);
#endif
    for (int64_t r = 0; r < m; ++r)
      for (int64_t b = 0; b < nb; ++b) {
        const float* xb = x + r * x_stride + b * kBlock;
        const int64_t len = k - b * kBlock < kBlock ? k - b * kBlock : kBlock;
        float amax = 0.0f;
        for (int64_t i = 0; i < len; ++i) amax = std::fabs(xb[i]) > amax ? std::fabs(xb[i]) : amax;
        const float db = amax / 127.0f, inv = db != 0.0f ? 1.0f / db : 0.0f;
        int8_t* qb = q.data() + r * kp + b * kBlock;
        for (int64_t i = 0; i < len; ++i) qb[i] = static_cast<int8_t>(round_away(xb[i] * inv));  // |.| <= 127
        d[r * nb + b] = db;
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
        int32_t sum = 0;
        for (int64_t i = 0; i < len; ++i) sum += qb[i];
        offset[r] += 128.0f * db * static_cast<float>(sum);
        for (int64_t i = 0; i < kBlock / 4; ++i) d16[r * kp / 4 + b * kBlock / 4 + i] = db;
#endif
      }
  }
};

// Σ_i q_i w_i over the `len` values of one block, in integers (the exact value every path computes).
inline int32_t dot_block_i8(const int8_t* q, const int8_t* w, int64_t len) {
  int32_t s = 0;
  for (int64_t i = 0; i < len; ++i) s += static_cast<int32_t>(q[i]) * w[i];
  return s;
}

// Σ_b d_b (q_b · w_b) for one weight row and one quantized row of x.
struct Int8Rows {
  const QuantizedX& xq;
  const int8_t* w;
  int64_t k;

  float dot(int64_t r, int64_t j) const {
    const int8_t* xr = xq.q.data() + r * xq.kp;
    const int8_t* wj = w + j * k;
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
    // VPDPBUSD multiplies unsigned by signed bytes, 4 products into each int32 lane: feed it
    // w + 128 (w ^ 0x80) and x, then take 128 Σ_b d_b Σ q_b (the same for every row) off the
    // total. One 64-byte load is two blocks: lanes 0-7 the first, 8-15 the second, scaled by d16.
    // The last load is masked (rows are not padded; x is, with zeros).
    const float* d16 = xq.d16.data() + r * xq.kp / 4;
    const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
    // Two accumulator chains (128 bytes per step): measured 1.5x faster on one thread than one chain.
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 128 <= k; i += 128) {
      const __m512i w0 = _mm512_xor_si512(_mm512_loadu_si512(wj + i), flip);
      const __m512i w1 = _mm512_xor_si512(_mm512_loadu_si512(wj + i + 64), flip);
      const __m512i p0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w0, _mm512_loadu_si512(xr + i));
      const __m512i p1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w1, _mm512_loadu_si512(xr + i + 64));
      acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), _mm512_loadu_ps(d16 + i / 4), acc0);
      acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), _mm512_loadu_ps(d16 + i / 4 + 16), acc1);
    }
    for (; i < k; i += 64) {
      const __mmask64 mask = k - i >= 64 ? ~0ull : (1ull << (k - i)) - 1;
      const __m512i wu = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, wj + i), flip);
      const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wu, _mm512_loadu_si512(xr + i));
      acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_loadu_ps(d16 + i / 4), acc0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) - xq.offset[r];
#else
    const float* d = xq.d.data() + r * xq.nb;
    const int64_t full = k / kBlock;  // whole blocks to SIMD, the partial last one to scalar code
#if defined(__AVX2__)
    // VPMADDUBSW multiplies unsigned by signed bytes into saturating int16 pairs: feed it |x| and
    // w with x's sign (|pair| <= 2·127·127 < 2^15, no saturation), then pairs of int16 into int32.
    const __m256i ones = _mm256_set1_epi16(1);
    const auto block = [&](int64_t b) {  // Σ within block b, as 8 fp32 lanes (exact integers)
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr + b * kBlock));
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wj + b * kBlock));
      const __m256i pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(xv), _mm256_sign_epi8(wv, xv));
      return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
    };
    // Two accumulator chains (even and odd blocks): one chain's FMA latency bounds batched decode.
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= full; b += 2) {
      acc0 = _mm256_fmadd_ps(block(b), _mm256_set1_ps(d[b]), acc0);
      acc1 = _mm256_fmadd_ps(block(b + 1), _mm256_set1_ps(d[b + 1]), acc1);
    }
    if (b < full) acc0 = _mm256_fmadd_ps(block(b), _mm256_set1_ps(d[b]), acc0);
    const __m256 acc = _mm256_add_ps(acc0, acc1);
    const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    float total = _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
#else
    float total = 0.0f;
    for (int64_t b = 0; b < full; ++b)
      total += d[b] * static_cast<float>(dot_block_i8(xr + b * kBlock, wj + b * kBlock, kBlock));
#endif
    if (full < xq.nb)
      total += d[full] * static_cast<float>(dot_block_i8(xr + full * kBlock, wj + full * kBlock, k - full * kBlock));
    return total;
#endif
  }
  void dots(int64_t j, int64_t r0, int64_t count, float* out) const {
    for (int64_t i = 0; i < count; ++i) out[i] = dot(r0 + i, j);
  }
};

// y[r, j] = x[r] · w[j] · scale[j] + bias[j] for the weight rows j in [j0, j1), on the calling
// thread. Within a block of kColBlock weight rows, rows of x go kRowChunk at a time (kRowChunk · k
// fp32 values stay in L1) against every weight row of the block (kColBlock rows stay in L2): the
// weights are read from memory once per call, and batched decode (m up to 64) is not starved by
// re-reading x from L2 for every weight row (measured 1.2 vs 5.5 GB/s of bf16 weights at m = 32
// vs 8 before).
constexpr int64_t kRowChunk = 4, kColBlock = 32;

template <typename Rows>
void gemv_range(const Rows& rows, const float* scale, const float* bias, float* y, int64_t y_stride, int64_t m,
                int64_t j0, int64_t j1) {
  float out[kRowChunk];
  for (int64_t jb = j0; jb < j1; jb += kColBlock) {
    const int64_t j_end = j1 - jb < kColBlock ? j1 : jb + kColBlock;
    for (int64_t r0 = 0; r0 < m; r0 += kRowChunk) {
      const int64_t count = m - r0 < kRowChunk ? m - r0 : kRowChunk;
      for (int64_t j = jb; j < j_end; ++j) {
        rows.dots(j, r0, count, out);
        const float s = scale ? scale[j] : 1.0f, b = bias ? bias[j] : 0.0f;
        for (int64_t i = 0; i < count; ++i) y[(r0 + i) * y_stride + j] = out[i] * s + b;
      }
    }
  }
}

// The same over all n rows, blocks of kColBlock weight rows split over `threads` in contiguous runs.
template <typename Rows>
void gemv(const Rows& rows, const float* scale, const float* bias, float* y, int64_t y_stride, int64_t m,
          int64_t n, int32_t threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t jb = 0; jb < n; jb += kColBlock)
    gemv_range(rows, scale, bias, y, y_stride, m, jb, n - jb < kColBlock ? n : jb + kColBlock);
}

// Calls f(rows) with the Rows of a weight in `format` (0 fp32, 1 bf16 bits, 2 int8 with per-row
// scales) for x (m, k): x is prepared (rounded to bf16, quantized as q8_0) once, for every call of f.
template <typename F>
void with_rows(int32_t format, const void* w, const float* x, int64_t x_stride, int64_t m, int64_t k, F&& f) {
  if (format == 1) {
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
    f(Bf16DotRows(x, x_stride, m, static_cast<const uint16_t*>(w), k));
#else
    f(FloatRows<uint16_t>{x, x_stride, static_cast<const uint16_t*>(w), k});
#endif
  } else if (format == 2) {
    const QuantizedX xq(x, x_stride, m, k);
    f(Int8Rows{xq, static_cast<const int8_t*>(w), k});
  } else {
    f(FloatRows<float>{x, x_stride, static_cast<const float*>(w), k});
  }
}

}  // namespace
}  // namespace mk_gemv
