// Fused selective scan (S6) on CPU: forward and checkpointed backward in one pass per channel.
//
// Plain C++17 + OpenMP, no torch headers, so it compiles in ~1 s at first use (see scan_cpu.py).
// Names follow mambakit/ops/scan.py. One (batch, channel) pair is one independent recurrence over
// time; pairs are spread over threads, and the state dimension n is the stride-1 inner loop the
// compiler vectorises (`omp simd`). The expanded state (b, d, l, n) is never written to memory:
// the forward keeps h (n values) in registers/L1 and, when a backward will follow, saves h only at
// the start of every `chunk` steps; the backward recomputes each chunk's states from its
// checkpoint and runs the reverse-time recurrence over them.
//
// Layouts (all contiguous): u, delta, z, out, du, ddelta, dz (b, d, l); A (d, n); B, C (b, g, l, n)
// (transposed in Python so the n loop is stride-1); D, delta_bias (d); reset (b, l) uint8;
// h0, last, dlast, dh0 (b, d, n); ckpt (b, d, ceil(l/chunk), n); v (b, d, l) = C·h + D u before
// the gate, written by the forward when a backward will need dz. Gradients shared across
// channels are written as partials and summed in Python, so threads never write the same memory:
// dA (b, d, n) and dD (b, d) per batch row, dB and dC (threads, b, g, l, n) per thread.
// ddelta is the gradient of the raw delta (through bias and softplus); d(delta_bias) is its sum.
// Float uses a polynomial exp (fastmath.h) and templates on n = 16; double (for gradcheck) uses libm.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <omp.h>

#include "fastmath.h"

struct ScanArgs {
  const void *u, *delta, *A, *B, *C, *D, *z, *delta_bias, *h0;
  const uint8_t *reset;
  void *out, *last, *ckpt, *v;
  const void *dout, *dlast;
  void *du, *ddelta, *dA, *dB, *dC, *dD, *dz, *dh0;
  int64_t b, d, l, n, g, chunk;
  int32_t softplus, threads;
};

namespace {
using namespace mk;

// Δ row of one channel: delta + bias, then softplus; a vectorisable pass over time.
template <typename T>
void delta_row(const T* delta, T bias, bool softplus, int64_t l, T* dt) {
  if (softplus) {
#pragma omp simd
    for (int64_t t = 0; t < l; ++t) dt[t] = softplus_(delta[t] + bias);
  } else {
#pragma omp simd
    for (int64_t t = 0; t < l; ++t) dt[t] = delta[t] + bias;
  }
}

// Pointers of one (batch i, channel c) recurrence.
template <typename T>
struct Channel {
  int64_t row, grp;  // offsets of the (b, d, l) row and of the (b, g, l, n) group slab
  const T *u, *delta, *z, *A, *B, *C;
  T bias, Dc;
  Channel(const ScanArgs& a, int64_t i, int64_t c) {
    row = (i * a.d + c) * a.l;
    grp = (i * a.g + c / (a.d / a.g)) * a.l * a.n;
    u = static_cast<const T*>(a.u) + row;
    delta = static_cast<const T*>(a.delta) + row;
    z = a.z ? static_cast<const T*>(a.z) + row : nullptr;
    A = static_cast<const T*>(a.A) + c * a.n;
    B = static_cast<const T*>(a.B) + grp;
    C = static_cast<const T*>(a.C) + grp;
    bias = a.delta_bias ? static_cast<const T*>(a.delta_bias)[c] : T(0);
    Dc = a.D ? static_cast<const T*>(a.D)[c] : T(0);
  }
};

inline bool keep_state(const ScanArgs& a, int64_t i, int64_t t) {
  return !(a.reset && a.reset[i * a.l + t]);
}

// n state values of one channel. N > 0 is n known at compile time (the common d_state = 16):
// a fixed local array the compiler unrolls and keeps in registers; N = 0 is any n, on the heap.
template <typename T, int N>
struct StateVec {
  alignas(64) T fixed[N > 0 ? N : 1];
  std::vector<T> heap;
  explicit StateVec(int64_t n) : heap(N > 0 ? 0 : n) {}
  T* data() { return N > 0 ? fixed : heap.data(); }
};

// Steps s..e-1 of one channel from state h: y[t-s] = C_t·h_t. kKeep=false updates h (n values) in
// place; kKeep=true reads h_{s-1} at h[0..n) and keeps every h_t at h[(t-s+1)n..] and the decay
// actually applied, Ā_t·keep_t (0 where a document starts), at as[(t-s)n..] for the backward.
template <typename T, int N, bool kKeep, bool kOut = true>
inline void steps(const ScanArgs& a, const Channel<T>& ch, int64_t i, const T* dt, int64_t s,
                  int64_t e, T* h, T* y, T* as) {
  const int64_t n = N > 0 ? N : a.n, stride = kKeep ? n : 0;
  for (int64_t t = s; t < e; ++t) {
    const int64_t j = t - s;
    const T keep = keep_state(a, i, t) ? T(1) : T(0), dtt = dt[t], dtu = dtt * ch.u[t];
    const T *Bt = ch.B + t * n, *Ct = ch.C + t * n, *hin = h + j * stride;
    T *hout = h + (j + 1) * stride, *at = as + j * stride, acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t k = 0; k < n; ++k) {
      const T ak = exp_(dtt * ch.A[k]) * keep;
      const T hk = ak * hin[k] + dtu * Bt[k];  // h_t = Ā_t h_{t-1} + B̄_t u_t
      if constexpr (kKeep) at[k] = ak;
      hout[k] = hk;
      if constexpr (kOut) acc += hk * Ct[k];
    }
    if constexpr (kOut) y[j] = acc;
  }
}

