// The chunked SSD forward (Dao & Gu 2024, §7) fused into one pass over the chunks on CPU: the
// core of ops/ssd_chunk_scan.py's ChunkScan (same inputs: Δx, log Ā = ΔA, B, C, initial state,
// packed-document index), without the D skip and gate.
//
// Why fused: in PyTorch each step is a separate op over (b, c, h, Q, Q) or (b, c, h, n, p)
// tensors (decay mask, its exp, C·Bᵀ ∘ L, the chunk states, state passing, outputs from states);
// each pass streams tens of MB through memory and the state passing runs c small ops per layer.
// Here one thread owns a share of the (batch, head) pairs and walks the chunks in order (the heads
// of a block inner, see run_pairs), so each state (n × p, 32 KB at n=128, p=64) stays in cache
// and never round-trips through memory, and the products run in a register-tiled kernel (tile).
// C·Bᵀ (shared by the heads of a group) comes in precomputed: it is a plain batched GEMM, which
// the BLAS does best.
//
// Per chunk of Qk positions (Qk = Q except for a short last chunk), with cum_t = Σ_{r≤t} a_r:
//   y_t   = into_t · C_t · S  +  Σ_{s≤t} CB[t, s] · exp(cum_t − cum_s) · Δx_s       (Y_off + Y_diag)
//   S    <- through · S  +  Σ_s exp(cum_last − cum_s) · B_s ⊗ Δx_s                 (state passing)
// with into_t = exp(cum_t), through = exp(cum_last), and a position reaching another only inside
// one packed document (seg equal; the carried state only while seg == 0), as _decays in
// ssd_chunk_scan.py. S is kept transposed (n × p) so both updates run along p.
// Reference twin: ChunkScan's PyTorch forward (and ssd_scan_ref); tests compare them. The Python
// side (ops/ssd_chunk_scan.py) checks every shape and dtype before calling.
//
// Prefill passes x (rows at stride xs), Δ and optionally D and z instead of xdt: Δx is built per
// chunk in cache and the D skip and gate applied to each output row while it is there, which saves
// three full passes over (b, l, h, p) tensors (ssd_cpu.py's inference path).
// Layouts, all contiguous fp32 unless strided: xdt, y (b, l, h, p); a (b, l, h); B, C (b, l, g, n);
// CB (b, c, g, Q, Q) with CB[t, s] = C_{kQ+t} · B_{kQ+s} (rows/columns past l unused); h0, final
// (b, h, p, n); seg (b, c, Q) int64 or NULL; H (b, c, g, n, hg·p) or NULL: the state entering each
// chunk, head j of a group in columns [j·p, (j+1)·p) — the layout ChunkScan's backward reads.
// Loops calling exp_ / sigmoid_ vectorise because every kernel builds with -fno-trapping-math
// (cpu_kernels.FLAGS).
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fastmath.h"

using namespace mk;

namespace {

// exp for decays: exactly 0 below exp_'s clamp (never 1.6e-38), so a long-decayed state does not
// turn into denormals that then crawl through every later multiply.
inline float decay_(float x) { return x < -87.0f ? 0.0f : exp_(x); }

struct Problem {
  const float *xdt, *a, *B, *C, *CB, *h0;
  const int64_t* seg;
  float *y, *final, *H;
  int64_t b, l, h, p, g, n, Q, c;
  // Prefill's fused prologue/epilogue (x non-NULL, xdt NULL): Δx built per chunk from x (rows at
  // stride xs) and Δ (b, l, h); then y += D x (D per head, or per channel if D_per_channel) and
  // y *= SiLU(z) (rows at stride zs) when D / z are given.
  // Δ itself is made here too: Δ = clamp(softplus?(dt + dt_bias), lo, hi), dt rows at stride dts,
  // and log Ā = Δ A; B and C rows at stride bs (views into the conv output).
  const float *x, *dt, *D, *z, *dt_bias, *A;
  int64_t xs, zs, dts, bs;
  int32_t D_per_channel, softplus;
  float dt_lo, dt_hi;
};

constexpr int64_t kLanes = kVecLanes;  // floats per VecF (fastmath.h): the widest vector the target has

// out (R × NV·kLanes) = beta · out + A (R × K) · Bm (K × NV·kLanes), A[i, k] at A[i·ars + k·acs]
// (acs != 1 reads A transposed, e.g. Bᵀ straight from B's rows); beta = 0 never reads out.
// The register tile of the small matrix products below: R·NV accumulators plus NV rows of Bm and
// one broadcast must fit the 16 vector registers of AVX2 (6 × 2 + 2 + 1 = 15), else the
// accumulators spill to the stack and every FMA pays a load and a store (the previous 4 × 32
// float tile did: 16 accumulators alone).
template <int R, int NV>
inline void tile(float* __restrict out, int64_t ldo, const float* __restrict A, int64_t ars,
                 int64_t acs, const float* __restrict Bm, int64_t ldb, int64_t K, float beta) {
  VecF acc[R][NV];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = beta == 0.0f ? VecF{} : beta * loadv(out + i * ldo + v * kLanes);
  for (int64_t k = 0; k < K; ++k) {
    VecF b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = loadv(Bm + k * ldb + v * kLanes);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      const float s = A[i * ars + k * acs];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] += s * b[v];
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) storev(out + i * ldo + v * kLanes, acc[i][v]);
}

