import pytest
import torch
import torch.nn.functional as F

from mambakit.models import build
from mambakit.plots.selectivity import plot_selectivity, selectivity
from tests.cli.test_cli import mambakit
from tests.conftest import tiny_mamba


def test_selectivity_reads_the_layers_own_delta_b_c():
    model = tiny_mamba()
    ids = torch.randint(0, 50, (1, 9))
    sel = selectivity(model, ids, layer=1)
    mixer = model.backbone.layers[1].mixer
    # Recompute layer 1's input by hand and compare Δ, B, C with what the mixer sees.
    with torch.no_grad():
        h = model.backbone.layers[0](model.backbone.embedding(ids))
        xz = mixer.in_proj(model.backbone.layers[1].norm(h))
        x = xz[..., :mixer.d_inner].transpose(1, 2)
        x = F.silu(F.conv1d(F.pad(x, (mixer.d_conv - 1, 0)), mixer.conv1d.weight, mixer.conv1d.bias,
                            groups=mixer.d_inner)).transpose(1, 2)[0]
        dt, B, C = mixer.x_proj(x).split([mixer.dt_rank, mixer.d_state, mixer.d_state], -1)
        delta = F.softplus(mixer.dt_proj(dt))
    torch.testing.assert_close(sel["delta"], delta)
    torch.testing.assert_close(sel["B"], B)
    torch.testing.assert_close(sel["C"], C)
    assert sel["delta"].shape == (9, mixer.d_inner) and bool((sel["delta"] > 0).all())


def test_selectivity_refuses_lti_models_and_cli_draws_png(tmp_path):
    with pytest.raises(ValueError, match="no selective layer"):
        selectivity(build("s4d", "tiny"), torch.tensor([[1, 2]]))
    model = tiny_mamba()
    path = plot_selectivity(tmp_path / "s.png", model, torch.tensor([[1, 2, 3]]), ["a", "b", "c"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tiny_mamba(vocab_size=257).save_pretrained(tmp_path / "ck")     # byte-level, like --text
    r = mambakit("plot", "selectivity", "--checkpoint", str(tmp_path / "ck"), "--text", "ab",
                 "--out", str(tmp_path / "out"))
    assert r.returncode == 0 and (tmp_path / "out" / "selectivity.png").is_file(), r.stderr
    r = mambakit("plot", "selectivity", "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "needs --checkpoint" in r.stderr
