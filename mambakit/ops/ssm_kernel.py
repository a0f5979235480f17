"""Three views of one LTI discrete SSM, and the structured kernels of S4 and S4D.

Glossary: b batch, h channels (one SISO SSM each), n state size, l length.
A̅ is (h, n, n) dense or (h, n) diagonal; B̅, C are (h, n); D is (h,); u is (b, h, l).
State and parameters may be complex (S4/S4D keep half of a conjugate-symmetric state); the
caller takes the real part of the output.

* recurrent:     h_k = A̅ h_{k-1} + B̅ u_k,  y_k = C h_k + D u_k        (`ssm_step`, `ssm_recurrent`)
* convolutional: y = K * u + D u, K = (CB̅, CA̅B̅, …, CA̅^{l-1}B̅)         (`ssm_kernel_naive`, `causal_conv_fft`)
* structured:    S4D's Vandermonde kernel (`vandermonde_kernel`) and S4's DPLR kernel through the
  truncated generating function at the roots of unity + Woodbury + Cauchy (`dplr_kernel`).

The reference twin of every kernel is the explicit power series; of the FFT convolution, the
direct O(l²) convolution.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from mambakit.ops.discretize import zoh_diag


def _matvec(Ab: Tensor, v: Tensor) -> Tensor:
    """A̅ v for A̅ (h, n, n) or diagonal (h, n), v (..., h, n)."""
    if Ab.dim() == 3:
        return torch.einsum("hnm,...hm->...hn", Ab, v)
    return Ab * v


def _power(Ab: Tensor, k: int) -> Tensor:
    return torch.linalg.matrix_power(Ab, k) if Ab.dim() == 3 else Ab ** k


def krylov(Ab: Tensor, v: Tensor, length: int) -> Tensor:
    """(v, A̅v, A̅²v, …, A̅^{length-1}v): A̅ (h, n, n) or (h, n), v (h, n) -> (h, length, n).

    Doubling: the block of powers found so far is multiplied by A̅^m (m its size), then A̅^m is
    squared, so log₂(length) products instead of length sequential ones.
    """
    out = v[:, None, :]                                                 # (h, 1, n)
    power = Ab
    while out.shape[1] < length:
        if Ab.dim() == 3:
            nxt = torch.einsum("hnm,hkm->hkn", power, out)
            power = power @ power
        else:
            nxt = out * power[:, None, :]
            power = power * power
        out = torch.cat([out, nxt], dim=1)
    return out[:, :length]


def ssm_step(Ab: Tensor, Bb: Tensor, C: Tensor, D: Tensor, h: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """One recurrent step: h (b, h, n), u (b, h) -> (y (b, h), new h). O(1) in the length."""
    h = _matvec(Ab, h) + Bb * u[..., None].to(Bb.dtype)
    y = (h * C).sum(-1) + D * u
    return y, h


def ssm_recurrent(Ab: Tensor, Bb: Tensor, C: Tensor, D: Tensor, u: Tensor,
                  h0: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """The recurrent view, one step at a time (the spec): u (b, h, l) -> (y (b, h, l), h_l (b, h, n))."""
    b, H, l = u.shape
    h = u.new_zeros(b, H, Bb.shape[-1], dtype=torch.promote_types(Bb.dtype, u.dtype)) if h0 is None else h0
    ys = []
    for k in range(l):
        y, h = ssm_step(Ab, Bb, C, D, h, u[..., k])
        ys.append(y)
    return torch.stack(ys, dim=-1), h


def ssm_kernel_naive(Ab: Tensor, Bb: Tensor, C: Tensor, length: int) -> Tensor:
    """K_k = C A̅^k B̅ for k < length: (h, length), from explicit powers of A̅."""
    return torch.einsum("hn,hkn->hk", C, krylov(Ab, Bb, length))


def causal_conv_ref(u: Tensor, K: Tensor, D: Optional[Tensor] = None) -> Tensor:
    """Direct causal convolution y_t = Σ_{s≤t} K_s u_{t-s} (+ D u_t): u (b, h, l), K (h, l)."""
    b, H, l = u.shape
    weight = K[:, :l].flip(-1)[:, None, :].to(u.dtype)                 # (h, 1, l): conv1d correlates
    y = F.conv1d(F.pad(u, (l - 1, 0)), weight, groups=H)
    return y if D is None else y + D[:, None] * u


def causal_conv_fft(u: Tensor, K: Tensor, D: Optional[Tensor] = None) -> Tensor:
    """Causal convolution in O(l log l): u (b, h, l), K (h, ≥l) real -> (b, h, l).

    Zero-padding both to n = 2l turns the FFT's circular convolution into a linear one; the
    first l outputs are then exactly the causal ones.
    """
    l = u.shape[-1]
    n = 2 * l
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(K[:, :l].to(u.dtype), n=n), n=n)[..., :l]
    return y if D is None else y + D[:, None] * u


def vandermonde_kernel(A: Tensor, B: Tensor, C: Tensor, dt: Tensor, length: int) -> Tensor:
    """S4D kernel with ZOH: A, B, C (h, n) complex, dt (h,) -> K (h, length) complex.

    K_k = Σ_n C_n B̅_n A̅_n^k = (C ∘ B̅) · V with V_nk = exp(k Δ A_n), the Vandermonde matrix.
    """
    dtA = dt[:, None] * A                                               # (h, n)
    _, Bb = zoh_diag(A, B, dt[:, None])
    V = _exp_complex(dtA[..., None] * torch.arange(length, device=A.device, dtype=A.real.dtype))  # (h, n, l)
    return torch.einsum("hn,hnl->hl", C * Bb, V)


def _exp_complex(z: Tensor) -> Tensor:
    """exp(z) as e^{Re z} at angle Im z: the same values as torch.exp on complex input, with its
    gradient, but real exp/cos/sin vectorise where complex exp does not (~4x faster forward)."""
    return torch.polar(torch.exp(z.real), z.imag)


def dplr_kernel(Lambda: Tensor, P: Tensor, Q: Tensor, B: Tensor, C_tilde: Tensor, dt: Tensor,
                length: int) -> Tensor:
    """S4 kernel for A = diag(Λ) − P Q* with bilinear discretization, without powers of A̅.

    Lambda, P, Q, B, C_tilde: (h, n) complex, dt (h,) -> K (h, length) complex, where
    C_tilde = C (I − A̅^length) (S4 learns it directly; see `c_tilde`).

    Generating function at z: Σ_{k<L} C A̅^k B̅ z^k = C̃ (I − A̅ z)⁻¹ B̅ when z^L = 1, and with the
    bilinear A̅, B̅:  (I − A̅ z)⁻¹ B̅ = Δ [(1 − z) I − u A]⁻¹ B,  u = Δ(1 + z)/2.
    [(1 − z) − u Λ + u P Q*]⁻¹ is the inverse of a diagonal plus rank one (Woodbury): with
    r_n = 1/((1 − z) − u Λ_n) and the Cauchy sums k_xy = Σ_n x_n y_n r_n,
        C̃ (I − A̅ z)⁻¹ B̅ = Δ [k_CB − u k_CP k_QB / (1 + u k_QP)].
    (This is S4's formula multiplied through by (1 + z)/2, so z = −1, a root for even L, needs no
    limit.) K is the inverse DFT of those values at z_j = exp(−2πij/L).
    """
    j = torch.arange(length, device=Lambda.device, dtype=Lambda.real.dtype)
    z = torch.exp(-2j * torch.pi * j / length).to(Lambda.dtype)         # (l,)
    dt = dt.to(Lambda.dtype)[:, None, None]                             # (h, 1, 1)
    u = dt * (1 + z) / 2                                                # (h, 1, l)
    r = 1 / ((1 - z) - u * Lambda[..., None])                           # (h, n, l) Cauchy denominators
    Qc = Q.conj()

    def cauchy(x: Tensor, y: Tensor) -> Tensor:
        return torch.einsum("hn,hnl->hl", x * y, r)

    u = u[:, 0]                                                         # (h, l)
    k_cb, k_cp = cauchy(C_tilde, B), cauchy(C_tilde, P)
    k_qb, k_qp = cauchy(Qc, B), cauchy(Qc, P)
    at_roots = dt[:, 0] * (k_cb - u * k_cp * k_qb / (1 + u * k_qp))     # (h, l)
    return torch.fft.ifft(at_roots, n=length, dim=-1)


def dplr_dense(Lambda: Tensor, P: Tensor, Q: Tensor) -> Tensor:
    """The dense A = diag(Λ) − P Q*: (h, n) each -> (h, n, n)."""
    return torch.diag_embed(Lambda) - P[..., :, None] * Q.conj()[..., None, :]


def dplr_bilinear(Lambda: Tensor, P: Tensor, Q: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Bilinear discretization of A = diag(Λ) − P Q* without a dense solve: (h, n) each, dt (h,)
    -> (a, x, y, B̅) with A̅ = diag(a) + x yᵀ (diagonal plus rank one, as A is).

    With α = Δ/2, d = 1 − αΛ, e = 1 + αΛ: (I − αA)⁻¹ = diag(1/d) − γ (P/d)(Q̄/d)ᵀ by
    Sherman–Morrison, γ = α / (1 + α Σ Q̄P/d); multiplying out (I − αA)⁻¹(I + αA), the rank-one
    terms collapse to one: A̅ = diag(e/d) − 2γ (P/d)(Q̄/d)ᵀ, and B̅ = Δ (I − αA)⁻¹ B.
    """
    alpha = (dt.to(Lambda.dtype) / 2)[:, None]                          # (h, 1)
    d, e = 1 - alpha * Lambda, 1 + alpha * Lambda
    x, qd = P / d, Q.conj() / d
    gamma = alpha / (1 + alpha * (qd * P).sum(-1, keepdim=True))        # (h, 1)
    Bb = 2 * alpha * (B / d - gamma * x * (qd * B).sum(-1, keepdim=True))
    return e / d, x, -2 * gamma * qd, Bb