// The end of one channel's forward, once its y = C·h row is in `out`: v = y + D u (kept, when a
// backward follows, so the backward's recompute pass can skip the C·h reductions), then the gate.
// One loop per case, not a ternary on a null pointer: GCC if-converts that into masked loads
// (vmaskmovps) of z, which on Zen 3 cost ~20% of the whole forward.
template <typename T>
void finish_row(const ScanArgs& a, const Channel<T>& ch, int64_t bc, T* out) {
  const int64_t l = a.l;
  T* vrow = a.v ? static_cast<T*>(a.v) + ch.row : nullptr;
  if (vrow) {
#pragma omp simd
    for (int64_t t = 0; t < l; ++t) vrow[t] = out[t] + ch.Dc * ch.u[t];
  }
  if (ch.z) {
#pragma omp simd
    for (int64_t t = 0; t < l; ++t) {
      const T v = out[t] + ch.Dc * ch.u[t];
      out[t] = v * ch.z[t] * sigmoid_(ch.z[t]);  // · SiLU(z)
    }
  } else {
#pragma omp simd
    for (int64_t t = 0; t < l; ++t) out[t] += ch.Dc * ch.u[t];
  }
}

template <typename T, int N>
void forward(const ScanArgs& a) {
  const int64_t n = N > 0 ? N : a.n, l = a.l, nchunks = (l + a.chunk - 1) / a.chunk;
#pragma omp parallel num_threads(a.threads)
  {
    std::vector<T> dt(l);
    StateVec<T, N> hv(n);
    T* h = hv.data();
#pragma omp for schedule(static)
    for (int64_t bc = 0; bc < a.b * a.d; ++bc) {
      Channel<T> ch(a, bc / a.d, bc % a.d);
      T* out = static_cast<T*>(a.out) + ch.row;
      if (a.h0) std::memcpy(h, static_cast<const T*>(a.h0) + bc * n, n * sizeof(T));
      else std::fill(h, h + n, T(0));
      delta_row(ch.delta, ch.bias, a.softplus != 0, l, dt.data());
      for (int64_t s = 0; s < l; s += a.chunk) {
        if (a.ckpt) std::memcpy(static_cast<T*>(a.ckpt) + (bc * nchunks + s / a.chunk) * n, h, n * sizeof(T));
        steps<T, N, false>(a, ch, bc / a.d, dt.data(), s, std::min(l, s + a.chunk), h, out + s, nullptr);
      }
      finish_row(a, ch, bc, out);
      std::memcpy(static_cast<T*>(a.last) + bc * n, h, n * sizeof(T));
    }
  }
}


// The forward with one channel per SIMD lane (float, n = N known, channels of one B/C group in
// whole octets): `forward` vectorises over the n state values, so every step ends in a horizontal
// sum for y_t = C_t·h_t (most of perf's samples in it on Zen 3). Here eight channels advance
// together, each state value h_k is one vector of eight lanes, and y_t is a plain vector sum:
// ~8% less time than `forward` for the 130M layer (exp is what bounds both).
// u and Δ rows are transposed into lane-minor blocks of `chunk` steps (in L1), y back out; the
// checkpoints, h0, reset and the epilogue are the same as in `forward`.
constexpr int kLanes = 8;

inline bool lanes_apply(const ScanArgs& a) { return a.n == 16 && (a.d / a.g) % kLanes == 0; }

