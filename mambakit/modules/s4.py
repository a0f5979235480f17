"""S4 and S4D layers: one LTI SSM per channel, trained as a convolution, decoded as a recurrence.

Glossary: b batch, l length, d = d_model channels (one SISO SSM each, no expansion), h the state,
N = d_state (the real state size), n = N/2 stored parameters per channel: a real SSM's eigenvalues
come in conjugate pairs, so only one member of each pair is a parameter (as in S4's code).

* S4 (Gu et al. 2022): A = diag(Λ) − P P* (DPLR, Q = P keeps Re A ≤ 0), Λ and P from HiPPO-LegS,
  bilinear discretization, kernel by the Cauchy/generating-function method (`dplr_kernel`).
  The rank-one term P P* couples every mode with every other one, its conjugate partner included,
  so the stored half is completed with its conjugates (`conj_complete`, S4's `_conj`) before any
  sum, and the state is the full N: at initialisation the layer's SSM is HiPPO-LegS exactly, in
  the unitary eigenbasis of its normal part. S4 learns C̃ = C(I − A̅^L) for one fixed L; we learn
  C and form C̃ per call, so any length works and both modes share the same C. A̅ is diagonal plus
  rank one like A (`dplr_bilinear`), so forming C̃ takes L steps of O(N) per channel, not dense
  N×N solves and matrix powers (which made a training step at L=128 ~1.8x dearer).
* S4D (Gu et al. 2022b): diagonal A, S4D-Lin (A_n = −½ + iπn) or S4D-Inv
  (A_n = −½ + i(N/π)(N/(2n+1) − 1)) init, B = 1, ZOH, Vandermonde kernel. Diagonal modes do not
  couple, so a conjugate pair contributes 2·Re of one member: the state is n, y = Re(2C h) + D x.

`mode` is LSSL's switch: "conv" (FFT convolution, parallel — training and prefill) or
"recurrent" (h_k = A̅h_{k−1} + B̅x_k one step at a time). Both give the same outputs and states.
The output follows S4's blocks (GELU, linear to 2d, GLU) or one of the other heads of
`ssm_output` ("linear": no gate; "none": the bare SSM, e.g. inside a Mamba block). Complex parameters are stored as real (..., 2) views, which
safetensors and every optimizer handle.
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from mambakit.modules.ssm_output import apply_output, make_out_proj
from mambakit.ops.discretize import zoh_diag
from mambakit.ops.hippo import dplr_legs_half
from mambakit.ops.ssm_kernel import (
    c_tilde_dplr,
    causal_conv_fft,
    diag_rank1_dense,
    dplr_bilinear,
    dplr_kernel,
    lti_final_state,
    lti_free_response,
    ssm_recurrent,
    ssm_step,
    vandermonde_kernel,
)

MODES = ("conv", "recurrent")


@dataclass
class S4State:
    """Recurrent state of one S4/S4D layer: ssm (b, d, N) (S4) or (b, d, n) (S4D) complex. Its size
    is fixed in l."""

    ssm: Tensor

    def clone(self) -> "S4State":
        return S4State(self.ssm.clone())


def _complex_param(z: Tensor) -> nn.Parameter:
    return nn.Parameter(torch.view_as_real(z.to(torch.complex64)).clone())


def conj_complete(x: Tensor) -> Tensor:
    """(..., n) -> (..., 2n): one member of each conjugate pair, then the other members."""
    return torch.cat([x, x.conj()], dim=-1)


class LTIMixer(nn.Module, abc.ABC):
    """What S4 and S4D share: Δ, D, the two modes, state handling and the output head.

    Subclasses give `discrete()` -> (A̅ (d, s, s) or (d, s), B̅ (d, s), C' (d, s)) with the
    output y = Re(C' h) + D x for a state of size s = `state_size`, and `kernel(l)` -> real K (d, l)
    of the same SSM.
    """

    state_size: int

    def __init__(self, d_model: int, d_state: int, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 output: str = "glu"):
        super().__init__()
        if d_state % 2:
            raise ValueError(f"d_state must be even (conjugate pairs of the state), got {d_state}")
        self.d_model, self.n = d_model, d_state // 2
        self.state_size = self.n
        self._mode = "conv"
        # Δ log-uniform in [dt_min, dt_max] per channel: a range of timescales (S4's init).
        self.log_dt = nn.Parameter(torch.rand(d_model) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.D = nn.Parameter(torch.randn(d_model))
        self.out_proj = make_out_proj(d_model, output)

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {value!r}")
        self._mode = value

    @property
    def dt(self) -> Tensor:
        return torch.exp(self.log_dt.float())                           # (d,)

    @abc.abstractmethod
    def discrete(self) -> tuple[Tensor, Tensor, Tensor]:
        """(A̅, B̅, C') of the discretized SSM (shapes in the class docstring)."""

    @abc.abstractmethod
    def kernel(self, length: int) -> Tensor:
        """The convolution kernel K (d, length) of the same SSM."""

    def allocate_state(self, batch_size: int, device=None, dtype=None) -> S4State:
        device = device or self.D.device
        return S4State(torch.zeros(batch_size, self.d_model, self.state_size, device=device,
                                   dtype=torch.complex64))

    def mix(self, x: Tensor, h0: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """The SSM alone: x (b, d, l) -> (y (b, d, l) real, final state or None when h0 is None in
        conv mode, where computing it would cost extra)."""
        if self.mode == "recurrent":
            Ab, Bb, C = self.discrete()
            y, last = ssm_recurrent(Ab, Bb, C, self.D, x, h0)
            return y.real, last
        y = causal_conv_fft(x, self.kernel(x.shape[-1]), self.D)        # (b, d, l)
        if h0 is None:
            return y, None
        Ab, Bb, C = self.discrete()
        y = y + lti_free_response(Ab, C, h0, x.shape[-1]).real
        return y, lti_final_state(Ab, Bb, x, h0)

    def mix_step(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """One token of the SSM alone: x (b, d), state (b, d, s) -> (y (b, d) real, new state)."""
        Ab, Bb, C = self.discrete()
        y, h = ssm_step(Ab, Bb, C, self.D, h, x.float())
        return y.real, h

    def forward(self, hidden: Tensor, state: Optional[S4State] = None,
                attention_mask: Optional[Tensor] = None) -> Tensor:
        """hidden (b, l, d) -> (b, l, d). `state`, if given, is the initial state and is replaced by
        the final one (prefill). `attention_mask` (b, l), 0 on left padding, zeroes pad inputs: from
        a zero state an LTI SSM fed zeros stays at zero, so the real tokens see an exact fresh start.
        """
        if hidden.dim() != 3 or hidden.shape[-1] != self.d_model:
            raise ValueError(f"{type(self).__name__} expects (batch, length, {self.d_model}), "
                             f"got {tuple(hidden.shape)}")
        x = hidden.float().transpose(1, 2)                              # (b, d, l)
        if attention_mask is not None:
            x = x * attention_mask[:, None, :].to(x.dtype)
        y, last = self.mix(x, None if state is None else state.ssm)
        if state is not None:
            state.ssm = last
        return apply_output(y.transpose(1, 2).to(hidden.dtype), self.out_proj)   # (b, l, d)

    def step(self, hidden: Tensor, state: S4State) -> Tensor:
        """One token: hidden (b, d) -> (b, d), updating `state` in place. O(1) in the length."""
        y, state.ssm = self.mix_step(hidden, state.ssm)
        return apply_output(y.to(hidden.dtype), self.out_proj)


class S4Mixer(LTIMixer):
    """S4: HiPPO-LegS-initialised DPLR state matrix, bilinear discretization, Cauchy kernel.

    `b_clip` clamps Im B̃ to [−b_clip, b_clip] at init, as S4's `nplr(..., B_clip=2.0)` does for
    stability; None (the default) keeps B̃ exact, so the initial SSM is HiPPO-LegS.
    """

    def __init__(self, d_model: int, d_state: int = 64, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 b_clip: Optional[float] = None, output: str = "glu"):
        super().__init__(d_model, d_state, dt_min, dt_max, output)
        self.state_size = d_state
        Lambda, P, B = (x.expand(d_model, self.n) for x in dplr_legs_half(d_state))
        if b_clip is not None:
            if not b_clip > 0:
                raise ValueError(f"b_clip must be > 0 or None, got {b_clip}")
            B = torch.complex(B.real, B.imag.clamp(-b_clip, b_clip))
        self.log_A_real = nn.Parameter(torch.log(-Lambda.real).float().clone())   # Re Λ = −exp(·) < 0
        self.A_imag = nn.Parameter(Lambda.imag.float().clone())
        self.P = _complex_param(P)
        self.B = _complex_param(B)
        self.C = _complex_param(torch.randn(d_model, self.n, dtype=torch.complex64))

    def _dplr(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Λ, P̃, B̃, C over the whole conjugate-symmetric spectrum: (d, N) complex each."""
        Lambda = torch.complex(-torch.exp(self.log_A_real), self.A_imag)
        halves = (Lambda, torch.view_as_complex(self.P), torch.view_as_complex(self.B),
                  torch.view_as_complex(self.C))
        return tuple(conj_complete(x) for x in halves)

    def discrete(self) -> tuple[Tensor, Tensor, Tensor]:
        Lambda, P, B, C = self._dplr()
        a, x, y, Bb = dplr_bilinear(Lambda, P, P, B, self.dt)
        return diag_rank1_dense(a, x, y), Bb, C                         # (d, N, N), (d, N), (d, N)

    def kernel(self, length: int) -> Tensor:
        Lambda, P, B, C = self._dplr()
        a, x, y, _ = dplr_bilinear(Lambda, P, P, B, self.dt)
        # conjugate-symmetric sums: the imaginary part is rounding only
        return dplr_kernel(Lambda, P, P, B, c_tilde_dplr(a, x, y, C, length), self.dt, length).real   # (d, l)


def s4d_imag_init(n: int, d_state: int, init: str) -> Tensor:
    """Im A for S4D-Lin (πn: evenly spaced frequencies) or S4D-Inv (approximates S4-LegS's spectrum)."""
    k = torch.arange(n, dtype=torch.float32)
    if init == "lin":
        return math.pi * k
    if init == "inv":
        return d_state / math.pi * (d_state / (2 * k + 1) - 1)
    raise ValueError(f"S4D init must be 'lin' or 'inv', got {init!r}")


class S4DMixer(LTIMixer):
    """S4D: diagonal complex A, ZOH, Vandermonde kernel."""

    def __init__(self, d_model: int, d_state: int = 64, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 init: str = "lin", output: str = "glu"):
        super().__init__(d_model, d_state, dt_min, dt_max, output)
        self.log_A_real = nn.Parameter(torch.full((d_model, self.n), math.log(0.5)))
        self.A_imag = nn.Parameter(s4d_imag_init(self.n, d_state, init).repeat(d_model, 1))
        self.B = _complex_param(torch.ones(d_model, self.n, dtype=torch.complex64))
        self.C = _complex_param(torch.randn(d_model, self.n, dtype=torch.complex64))

    def _diag(self) -> tuple[Tensor, Tensor, Tensor]:
        A = torch.complex(-torch.exp(self.log_A_real), self.A_imag)     # (d, n)
        return A, torch.view_as_complex(self.B), torch.view_as_complex(self.C)

    def discrete(self) -> tuple[Tensor, Tensor, Tensor]:
        A, B, C = self._diag()
        Ab, Bb = zoh_diag(A, B, self.dt[:, None])                       # (d, n) each
        return Ab, Bb, 2 * C

    def kernel(self, length: int) -> Tensor:
        A, B, C = self._diag()
        return 2 * vandermonde_kernel(A, B, C, self.dt, length).real    # (d, l)
