"""`mambakit plot`: PNGs written from the command line, kernels of a saved S4D model, clear errors."""
import json

import pytest

from mambakit.models import build
from tests.cli.test_cli import mambakit

PNG = b"\x89PNG\r\n\x1a\n"


def test_plot_all_writes_pngs(tmp_path):
    r = mambakit("plot", "all", "--out", str(tmp_path / "pics"), "--json")
    assert r.returncode == 0, r.stderr
    written = json.loads(r.stdout)["written"]
    assert sorted(p.rsplit("/", 1)[1] for p in written) == ["hippo.png", "kernel.png", "reconstruction.png"]
    for path in written:
        with open(path, "rb") as f:
            data = f.read()
        assert data.startswith(PNG) and len(data) > 5000


def test_plot_kernel_of_a_checkpoint_and_errors(tmp_path):
    from mambakit.cli.main import main

    build("s4d", d_model=8, n_layer=1, vocab_size=20, d_state=8).save_pretrained(tmp_path / "s4d")
    assert main(["plot", "kernel", "--out", str(tmp_path), "--checkpoint", str(tmp_path / "s4d")]) == 0
    assert (tmp_path / "kernel.png").read_bytes().startswith(PNG)
    build("mamba", d_model=8, n_layer=1, vocab_size=20).save_pretrained(tmp_path / "mamba")
    r = mambakit("plot", "kernel", "--out", str(tmp_path), "--checkpoint", str(tmp_path / "mamba"))
    assert r.returncode == 2 and "only for LTI models" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(SystemExit):
        main(["plot", "spectrum"])