template <int N>
void forward_lanes(const ScanArgs& a) {
  const int64_t l = a.l, span = a.chunk, nchunks = (l + span - 1) / span, octets = a.d / kLanes;
#pragma omp parallel num_threads(a.threads)
  {
    std::vector<float> buf(3 * span * kLanes + span), row(span);
    float *dtb = buf.data(), *dub = dtb + span * kLanes, *yb = dub + span * kLanes, *keep = yb + span * kLanes;
    v8f h[N], A[N];  // lane = channel c0 + lane
#pragma omp for schedule(static)
    for (int64_t w = 0; w < a.b * octets; ++w) {
      const int64_t i = w / octets, c0 = (w % octets) * kLanes, bc0 = i * a.d + c0;
      const Channel<float> ch0(a, i, c0);  // B, C (shared by the octet: one group)
      for (int lane = 0; lane < kLanes; ++lane) {
        const float* Ac = static_cast<const float*>(a.A) + (c0 + lane) * N;
        const float* h0 = a.h0 ? static_cast<const float*>(a.h0) + (bc0 + lane) * N : nullptr;
        for (int k = 0; k < N; ++k) A[k][lane] = Ac[k], h[k][lane] = h0 ? h0[k] : 0.0f;
      }
      for (int64_t s = 0; s < l; s += span) {
        const int64_t e = std::min(l, s + span), len = e - s;
        if (a.ckpt) {
          for (int lane = 0; lane < kLanes; ++lane)
            for (int k = 0; k < N; ++k)
              static_cast<float*>(a.ckpt)[((bc0 + lane) * nchunks + s / span) * N + k] = h[k][lane];
        }
        for (int lane = 0; lane < kLanes; ++lane) {
          const Channel<float> ch(a, i, c0 + lane);
          delta_row(ch.delta + s, ch.bias, a.softplus != 0, len, row.data());
          for (int64_t j = 0; j < len; ++j) {
            dtb[j * kLanes + lane] = row[j];
            dub[j * kLanes + lane] = row[j] * ch.u[s + j];
          }
        }
        for (int64_t j = 0; j < len; ++j) keep[j] = keep_state(a, i, s + j) ? 1.0f : 0.0f;
        for (int64_t j = 0; j < len; ++j) {
          const float *Bt = ch0.B + (s + j) * N, *Ct = ch0.C + (s + j) * N, kp = keep[j];
          const v8f dt = load8(dtb + j * kLanes), du = load8(dub + j * kLanes);
          v8f acc{};
#pragma GCC unroll 16
          for (int k = 0; k < N; ++k) {  // unrolled: h and acc stay in registers
            const v8f hk = exp8(dt * A[k]) * kp * h[k] + du * Bt[k];  // h_t = Ā_t h_{t-1} + B̄_t u_t
            h[k] = hk;
            acc += hk * Ct[k];
          }
          store8(yb + j * kLanes, acc);
        }
        for (int lane = 0; lane < kLanes; ++lane) {
          float* out = static_cast<float*>(a.out) + (bc0 + lane) * l;
          for (int64_t j = 0; j < len; ++j) out[s + j] = yb[j * kLanes + lane];
        }
      }
      for (int lane = 0; lane < kLanes; ++lane) {
        const Channel<float> ch(a, i, c0 + lane);
        finish_row(a, ch, bc0 + lane, static_cast<float*>(a.out) + ch.row);
        for (int k = 0; k < N; ++k) static_cast<float*>(a.last)[(bc0 + lane) * N + k] = h[k][lane];
      }
    }
  }
}

// The inference forward in time-major layout, for prefill: u, Δ, z and y are (b, l, d) rows with
// row strides (z a view into in_proj's output, B and C views into x_proj's: (b, l, ·) rows of
// stride bc_ls), so no operand is transposed or copied before or after; D, the Δ bias and softplus
// and the gate are applied here, y = (C·h + D u) · SiLU(z). Eight channels per vector as in
// forward_lanes; a thread takes up to four octets (128 bytes of each row: whole cache lines) and
// walks them through time in blocks of kBlockT steps, so the lines the first octet loads serve
// the other three from L1. float, n = 16, d a multiple of 8, one B/C group; h0 may be null
// (zeros); `last` (b, d, n) receives the final states.
constexpr int64_t kBlockT = 64, kOctetsPerItem = 4;

