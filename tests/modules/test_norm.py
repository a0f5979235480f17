"""RMSNorm's two paths (torch's F.rms_norm for a few rows, the gated norm's one-pass kernel for
prefill and training rows) against the spec, F.rms_norm in fp32: outputs and gradients."""

import pytest
import torch
import torch.nn.functional as F

from mambakit.modules.norm import KERNEL_MIN_ROWS, RMSNorm


def spec(x, weight, eps):
    return F.rms_norm(x.float(), weight.shape, weight.float(), eps).to(x.dtype)


@pytest.mark.parametrize("shape", [(1, 37), (2, 3, 37), (1, KERNEL_MIN_ROWS, 37), (2, 40, 64), (3, 17, 5)])
def test_rms_norm_matches_the_spec_with_gradients(shape):
    gen = torch.Generator().manual_seed(0)
    norm = RMSNorm(shape[-1], eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(shape[-1], generator=gen) + 0.5)
    x = (torch.randn(shape, generator=gen) * 3).requires_grad_(True)
    dy = torch.randn(shape, generator=gen)
    y = norm(x)
    dx, dw = torch.autograd.grad((y * dy).sum(), [x, norm.weight])
    x_ref, w_ref = x.detach().clone().requires_grad_(True), norm.weight.detach().clone().requires_grad_(True)
    y_ref = spec(x_ref, w_ref, 1e-5)
    dx_ref, dw_ref = torch.autograd.grad((y_ref * dy).sum(), [x_ref, w_ref])
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dx, dx_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dw, dw_ref, atol=1e-4, rtol=1e-5)


def test_bf16_rows_keep_their_dtype_and_match_the_spec():
    x = torch.randn(2, 40, 24).to(torch.bfloat16)
    norm = RMSNorm(24)
    with torch.no_grad():
        y = norm(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, spec(x, norm.weight, norm.eps))