def diag_rank1_dense(a: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """diag(a) + x yᵀ: (h, n) each -> (h, n, n)."""
    return torch.diag_embed(a) + x[..., :, None] * y[..., None, :]


# Up to this length C A̅^L is L structured steps (O(L n) each channel); beyond, log₂ L dense
# squarings (O(n³) each) cost less than the Python loop.
SEQUENTIAL_C_TILDE_MAX_LENGTH = 2048


def c_tilde(Ab: Tensor, C: Tensor, length: int) -> Tensor:
    """C̃ = C (I − A̅^length): the output vector that truncates the generating function at length."""
    return C - torch.einsum("hn,hnm->hm", C, _power(Ab, length))


def c_tilde_dplr(a: Tensor, x: Tensor, y: Tensor, C: Tensor, length: int) -> Tensor:
    """`c_tilde` for A̅ = diag(a) + x yᵀ (`dplr_bilinear`): row vector times A̅ is
    v ∘ a + (v · x) y, so C A̅^L takes L steps of O(n) instead of dense matrix powers."""
    if length > SEQUENTIAL_C_TILDE_MAX_LENGTH:
        return c_tilde(diag_rank1_dense(a, x, y), C, length)
    v = C
    for _ in range(length):
        v = v * a + (v * x).sum(-1, keepdim=True) * y
    return C - v


def lti_free_response(Ab: Tensor, C: Tensor, h0: Tensor, length: int) -> Tensor:
    """Outputs caused by an initial state alone: y_k = C A̅^{k+1} h0. h0 (b, h, n) -> (b, h, l)."""
    CA = krylov(Ab.mT if Ab.dim() == 3 else Ab, C, length)              # (h, l, n): rows C A̅^k
    return torch.einsum("hkn,bhn->bhk", CA, _matvec(Ab, h0))


def lti_final_state(Ab: Tensor, Bb: Tensor, u: Tensor, h0: Optional[Tensor] = None) -> Tensor:
    """State after the whole input, in parallel: h_l = A̅^l h0 + Σ_k A̅^{l-1-k} B̅ u_k. u (b, h, l)."""
    l = u.shape[-1]
    powers = krylov(Ab, Bb, l).flip(1)                                  # (h, l, n): A̅^{l-1-k} B̅
    h = torch.einsum("hkn,bhk->bhn", powers, u.to(powers.dtype))
    return h if h0 is None else h + _matvec(_power(Ab, l), h0)