template <int N>
void forward_rows(const float* u, int64_t u_ls, const float* delta, int64_t delta_ls, const float* A,
                  const float* B, const float* C, int64_t bc_ls, const float* D, const float* z, int64_t z_ls,
                  const float* delta_bias, const float* h0, float* y, int64_t y_ls, float* last, int64_t b,
                  int64_t d, int64_t l, bool softplus, int threads) {
  const int64_t octets = d / kLanes, items = (octets + kOctetsPerItem - 1) / kOctetsPerItem;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t w = 0; w < b * items; ++w) {
    const int64_t i = w / items, o0 = (w % items) * kOctetsPerItem;
    const int64_t count = std::min(kOctetsPerItem, octets - o0);
    v8f h[kOctetsPerItem][N];
    for (int64_t o = 0; o < count; ++o)
      for (int lane = 0; lane < kLanes; ++lane)
        for (int k = 0; k < N; ++k) {
          const int64_t c = (o0 + o) * kLanes + lane;
          h[o][k][lane] = h0 ? h0[(i * d + c) * N + k] : 0.0f;
        }
    for (int64_t s = 0; s < l; s += kBlockT) {
      const int64_t e = std::min(l, s + kBlockT);
      for (int64_t o = 0; o < count; ++o) {
        const int64_t c0 = (o0 + o) * kLanes;
        v8f Ak[N], hk[N];
        for (int k = 0; k < N; ++k) {
          hk[k] = h[o][k];
          for (int lane = 0; lane < kLanes; ++lane) Ak[k][lane] = A[(c0 + lane) * N + k];
        }
        const v8f bias = delta_bias ? load8(delta_bias + c0) : v8f{}, Dc = D ? load8(D + c0) : v8f{};
        for (int64_t t = s; t < e; ++t) {
          const int64_t row = i * l + t;
          const float *Bt = B + row * bc_ls, *Ct = C + row * bc_ls;
          const v8f ut = load8(u + row * u_ls + c0), raw = load8(delta + row * delta_ls + c0) + bias;
          const v8f dt = softplus ? softplus8(raw) : raw, du = dt * ut;
          v8f acc = Dc * ut;
#pragma GCC unroll 16
          for (int k = 0; k < N; ++k) {
            hk[k] = exp8(dt * Ak[k]) * hk[k] + du * Bt[k];  // h_t = Ā_t h_{t-1} + B̄_t u_t
            acc += hk[k] * Ct[k];
          }
          if (z) {
            const v8f zt = load8(z + row * z_ls + c0);
            acc *= zt * sigmoid8(zt);  // · SiLU(z)
          }
          store8(y + row * y_ls + c0, acc);
        }
        for (int k = 0; k < N; ++k) h[o][k] = hk[k];
      }
    }
    for (int64_t o = 0; o < count; ++o)
      for (int lane = 0; lane < kLanes; ++lane)
        for (int k = 0; k < N; ++k) last[(i * d + (o0 + o) * kLanes + lane) * N + k] = h[o][k][lane];
  }
}

