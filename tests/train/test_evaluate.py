"""Loss, bits/byte and perplexity on known cases; the schedule and the weight-decay rules."""
import math

import pytest
import torch
from torch import nn

from mambakit.data import TokenDataset, token_byte_lengths
from mambakit.data.bpe import train_bpe
from mambakit.train import evaluate
from mambakit.train.schedule import build_optimizer, lr_at
from tests.conftest import tiny_mamba


class Uniform(nn.Module):
    """Equal logits over V tokens: every prediction costs exactly ln V nats."""

    supports_reset = False

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        return torch.zeros(*ids.shape, self.vocab) + 0 * self.dummy


def test_uniform_logits_cost_ln_v_and_bits_per_byte_counts_bpe_bytes():
    texts = ["the cat sat on the mat. " * 4, "a dog ran in the fog; ünïcode ✓ " * 4] * 10
    tok = train_bpe(texts, vocab_size=300)
    ids = []
    for t in texts[:4]:
        ids += tok.encode(t) + [tok.eos_token_id]
    data = TokenDataset(torch.tensor(ids).numpy(), tok.eos_token_id, token_byte_lengths(tok))
    v = tok.vocab_size
    result = evaluate(Uniform(v), data, seq_len=len(ids) - 1, batch_size=1, n_batches=1)
    text_bytes = len(tok.decode(ids[1:]).encode("utf-8"))     # eos stands for no bytes
    assert len(ids) - 1 < text_bytes / 2         # tokens are not bytes here
    assert result["tokens"] == len(ids) - 1 and result["bytes"] == text_bytes
    assert result["loss"] == pytest.approx(math.log(v), rel=1e-6)
    assert result["perplexity"] == pytest.approx(v, rel=1e-5)
    assert result["bits_per_byte"] == pytest.approx(math.log2(v) * (len(ids) - 1) / text_bytes, rel=1e-6)


def test_warmup_then_cosine_to_the_floor():
    lrs = [lr_at(s, 1.0, warmup_steps=4, total_steps=20, min_lr_ratio=0.1) for s in range(25)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert lrs[20] == pytest.approx(0.1) and lrs[24] == pytest.approx(0.1)


def test_no_weight_decay_on_norms_biases_a_log_and_d():
    model = tiny_mamba()
    opt = build_optimizer(model, 1e-3, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in opt.param_groups[0]["params"]}
    plain = {names[id(p)] for p in opt.param_groups[1]["params"]}
    assert opt.param_groups[1]["weight_decay"] == 0.0
    assert any(n.endswith("A_log") for n in plain) and any(n.endswith(".D") for n in plain)
    assert any("norm" in n for n in plain) and any(n.endswith("bias") for n in plain)
    assert all(not n.endswith(("A_log", ".D", "bias")) and "norm" not in n for n in decayed)
    assert "backbone.layers.0.mixer.in_proj.weight" in decayed
