import torch
import torch.nn.functional as F

from mambakit.ops import causal_conv1d, causal_conv1d_step


def test_causal_conv_matches_padded_conv1d_and_step():
    x, w, bias = torch.randn(2, 6, 11), torch.randn(6, 4), torch.randn(6)
    y, state = causal_conv1d(x, w, bias)
    expect = F.conv1d(F.pad(x, (3, 0)), w[:, None], bias, groups=6)
    torch.testing.assert_close(y, expect)
    torch.testing.assert_close(state, x[..., -3:])
    s = torch.zeros(2, 6, 3)
    for t in range(11):
        yt, s = causal_conv1d_step(x[..., t], s, w, bias)
        torch.testing.assert_close(yt, y[..., t], atol=1e-6, rtol=1e-6)


def test_initial_state_continues_and_reset_isolates_documents():
    x, w, bias = torch.randn(1, 3, 9), torch.randn(3, 4), torch.randn(3)
    whole, _ = causal_conv1d(x, w, bias)
    a, st = causal_conv1d(x[..., :5], w, bias)
    b, _ = causal_conv1d(x[..., 5:], w, bias, initial_state=st)
    torch.testing.assert_close(torch.cat([a, b], -1), whole)
    reset = torch.zeros(1, 9, dtype=torch.bool)
    reset[0, 5] = True
    packed, _ = causal_conv1d(x, w, bias, reset=reset)
    alone, _ = causal_conv1d(x[..., 5:], w, bias)
    torch.testing.assert_close(packed[..., 5:], alone)
    torch.testing.assert_close(packed[..., :5], a)
