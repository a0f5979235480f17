"""Table 1's ablation layers: S6 without the Mamba block (against the paper's recurrence written
out here) and the Mamba block with S4D inside (no selection: Δ, B, C do not depend on the input)."""
import torch
import torch.nn.functional as F

from mambakit.modules.mamba_lti import MambaLTIMixer
from mambakit.modules.s6 import S6Mixer


def test_s6_layer_is_the_papers_recurrence():
    torch.manual_seed(0)
    d, n, b, l = 6, 4, 2, 11
    layer = S6Mixer(d, d_state=n, dt_rank=2, output="linear")
    x = torch.randn(b, l, d)
    # Mamba paper Algorithm 2: Δ = softplus(Parameter + s_Δ(x)), B = s_B(x), C = s_C(x);
    # h_t = exp(ΔA) h_{t-1} + Δ B x_t;  y_t = C h_t + D x_t; then GELU → linear
    proj = x @ layer.x_proj.weight.T                                    # (b, l, r + 2n)
    delta = F.softplus(proj[..., :2] @ layer.dt_proj.weight.T + layer.dt_proj.bias)   # (b, l, d)
    Bx, Cx = proj[..., 2:2 + n], proj[..., 2 + n:]
    A = -torch.exp(layer.A_log)
    h, ys = torch.zeros(b, d, n), []
    for t in range(l):
        h = torch.exp(delta[:, t, :, None] * A) * h + delta[:, t, :, None] * Bx[:, t, None, :] * x[:, t, :, None]
        ys.append((h * Cx[:, t, None, :]).sum(-1) + layer.D * x[:, t])
    expected = layer.out_proj(F.gelu(torch.stack(ys, 1)))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-4)


def test_mamba_block_with_s4d_has_no_selection():
    """Swapping the input at one position changes no output before it, and the inner SSM's
    kernel (its Δ, B, C) is a parameter: the same for every input."""
    torch.manual_seed(0)
    layer = MambaLTIMixer(8, d_state=8)
    x = torch.randn(1, 12, 8)
    y = x.clone()
    y[:, 7] = torch.randn(8)
    with torch.no_grad():
        kernel = layer.ssm.kernel(12)
        out_x, out_y = layer(x), layer(y)
        torch.testing.assert_close(layer.ssm.kernel(12), kernel)
    torch.testing.assert_close(out_x[:, :7], out_y[:, :7])
    assert not torch.allclose(out_x[:, 7:], out_y[:, 7:])