// The same for a column tail narrower than one vector, one column at a time.
template <int R>
inline void tile_col(float* out, int64_t ldo, const float* A, int64_t ars, int64_t acs,
                     const float* Bm, int64_t ldb, int64_t K, float beta) {
  float acc[R];
  for (int i = 0; i < R; ++i) acc[i] = beta == 0.0f ? 0.0f : beta * out[i * ldo];
  for (int64_t k = 0; k < K; ++k)
    for (int i = 0; i < R; ++i) acc[i] += A[i * ars + k * acs] * Bm[k * ldb];
  for (int i = 0; i < R; ++i) out[i * ldo] = acc[i];
}

template <int R>
inline void tile_rows(float* out, int64_t ldo, const float* A, int64_t ars, int64_t acs,
                      const float* Bm, int64_t ldb, int64_t K, int64_t cols, float beta) {
  int64_t w = 0;
  for (; w + 2 * kLanes <= cols; w += 2 * kLanes) tile<R, 2>(out + w, ldo, A, ars, acs, Bm + w, ldb, K, beta);
  for (; w + kLanes <= cols; w += kLanes) tile<R, 1>(out + w, ldo, A, ars, acs, Bm + w, ldb, K, beta);
  for (; w < cols; ++w) tile_col<R>(out + w, ldo, A, ars, acs, Bm + w, ldb, K, beta);
}

constexpr int64_t kRows = 6;  // rows per register tile

// out (rows × cols) = beta · out + A (rows × K) · Bm (K × cols). With `lower` >= 0, row i only
// needs k < lower + i + 1 (A is zero beyond: a triangular block after `lower` dense columns), so a
// block of rows stops at its last row's diagonal.
inline void gemm(float* out, int64_t ldo, const float* A, int64_t ars, int64_t acs, const float* Bm,
                 int64_t ldb, int64_t rows, int64_t K, int64_t cols, float beta = 1.0f,
                 int64_t lower = -1) {
  int64_t i = 0;
  auto k_of = [&](int64_t r) { return lower < 0 ? K : std::min(K, lower + i + r); };
  for (; i + kRows <= rows; i += kRows)
    tile_rows<kRows>(out + i * ldo, ldo, A + i * ars, ars, acs, Bm, ldb, k_of(kRows), cols, beta);
  float* o = out + i * ldo;
  const float* a = A + i * ars;
  switch (rows - i) {
    case 5: tile_rows<5>(o, ldo, a, ars, acs, Bm, ldb, k_of(5), cols, beta); break;
    case 4: tile_rows<4>(o, ldo, a, ars, acs, Bm, ldb, k_of(4), cols, beta); break;
    case 3: tile_rows<3>(o, ldo, a, ars, acs, Bm, ldb, k_of(3), cols, beta); break;
    case 2: tile_rows<2>(o, ldo, a, ars, acs, Bm, ldb, k_of(2), cols, beta); break;
    case 1: tile_rows<1>(o, ldo, a, ars, acs, Bm, ldb, k_of(1), cols, beta); break;
    default: break;
  }
}

