"""mambakit.quantize: bf16 / int8 weights on a briefly trained Mamba keep its predictions (top-1
agreement and bits/byte against fp32) on the forward and the decode path, decode equals forward
in every format within stated tolerances, saves and loads."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

import mambakit
from mambakit import MambaConfig, MambaLM
from mambakit.data.corpus import stdlib_root
from mambakit.models.quantize import weight_bytes


def _bytes(name: str) -> torch.Tensor:
    return torch.tensor(list((stdlib_root() / name).read_bytes()), dtype=torch.long)


@pytest.fixture(scope="module")
def trained():
    """A small byte-level Mamba after 100 AdamW steps on one stdlib file: enough for confident,
    text-shaped predictions (random weights give near-ties that any rounding flips). One thread:
    tiny ops on a shared machine only lose time to thread hand-offs."""
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=96, n_layer=2, vocab_size=256, d_state=8))
    data = _bytes("argparse.py")
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for _ in range(100):
        starts = torch.randint(0, len(data) - 65, (8,))
        batch = torch.stack([data[s:s + 65] for s in starts.tolist()])
        loss = F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    held_out = _bytes("textwrap.py")[:4097][None]                         # another file
    return model.eval(), held_out


def _bits_per_byte(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return F.cross_entropy(logits[..., :256].flatten(0, 1).float(), targets.flatten()).item() / math.log(2)


def _decode(model, ids: torch.Tensor) -> torch.Tensor:
    """Logits (b, l, v) of feeding ids (b, l) one step at a time: the decode path (GEMV kernels)."""
    cache = model.allocate_cache(ids.shape[0])
    return torch.stack([model.step(ids[:, t], cache) for t in range(ids.shape[1])], 1)


@pytest.mark.parametrize("fmt,max_bpb_change", [("bf16", 0.005), ("int8", 0.01)])
def test_quantized_model_keeps_top1_and_bits_per_byte(trained, fmt, max_bpb_change):
    """Both paths: the forward (prefill: torch's GEMM on the dequantized weights) and the decode
    step (our GEMV: x rounded to bf16 where the CPU has bf16 dot products, x quantized as q8_0
    for int8 weights), each against the fp32 model's forward on the same ~4096 predictions. The
    int8 decode path agrees with fp32 on ~99.0-99.2% of them, so the sample must be large: the
    binomial spread of 1024 predictions (±0.3%) straddled the 99% bound."""
    model, text = trained
    quantized = mambakit.quantize(copy.deepcopy(model), fmt)
    batch = text[0, :4096].reshape(16, 256)                                    # decoded as a batch of 16
    rows = batch[:, :-1], batch[:, 1:]
    for path, (inputs, targets) in (("forward", (text[:, :-1], text[:, 1:])), ("decode", rows)):
        with torch.inference_mode():
            ref = model(inputs)
            got = quantized(inputs) if path == "forward" else _decode(quantized, inputs)
        agreement = (ref.argmax(-1) == got.argmax(-1)).float().mean().item()
        bpb_ref, bpb = _bits_per_byte(ref, targets), _bits_per_byte(got, targets)
        assert bpb_ref < 4.5                                               # it did learn (8 = uniform)
        assert agreement >= 0.99, (path, agreement)
        assert abs(bpb - bpb_ref) / bpb_ref <= max_bpb_change, (path, bpb, bpb_ref)
    assert weight_bytes(quantized) < weight_bytes(model)


# Decode vs forward, max |Δ logit| (logits here span ~±15): fp32 computes the same sums in another
# order; bf16 decode rounds x to bf16 (on CPUs with bf16 dot products) and int8 decode quantizes x
# per block of 32, which the forward does not. Measured: 0.02 (bf16) and 0.12 (int8) over 1024 steps.
DECODE_ATOL = {"fp32": 1e-4, "bf16": 0.05, "int8": 0.25}


@pytest.mark.parametrize("fmt", ["fp32", "bf16", "int8"])
def test_decode_equals_forward_and_save_load_is_exact(trained, fmt, tmp_path):
    model, text = trained
    quantized = mambakit.quantize(copy.deepcopy(model), fmt)
    ids = text[:, :12].repeat(2, 1)
    with torch.inference_mode():
        full = quantized(ids)
        torch.testing.assert_close(_decode(quantized, ids), full, atol=DECODE_ATOL[fmt], rtol=1e-4)
        quantized.save_pretrained(tmp_path)
        loaded = MambaLM.from_pretrained(tmp_path)
        assert getattr(loaded, "quantization", None) == (None if fmt == "fp32" else fmt)
        if fmt == "fp32":   # loads as a plain model (F.linear); packed again, the same kernel
            loaded = mambakit.quantize(loaded, "fp32")
        assert torch.equal(loaded(ids), full)


def test_unknown_format_and_double_quantization_are_refused(trained):
    model = copy.deepcopy(trained[0])
    with pytest.raises(ValueError, match=r"unknown weight format 'int4'; choose from \['fp32', 'bf16', 'int8'\]"):
        mambakit.quantize(model, "int4")
    mambakit.quantize(model, "int8")
    with pytest.raises(ValueError, match="already quantized to int8"):
        mambakit.quantize(model, "bf16")
    with pytest.raises(ValueError, match="saves only in the mambakit format"):
        model.save_pretrained("unused-dir", format="transformers")


@pytest.mark.parametrize("tie", [True, False])
def test_num_parameters_is_the_same_in_every_format(tie, tmp_path):
    """int8 weights are buffers and count; a quantized copy of a tied head counts once — also
    after a save and a load."""
    model = MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=50, d_state=8, tie_embeddings=tie))
    expected = sum(p.numel() for p in model.parameters())
    for fmt in ("fp32", "bf16", "int8"):
        quantized = mambakit.quantize(copy.deepcopy(model), fmt)
        assert quantized.num_parameters() == expected, fmt
        quantized.save_pretrained(tmp_path / fmt)
        assert MambaLM.from_pretrained(tmp_path / fmt).num_parameters() == expected, fmt
