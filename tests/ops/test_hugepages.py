"""ops/hugepages.py: a weight moved onto transparent huge pages keeps its values, dtype and shape,
and PackedLinear's fp32 weight stays the very Parameter (ties hold) after the move."""
import pytest
import torch

from mambakit.modules.linear import PackedLinear
from mambakit.ops.hugepages import HUGE_PAGE, _madvise, on_huge_pages


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8])
def test_copy_keeps_values_and_starts_on_a_huge_page(dtype):
    t = (torch.randn(2100, 1027) * 50).to(dtype)                     # > 2 MB at every dtype, odd tail
    moved = on_huge_pages(t)
    assert moved.dtype == t.dtype and moved.shape == t.shape and moved.is_contiguous()
    assert torch.equal(moved, t)
    if _madvise() is not None:
        assert moved.data_ptr() % HUGE_PAGE == 0 and moved.data_ptr() != t.data_ptr()


def test_small_tensors_stay_where_they_are():
    t = torch.randn(10, 10)
    assert on_huge_pages(t) is t


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