template <typename T, int N>
void backward(const ScanArgs& a) {
  const int64_t n = N > 0 ? N : a.n, l = a.l, span = a.chunk, nchunks = (l + span - 1) / span;
  const int64_t slab = a.b * a.g * l * n;  // one thread's dB / dC partial
#pragma omp parallel num_threads(a.threads)
  {
    std::vector<T> dt(l), hs((span + 1) * n), as(span * n), dys(span);
    StateVec<T, N> dhv(n), dAv(n);
    T *dh = dhv.data(), *dA = dAv.data();
    T* dBp = static_cast<T*>(a.dB) + omp_get_thread_num() * slab;
    T* dCp = static_cast<T*>(a.dC) + omp_get_thread_num() * slab;
#pragma omp for schedule(static)
    for (int64_t bc = 0; bc < a.b * a.d; ++bc) {
      const int64_t i = bc / a.d;
      Channel<T> ch(a, i, bc % a.d);
      const T* dout = static_cast<const T*>(a.dout) + ch.row;
      T *du = static_cast<T*>(a.du) + ch.row, *ddelta = static_cast<T*>(a.ddelta) + ch.row;
      T* dz = a.dz ? static_cast<T*>(a.dz) + ch.row : nullptr;
      const T* vrow = a.v ? static_cast<const T*>(a.v) + ch.row : nullptr;  // set whenever dz is
      if (a.dlast) std::memcpy(dh, static_cast<const T*>(a.dlast) + bc * n, n * sizeof(T));
      else std::fill(dh, dh + n, T(0));
      std::fill(dA, dA + n, T(0));
      T dD = 0;
      delta_row(ch.delta, ch.bias, a.softplus != 0, l, dt.data());
      for (int64_t s = (nchunks - 1) * span; s >= 0; s -= span) {
        const int64_t e = std::min(l, s + span);
        // Recompute this chunk's states h_s..h_{e-1} and Ā from its checkpoint (C·h is not
        // needed: the forward kept v = C·h + D u for the gate's gradient).
        std::memcpy(hs.data(), static_cast<const T*>(a.ckpt) + (bc * nchunks + s / span) * n, n * sizeof(T));
        steps<T, N, true, false>(a, ch, i, dt.data(), s, e, hs.data(), nullptr, as.data());
        // Through the gate: out = v · z σ(z), v = C·h + D u;  d(z σ(z))/dz = σ(z)(1 + z(1 - σ(z))).
        // Two loops, not a branch on dz inside one (masked loads: see the forward).
        if (dz) {
#pragma omp simd reduction(+ : dD)
          for (int64_t t = s; t < e; ++t) {
            const T zt = ch.z[t], sz = sigmoid_(zt), dy = dout[t];
            dz[t] = dy * vrow[t] * sz * (T(1) + zt * (T(1) - sz));
            dys[t - s] = dy * zt * sz;
            dD += dys[t - s] * ch.u[t];
          }
        } else {
#pragma omp simd reduction(+ : dD)
          for (int64_t t = s; t < e; ++t) {
            dys[t - s] = dout[t];
            dD += dout[t] * ch.u[t];
          }
        }
        for (int64_t t = e - 1; t >= s; --t) {
          const int64_t j = t - s;
          const T ut = ch.u[t], dtt = dt[t], dy = dys[j];
          const T *Bt = ch.B + t * n, *Ct = ch.C + t * n, *at = as.data() + j * n;
          const T *hprev = hs.data() + j * n, *hcur = hs.data() + (j + 1) * n;
          T *dBt = dBp + ch.grp + t * n, *dCt = dCp + ch.grp + t * n, *dhp = dh, *dAp = dA;
          T dhB = 0, dexpA = 0;  // Σ_k ∂L/∂h_tk B_tk and Σ_k ∂L/∂(Δ_t A_k) A_k
#pragma omp simd reduction(+ : dhB, dexpA)
          for (int64_t k = 0; k < n; ++k) {
            const T dhk = dhp[k] + dy * Ct[k];             // ∂L/∂h_t
            const T dexp = dhk * hprev[k] * at[k];         // ∂L/∂(Δ_t A_k) through Ā_t
            dCt[k] += dy * hcur[k];
            dBt[k] += dhk * dtt * ut;
            dhB += dhk * Bt[k];
            dexpA += dexp * ch.A[k];
            dAp[k] += dexp * dtt;
            dhp[k] = dhk * at[k];                          // ∂L/∂h_{t-1}
          }
          du[t] = dy * ch.Dc + dtt * dhB;
          ddelta[t] = ut * dhB + dexpA;  // ∂L/∂Δ_t; through softplus below
        }
      }
      if (a.softplus) {
#pragma omp simd
        for (int64_t t = 0; t < l; ++t) ddelta[t] *= sigmoid_(ch.delta[t] + ch.bias);
      }
      std::memcpy(static_cast<T*>(a.dA) + bc * n, dA, n * sizeof(T));
      static_cast<T*>(a.dD)[bc] = dD;
      if (a.dh0) std::memcpy(static_cast<T*>(a.dh0) + bc * n, dh, n * sizeof(T));
    }
  }
}

}  // namespace

extern "C" {
void mk_scan_fwd_f32(const ScanArgs* a) {
  if (lanes_apply(*a)) forward_lanes<16>(*a);
  else if (a->n == 16) forward<float, 16>(*a);
  else forward<float, 0>(*a);
}
void mk_scan_bwd_f32(const ScanArgs* a) { a->n == 16 ? backward<float, 16>(*a) : backward<float, 0>(*a); }
// Shapes are checked in Python (ops/scan_cpu.py, scan_rows_fwd) before the call.
void mk_scan_rows_fwd_f32(const float* u, int64_t u_ls, const float* delta, int64_t delta_ls, const float* A,
                          const float* B, const float* C, int64_t bc_ls, const float* D, const float* z,
                          int64_t z_ls, const float* delta_bias, const float* h0, float* y, int64_t y_ls,
                          float* last, int64_t b, int64_t d, int64_t l, int64_t n, int32_t softplus,
                          int32_t threads) {
  if (n == 16 && d % kLanes == 0)
    forward_rows<16>(u, u_ls, delta, delta_ls, A, B, C, bc_ls, D, z, z_ls, delta_bias, h0, y, y_ls, last, b, d,
                     l, softplus != 0, threads);
}
// fp64 exists for gradcheck, not for speed: one generic instantiation.
void mk_scan_fwd_f64(const ScanArgs* a) { forward<double, 0>(*a); }
void mk_scan_bwd_f64(const ScanArgs* a) { backward<double, 0>(*a); }
}
