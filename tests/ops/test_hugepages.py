"""ops/hugepages.py: weights moved onto transparent huge pages keep their values, dtypes and shapes;
quantize() lays a model's streamed weights out in reading order in one buffer, with one copy, and
PackedLinear's fp32 weight stays the very Parameter (ties hold)."""
import pytest
import torch

from mambakit.modules.linear import PackedLinear
from mambakit.ops.hugepages import HUGE_PAGE, _madvise, together_on_huge_pages


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8])
def test_one_tensor_keeps_values_and_starts_on_a_huge_page(dtype):
    t = (torch.randn(2100, 1027) * 50).to(dtype)                     # > 2 MB at every dtype, odd tail
    (moved,) = together_on_huge_pages([t])
    assert moved.dtype == t.dtype and moved.shape == t.shape and moved.is_contiguous()
    assert torch.equal(moved, t)
    if _madvise() is not None:
        assert moved.data_ptr() % HUGE_PAGE == 0 and moved.data_ptr() != t.data_ptr()


def test_packed_fp32_keeps_the_parameter_and_its_tie():
    embedding = torch.nn.Embedding(1100, 600)                         # 2.6 MB: moved
    weight = embedding.weight
    before = weight.detach().clone()
    packed = PackedLinear(weight, None, "fp32")
    assert packed.weight is weight and embedding.weight is weight
    assert torch.equal(weight, before)
    x = torch.randn(3, 600)
    torch.testing.assert_close(packed(x), x @ before.T, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        weight[0] += 1                                                # one tensor still, as before
    assert torch.equal(embedding(torch.tensor([0]))[0], packed.weight[0])


def test_together_keeps_values_and_lays_tensors_out_in_order():
    ts = [(torch.randn(*shape) * 50).to(dtype) for shape, dtype in
          [((700, 1027), torch.float32), ((3, 5), torch.int8), ((1100, 999), torch.bfloat16), ((7,), torch.float32)]]
    moved = together_on_huge_pages(ts)
    for a, b in zip(moved, ts):
        assert a.dtype == b.dtype and a.shape == b.shape and a.is_contiguous() and torch.equal(a, b)
    if _madvise() is None:
        assert all(a is b for a, b in zip(moved, ts))
        return
    assert moved[0].data_ptr() % HUGE_PAGE == 0
    assert len({t.untyped_storage().data_ptr() for t in moved}) == 1             # one buffer
    for a, b in zip(moved, moved[1:]):                                         # in order, 64-byte aligned
        assert b.data_ptr() % 64 == 0
        assert a.data_ptr() + a.numel() * a.element_size() <= b.data_ptr() < a.data_ptr() + a.numel() * a.element_size() + 64


@pytest.mark.parametrize("fmt", ["fp32", "bf16", "int8"])
def test_quantize_lays_the_decode_weights_out_in_reading_order(fmt):
    from mambakit import MambaConfig, MambaLM, quantize
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=64, n_layer=2, vocab_size=3000)).eval()   # 0.8 MB head: the arena > 2 MB
    ids = torch.randint(0, 3000, (1, 7))
    with torch.inference_mode():
        before = model(ids)
    quantize(model, fmt)
    with torch.inference_mode():
        torch.testing.assert_close(model(ids), before, atol=0.5 if fmt != "fp32" else 1e-5, rtol=0.1)
    assert model.lm_head.weight is model.backbone.embedding.weight or fmt != "fp32"    # the tie holds
    if _madvise() is None:
        return
    m = model.backbone.layers[0].mixer
    order = [m.in_proj.weight, m.x_proj.weight, m.dt_proj.weight, m.out_proj.weight,
             model.backbone.layers[1].mixer.in_proj.weight, model.lm_head.weight]
    assert len({t.untyped_storage().data_ptr() for t in order}) == 1
    assert [t.data_ptr() for t in order] == sorted(t.data_ptr() for t in order)


@pytest.mark.parametrize("fmt", ["fp32", "bf16", "int8"])
def test_quantize_copies_each_weight_once(fmt, monkeypatch):
    """PackedLinear keeps its weight where the format conversion left it (fp32: the very storage);
    quantize() moves the streamed weights once, together, into the reading-order buffer."""
    from mambakit import MambaConfig, MambaLM, quantize
    from mambakit.models import quantize as quantize_module

    calls = []
    real = quantize_module.together_on_huge_pages
    monkeypatch.setattr(quantize_module, "together_on_huge_pages", lambda ts: calls.append(len(ts)) or real(ts))
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=64, n_layer=2, vocab_size=3000)).eval()
    linear = torch.nn.Linear(1100, 600)                                # 2.6 MB: big enough to be moved
    if fmt == "fp32":
        assert PackedLinear.from_linear(linear, fmt).weight.data_ptr() == linear.weight.data_ptr()
    quantize(model, fmt)
    assert calls == [2 * 4 + 1]                       # in_proj, x_proj, dt_proj, out_proj per layer, lm_head