// One thread per (batch, head) pair at a time, each with its own `work` floats of scratch (the
// backward's walk; the forward's is run_pairs).
template <class Run>
void for_each_head(int64_t b, int64_t h, int64_t work, int32_t threads, Run run) {
  const int nt = threads > 0 ? threads : omp_get_max_threads();
#pragma omp parallel num_threads(nt)
  {
    std::vector<float> buf(work);
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < b * h; ++bh) run(bh / h, bh % h, buf.data());
  }
}

// Chunk k of the (batch, head) pair (bi, hi). SX: the pair's [S; X] ((n + Q) × p): its state S
// (n × p), carried from chunk to chunk, with the chunk's Δx right below it, so the outputs are one
// product [into ∘ C | M] · [S; X]. work: AC (Q × (n + Q)), to_end ∘ Δx (Q × p), cum / into /
// to_end / Δ (Q each).
void run_chunk(const Problem& P, int64_t bi, int64_t hi, int64_t k, float* SX, float* work) {
  const int64_t p = P.p, n = P.n, Q = P.Q, h = P.h, g = P.g;
  const int64_t hg = h / g, gi = hi / hg, j = hi % hg, K = n + Q;
  float* S = SX;
  float* Xc = S + n * p;
  float* AC = work;
  float* Xw = AC + Q * K;
  float *cum = Xw + Q * p, *into = cum + Q, *to_end = into + Q;
  float* delta = to_end + Q;

  const int64_t xrow = h * p, arow = h, brow = P.bs;  // strides between positions
  const int64_t t0 = k * Q, Qk = std::min(Q, P.l - t0), last = Qk - 1;
  const float* Bk = P.B + (bi * P.l + t0) * brow + gi * n;
  const float* Ck = P.C + (bi * P.l + t0) * brow + gi * n;
  const float* CBk = P.CB + ((bi * P.c + k) * g + gi) * Q * Q;
  const int64_t* sk = P.seg ? P.seg + (bi * P.c + k) * Q : nullptr;
  float* yk = P.y + (bi * P.l + t0) * xrow + hi * p;

  float run = 0.0f;
  if (P.x) {  // Δ, log Ā and Δx for this chunk and head
    const float* dtr = P.dt + (bi * P.l + t0) * P.dts + hi;
    const float bias = P.dt_bias ? P.dt_bias[hi] : 0.0f, Ah = P.A[hi];
    for (int64_t t = 0; t < Qk; ++t) {
      float d = dtr[t * P.dts] + bias;
      if (P.softplus) d = softplus_(d);
      delta[t] = d < P.dt_lo ? P.dt_lo : (d > P.dt_hi ? P.dt_hi : d);
      cum[t] = (run += delta[t] * Ah);
    }
    const float* xr = P.x + (bi * P.l + t0) * P.xs + hi * p;
    for (int64_t t = 0; t < Qk; ++t) {
      const float d = delta[t];
#pragma omp simd
      for (int64_t q = 0; q < p; ++q) Xc[t * p + q] = xr[t * P.xs + q] * d;
    }
  } else {
    const float* ak = P.a + (bi * P.l + t0) * arow + hi;
    const float* xk = P.xdt + (bi * P.l + t0) * xrow + hi * p;
    for (int64_t t = 0; t < Qk; ++t) cum[t] = (run += ak[t * arow]);
    for (int64_t t = 0; t < Qk; ++t) std::copy(xk + t * xrow, xk + t * xrow + p, Xc + t * p);
  }
  const int64_t seg_last = sk ? sk[last] : 0;
  for (int64_t t = 0; t < Qk; ++t) {
    into[t] = (!sk || sk[t] == 0) ? decay_(cum[t]) : 0.0f;
    to_end[t] = (!sk || sk[t] == seg_last) ? decay_(cum[last] - cum[t]) : 0.0f;
  }
  const float through = seg_last == 0 ? decay_(cum[last]) : 0.0f;

  if (P.H) {  // the state entering this chunk, for the backward
    float* Hk = P.H + ((bi * P.c + k) * g + gi) * n * hg * p + j * p;
    for (int64_t r = 0; r < n; ++r) std::copy(S + r * p, S + (r + 1) * p, Hk + r * hg * p);
  }

  // Row t of AC: into_t · C_t, then M[t, :] = (CB ∘ L)[t, :], the intra-chunk "attention"
  // weights, zero above the diagonal.
  for (int64_t t = 0; t < Qk; ++t) {
    const float* ct_row = Ck + t * brow;
    float* ac = AC + t * K;
    const float it = into[t];
#pragma omp simd
    for (int64_t r = 0; r < n; ++r) ac[r] = it * ct_row[r];
    const float* cb = CBk + t * Q;
    float* m = ac + n;
    const float ct = cum[t];
    if (sk) {
      const int64_t st = sk[t];
      for (int64_t s = 0; s <= t; ++s) m[s] = sk[s] == st ? cb[s] * decay_(ct - cum[s]) : 0.0f;
    } else {
#pragma omp simd
      for (int64_t s = 0; s <= t; ++s) m[s] = cb[s] * decay_(ct - cum[s]);
    }
    std::fill(m + t + 1, m + Qk, 0.0f);
  }

  // Outputs: y_t = into_t · (C_t S) + Σ_{s≤t} M[t, s] Δx_s, one product over K = n + Qk.
  gemm(yk, xrow, AC, K, 1, S, p, Qk, n + Qk, p, 0.0f, n);
  if (P.x && (P.D || P.z)) {  // the D skip and the gate, while the rows are in cache
    const float* xr = P.x + (bi * P.l + t0) * P.xs + hi * p;
    const float* zr = P.z ? P.z + (bi * P.l + t0) * P.zs + hi * p : nullptr;
    const float* Dh = P.D ? P.D + (P.D_per_channel ? hi * p : hi) : nullptr;
    for (int64_t t = 0; t < Qk; ++t) {
      float* yt = yk + t * xrow;
      const float* xt = xr + t * P.xs;
      if (Dh) {
        if (P.D_per_channel) {
#pragma omp simd
          for (int64_t q = 0; q < p; ++q) yt[q] += Dh[q] * xt[q];
        } else {
#pragma omp simd
          for (int64_t q = 0; q < p; ++q) yt[q] += Dh[0] * xt[q];
        }
      }
      if (zr) {
        const float* zt = zr + t * P.zs;
#pragma omp simd
        for (int64_t q = 0; q < p; ++q) yt[q] *= zt[q] * sigmoid_(zt[q]);
      }
    }
  }

  // State passing: S <- through · S + Bᵀ (to_end ∘ Δx) (rows of S along n; Bᵀ read in place).
  for (int64_t s = 0; s < Qk; ++s) {
    const float w = to_end[s];
#pragma omp simd
    for (int64_t q = 0; q < p; ++q) Xw[s * p + q] = w * Xc[s * p + q];
  }
  gemm(S, p, Bk, 1, brow, Xw, p, n, Qk, p, through);
}

