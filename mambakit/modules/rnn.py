"""Stacked GRU / LSTM layers (torch's fused CPU kernels) with left-padding that never touches the state.

Glossary: b batch, l sequence length, d = d_model (input and hidden size), n_layer stacked cells.
State: (h,) for a GRU, (h, c) for an LSTM, each (n_layer, b, d). An RNN is its own recurrent view:
step-by-step decode runs the same module on a length-1 sequence.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}

RNNState = tuple[Tensor, ...]


class RecurrentStack(nn.Module):
    def __init__(self, cell: str, d_model: int, n_layer: int, dropout: float = 0.0):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {list(CELLS)}, got {cell!r}")
        self.cell, self.d_model, self.n_layer = cell, d_model, n_layer
        self.rnn = CELLS[cell](d_model, d_model, num_layers=n_layer, batch_first=True,
                               dropout=dropout if n_layer > 1 else 0.0)

    def allocate_state(self, batch_size: int) -> RNNState:
        w = self.rnn.weight_ih_l0
        parts = 2 if self.cell == "lstm" else 1
        return tuple(torch.zeros(self.n_layer, batch_size, self.d_model, device=w.device, dtype=w.dtype)
                     for _ in range(parts))

    def forward(self, x: Tensor, state: Optional[RNNState] = None,
                mask: Optional[Tensor] = None) -> tuple[Tensor, RNNState]:
        """x (b, l, d) -> outputs (b, l, d) and the state after each row's last token.

        `mask` (b, l) bool, False on LEFT padding: each row's state passes its pads unchanged
        (outputs at pads are 0), so a padded row computes exactly what it would alone."""
        hx = None if state is None else (state if self.cell == "lstm" else state[0])
        if mask is None or bool(mask.all()):
            y, hx = self.rnn(x, hx)
        else:
            y, hx = self._skip_left_pads(x, hx, mask)
        return y, (hx if self.cell == "lstm" else (hx,))

    def _skip_left_pads(self, x: Tensor, hx, mask: Tensor):
        # Rotate each row's pads from the front to the back, let a packed sequence stop every row
        # at its own length (the fused kernel never sees the pads), then rotate the outputs back.
        if not bool((mask[:, 1:] >= mask[:, :-1]).all()):
            raise ValueError("attention_mask must be LEFT padding (0s then 1s in every row)")
        b, l, d = x.shape
        pads = (~mask).sum(1)                                               # (b,)
        if bool((pads == l).any()):
            raise ValueError("attention_mask has a row with no tokens")
        ar = torch.arange(l, device=x.device)
        to_right = ((ar + pads[:, None]) % l)[..., None].expand(b, l, d)    # (b, l, d)
        packed = pack_padded_sequence(x.gather(1, to_right), (l - pads).cpu(), batch_first=True,
                                      enforce_sorted=False)
        y, hx = self.rnn(packed, hx)
        y, _ = pad_packed_sequence(y, batch_first=True, total_length=l)     # (b, l, d), 0 past each end
        to_left = ((ar - pads[:, None]) % l)[..., None].expand(b, l, d)
        return y.gather(1, to_left), hx

    def step(self, x: Tensor, state: RNNState) -> tuple[Tensor, RNNState]:
        """x (b, d) -> (b, d), the state after one more token."""
        y, state = self.forward(x[:, None], state)
        return y[:, 0], state
