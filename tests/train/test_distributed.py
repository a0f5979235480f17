"""Two gloo processes under torchrun reproduce one process on the same global batch."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from safetensors.torch import load_file

from mambakit.models import load_model
from mambakit.train import train
from mambakit.train.distributed import DistContext
from mambakit.train.loop import accumulate_gradients
from tests.train.test_loop import config, corpus, model

ROOT = str(Path(__file__).resolve().parents[2])
SCRIPT = textwrap.dedent("""
    import sys
    import torch
    from safetensors.torch import save_file
    from mambakit.train import train
    from mambakit.train.distributed import init_distributed, wrap_model
    from mambakit.train.loop import accumulate_gradients
    from tests.train.test_loop import config, corpus, model

    out = sys.argv[1]
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    net = model()
    accumulate_gradients(wrap_model(net, ctx), net, corpus(), config(batch_size=4), 0, ctx)
    if ctx.rank == 0:   # after DDP's all-reduce every rank holds the global-batch gradient
        save_file({n: p.grad for n, p in net.named_parameters()}, out + "/grads.safetensors")
    train(model(), corpus(), corpus(), config(steps=2, batch_size=4), out_dir=out + "/run")
""")


def test_two_process_ddp_matches_one_process(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node=2", str(script), str(tmp_path)],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 0, r.stderr[-3000:]
    net = model()
    accumulate_gradients(net, net, corpus(), config(batch_size=4), 0, DistContext())
    grads = load_file(str(tmp_path / "grads.safetensors"))
    for name, p in net.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, atol=1e-6, rtol=1e-5)
    single = model()
    train(single, corpus(), corpus(), config(steps=2, batch_size=4))
    ddp = load_model(tmp_path / "run")
    for a, b in zip(single.state_dict().values(), ddp.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