// The pairs of one thread's share, [first, last), walked chunk by chunk with the heads inner, in
// blocks of up to kHeadBlock pairs. The rows of x, z, B, C, Δ and y are (b, l, ·) matrices whose
// positions lie a whole row apart (6-13 KB at the 130M shape), so a pair walking all its chunks
// alone touched a new 4 KB page at every position, ~8000 pages per pair: past the TLB's reach
// and the prefetchers', and the strided row loads stalled for about as long as the products took
// (perf, 130M shape). A block of heads at the same chunk reads those rows side by side (one page
// walk and one miss per row for the block) and shares B and C while they are in L1. Its states
// (48 KB per pair with the Δx rows) then live in L2/L3, which costs less: on one Zen 3 core,
// kernel time relative to blocks of 8 pairs: 4 -> 1.07, 12 -> 0.95, 16 -> 0.98, 24 (all) -> 0.92;
// 32 holds all heads of a 130M or 370M layer.
constexpr int64_t kHeadBlock = 32;

void run_pairs(const Problem& P, int64_t first, int64_t last, float* SX, float* work) {
  const int64_t p = P.p, n = P.n, Q = P.Q, h = P.h, slot = (n + Q) * p;
  for (int64_t b0 = first; b0 < last; b0 += kHeadBlock) {
    const int64_t b1 = std::min(last, b0 + kHeadBlock);
    for (int64_t bh = b0; bh < b1; ++bh) {
      float* S = SX + (bh - b0) * slot;
      if (P.h0) {
        const float* h0 = P.h0 + bh * p * n;
        for (int64_t c = 0; c < p; ++c)
          for (int64_t k = 0; k < n; ++k) S[k * p + c] = h0[c * n + k];
      } else {
        std::fill(S, S + n * p, 0.0f);
      }
    }
    for (int64_t k = 0; k < P.c; ++k)
      for (int64_t bh = b0; bh < b1; ++bh) run_chunk(P, bh / h, bh % h, k, SX + (bh - b0) * slot, work);
    for (int64_t bh = b0; bh < b1; ++bh) {
      const float* S = SX + (bh - b0) * slot;
      float* fin = P.final + bh * p * n;
      for (int64_t c = 0; c < p; ++c)
        for (int64_t k = 0; k < n; ++k) fin[c * n + k] = S[k * p + c];
    }
  }
}

}  // namespace

extern "C" {

void mk_ssd_chunk_fwd_f32(const float* xdt, const float* a, const float* B, const float* C,
                          const float* CB, const float* h0, const int64_t* seg, float* y,
                          float* final, float* H, int64_t b, int64_t l, int64_t h, int64_t p,
                          int64_t g, int64_t n, int64_t Q, int64_t bs, const float* x, int64_t xs,
                          const float* dt, int64_t dts, const float* dt_bias, int32_t softplus,
                          float dt_lo, float dt_hi, const float* A, const float* D,
                          int32_t D_per_channel, const float* z, int64_t zs, int32_t threads) {
  const Problem P{xdt, a, B, C, CB, h0, seg, y, final, H, b, l, h, p, g, n, Q, (l + Q - 1) / Q,
                  x, dt, D, z, dt_bias, A, xs, zs, dts, bs, D_per_channel, softplus, dt_lo, dt_hi};
  const int64_t nt = threads > 0 ? threads : omp_get_max_threads(), pairs = b * h;
#pragma omp parallel num_threads(nt)
  {
    // a contiguous share of the pairs per thread, so its head blocks read neighbouring columns
    const int64_t tid = omp_get_thread_num(), nth = omp_get_num_threads();
    const int64_t first = pairs * tid / nth, last = pairs * (tid + 1) / nth;
    std::vector<float> SX(std::min(kHeadBlock, last - first) * (n + Q) * p), work(Q * (n + Q) + Q * p + 4 * Q);
    run_pairs(P, first, last, SX.data(), work.data());
  }
}

}  // extern "C"

// ---- backward --------------------------------------------------------------------------------
// ChunkScan's backward (the PyTorch one in ssd_chunk_scan.py is its twin), one pass per
// (batch, head) walking the chunks backwards with the state gradient dS (n × p) in cache, as the
// forward walks them forwards. Per chunk, with S the state entering it (from H), X = Δx, M = CB ∘ L:
//   d(into ∘ C S):  dC_t = into_t dy_t Sᵀ,  dS += Cᵀ (into ∘ dy),  dcum_t += dC_t · C_t
//   state passing:  dB_s = to_end_s Δx_s dS_nextᵀ,  dX_s = to_end_s B_s dS_next,
//                   dcum_s -= d to_end_s,  dcum_last += Σ d to_end + d through
//   intra-chunk:    dM = dy Xᵀ,  dX += Mᵀ dy,  dCB = dM ∘ L,  dcum_t += Σ_s dM∘M,  dcum_s -= Σ_t dM∘M
//   da = reverse cumulative sum of dcum within the chunk.
// dB, dC and dCB are per head here (heads of a group share B and C, and heads run on different
// threads): the caller sums them over the group and turns dCB into B and C gradients with two
// batched GEMMs. Inputs are padded to whole chunks (l = c·Q), all contiguous.
namespace {

struct BwdProblem {
  const float *xdt, *a, *B, *C, *CB, *H, *dy, *dfinal;
  const int64_t* seg;
  float *dx, *da, *dB, *dC, *dCB, *dh0;
  int64_t b, l, h, p, g, n, Q, c;
};

// dst (cols × rows, contiguous) = srcᵀ, src (rows × cols) at row stride lds; in 8 × 8 blocks (a
// plain loop, writing at a stride of `rows` floats, was the hottest spot of this kernel's own code).
inline void transpose(const float* src, int64_t rows, int64_t cols, int64_t lds, float* dst) {
  int64_t r0 = 0;
  for (; r0 + 8 <= rows; r0 += 8) {
    int64_t q0 = 0;
    for (; q0 + 8 <= cols; q0 += 8)
      for (int64_t q = q0; q < q0 + 8; ++q)
#pragma omp simd
        for (int64_t r = r0; r < r0 + 8; ++r) dst[q * rows + r] = src[r * lds + q];
    for (int64_t q = q0; q < cols; ++q)
      for (int64_t r = r0; r < r0 + 8; ++r) dst[q * rows + r] = src[r * lds + q];
  }
  for (int64_t r = r0; r < rows; ++r)
    for (int64_t q = 0; q < cols; ++q) dst[q * rows + r] = src[r * lds + q];
}

void run_head_bwd(const BwdProblem& P, int64_t bi, int64_t hi, float* work) {
  const int64_t p = P.p, n = P.n, Q = P.Q, h = P.h, g = P.g;
  const int64_t hg = h / g, gi = hi / hg, j = hi % hg, last = Q - 1;
  float* dS = work;              // n × p: the gradient of the state leaving the current chunk
  float* dSo = dS + n * p;       // n × p
  float* T = dSo + n * p;        // p × n: a transposed state or state gradient
  float* dYi = T + p * n;        // Q × p
  float* Xw = dYi + Q * p;       // Q × p
  float* BdS = Xw + Q * p;       // Q × p
  float* XT = BdS + Q * p;       // p × Q
  float* M = XT + p * Q;         // Q × Q
  float* L = M + Q * Q;          // Q × Q
  float* dM = L + Q * Q;         // Q × Q
  float *cum = dM + Q * Q, *into = cum + Q, *to_end = into + Q, *dcum = to_end + Q;

  if (P.dfinal) {
    transpose(P.dfinal + (bi * h + hi) * p * n, p, n, n, dS);
  } else {
    std::fill(dS, dS + n * p, 0.0f);
  }
  const int64_t xrow = h * p, brow = g * n;
  for (int64_t k = P.c - 1; k >= 0; --k) {
    const int64_t t0 = k * Q;
    const float* xk = P.xdt + (bi * P.l + t0) * xrow + hi * p;
    const float* dyk = P.dy + (bi * P.l + t0) * xrow + hi * p;
    float* dxk = P.dx + (bi * P.l + t0) * xrow + hi * p;
    const float* ak = P.a + (bi * P.l + t0) * h + hi;
    const float* Bk = P.B + (bi * P.l + t0) * brow + gi * n;
    const float* Ck = P.C + (bi * P.l + t0) * brow + gi * n;
    const float* CBk = P.CB + ((bi * P.c + k) * g + gi) * Q * Q;
    const float* Sk = P.H + ((bi * P.c + k) * g + gi) * n * hg * p + j * p;  // n rows at stride hg·p
    const int64_t* sk = P.seg ? P.seg + (bi * P.c + k) * Q : nullptr;
    float* dBk = P.dB + ((bi * h + hi) * P.l + t0) * n;
    float* dCk = P.dC + ((bi * h + hi) * P.l + t0) * n;
    float* dCBk = P.dCB + ((bi * h + hi) * P.c + k) * Q * Q;

    float run = 0.0f;
    for (int64_t t = 0; t < Q; ++t) cum[t] = (run += ak[t * h]);
    const int64_t seg_last = sk ? sk[last] : 0;
    for (int64_t t = 0; t < Q; ++t) {
      into[t] = (!sk || sk[t] == 0) ? decay_(cum[t]) : 0.0f;
      to_end[t] = (!sk || sk[t] == seg_last) ? decay_(cum[last] - cum[t]) : 0.0f;
      dcum[t] = 0.0f;
    }
    const float through = seg_last == 0 ? decay_(cum[last]) : 0.0f;

    // Outputs from the entering state: dC = (into ∘ dy) Sᵀ, dS_out = Cᵀ (into ∘ dy).
    for (int64_t t = 0; t < Q; ++t) {
      const float s = into[t];
#pragma omp simd
      for (int64_t q = 0; q < p; ++q) dYi[t * p + q] = s * dyk[t * xrow + q];
    }
    transpose(Sk, n, p, hg * p, T);
    gemm(dCk, n, dYi, p, 1, T, n, Q, p, n, 0.0f);
    for (int64_t t = 0; t < Q; ++t) {
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int64_t r = 0; r < n; ++r) acc += dCk[t * n + r] * Ck[t * brow + r];
      dcum[t] += acc;
    }
    gemm(dSo, p, Ck, 1, brow, dYi, p, n, Q, p, 0.0f);

    // State passing, with dS = the gradient of the state leaving this chunk.
    float dthrough = 0.0f;
    for (int64_t r = 0; r < n; ++r) {
      const float* sr = Sk + r * hg * p;
#pragma omp simd reduction(+ : dthrough)
      for (int64_t q = 0; q < p; ++q) dthrough += dS[r * p + q] * sr[q];
    }
    dthrough *= through;
    for (int64_t s = 0; s < Q; ++s) {
      const float w = to_end[s];
#pragma omp simd
      for (int64_t q = 0; q < p; ++q) Xw[s * p + q] = w * xk[s * xrow + q];
    }
    transpose(dS, n, p, p, T);
    gemm(dBk, n, Xw, p, 1, T, n, Q, p, n, 0.0f);
    gemm(BdS, p, Bk, brow, 1, dS, p, Q, n, p, 0.0f);
    float dto_end_sum = 0.0f;
    for (int64_t s = 0; s < Q; ++s) {
      const float w = to_end[s];
      const float* xs = xk + s * xrow;
      float* dxs = dxk + s * xrow;
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int64_t q = 0; q < p; ++q) {
        acc += BdS[s * p + q] * xs[q];
        dxs[q] = w * BdS[s * p + q];
      }
      const float dte = acc * w;
      dcum[s] -= dte;
      dto_end_sum += dte;
    }
    dcum[last] += dto_end_sum + dthrough;
#pragma omp simd
    for (int64_t q = 0; q < n * p; ++q) dS[q] = through * dS[q] + dSo[q];  // now: entering this chunk

    // Intra-chunk: M = CB ∘ L; dM = dy Xᵀ; dX += Mᵀ dy; dCB = dM ∘ L; d cum from dM ∘ M.
    for (int64_t t = 0; t < Q; ++t) {
      const float ct = cum[t];
      for (int64_t s = 0; s < Q; ++s) {
        const bool on = s <= t && (!sk || sk[s] == sk[t]);
        L[t * Q + s] = on ? decay_(ct - cum[s]) : 0.0f;
        M[t * Q + s] = L[t * Q + s] * CBk[t * Q + s];
      }
    }
    transpose(xk, Q, p, xrow, XT);
    gemm(dM, Q, dyk, xrow, 1, XT, Q, Q, p, Q, 0.0f);
    gemm(dxk, xrow, M, 1, Q, dyk, xrow, Q, Q, p);
    for (int64_t t = 0; t < Q; ++t) {
      float row = 0.0f;
      for (int64_t s = 0; s < Q; ++s) {
        const float pm = dM[t * Q + s] * M[t * Q + s];
        dCBk[t * Q + s] = dM[t * Q + s] * L[t * Q + s];
        row += pm;
        dcum[s] -= pm;
      }
      dcum[t] += row;
    }

    // back through the cumulative sum
    float acc = 0.0f;
    for (int64_t t = last; t >= 0; --t) {
      acc += dcum[t];
      P.da[(bi * P.l + t0 + t) * h + hi] = acc;
    }
  }
  if (P.dh0) transpose(dS, n, p, p, P.dh0 + (bi * h + hi) * p * n);
}

}  // namespace

extern "C" {

void mk_ssd_chunk_bwd_f32(const float* xdt, const float* a, const float* B, const float* C,
                          const float* CB, const float* H, const int64_t* seg, const float* dy,
                          const float* dfinal, float* dx, float* da, float* dB, float* dC, float* dCB,
                          float* dh0, int64_t b, int64_t l, int64_t h, int64_t p, int64_t g, int64_t n,
                          int64_t Q, int32_t threads) {
  const BwdProblem P{xdt, a, B, C, CB, H, dy, dfinal, seg, dx, da, dB, dC, dCB, dh0,
                     b, l, h, p, g, n, Q, l / Q};
  const int64_t work = 3 * n * p + 4 * Q * p + 3 * Q * Q + 4 * Q;
  for_each_head(b, h, work, threads, [&](int64_t bi, int64_t hi, float* buf) { run_head_bwd(P, bi, hi, buf); });
}

}  // extern "C"
