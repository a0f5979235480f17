"""`mambakit plot`: draw the SSM lineage's pictures as PNG (thin layer over mambakit.plots.ssm)."""
from __future__ import annotations

import argparse
from pathlib import Path

from mambakit.cli.common import emit_json

WHAT = ("hippo", "kernel", "reconstruction")  # "all" draws these; "selectivity" needs a Mamba checkpoint


def add_parser(sub) -> None:
    p = sub.add_parser("plot", help="draw HiPPO / SSM kernel / reconstruction pictures",
                       description="Write PNGs: the HiPPO-LegS matrix, SSM convolution kernels, and a "
                                   "signal rebuilt from HiPPO states of growing size.")
    p.add_argument("what", choices=[*WHAT, "selectivity", "all"], help="which picture")
    p.add_argument("--out", default="plots", help="output folder (default: plots)")
    p.add_argument("--checkpoint", help="S4/S4D checkpoint: draw the kernels of its first layer; "
                                        "Mamba checkpoint: needed for selectivity")
    p.add_argument("--text", default="def add(a, b):\n    return a + b\n",
                   help="selectivity: the text to run through the model")
    p.add_argument("--layer", type=int, default=0, help="selectivity: which layer (default 0)")
    p.add_argument("--json", action="store_true", help="print the written paths as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mambakit.plots import ssm

    out = Path(args.out)
    what = WHAT if args.what == "all" else (args.what,)
    written = []
    for name in what:
        path = out / f"{name}.png"
        if name == "selectivity":
            _plot_selectivity(path, args)
        elif name == "hippo":
            ssm.plot_hippo(path)
        elif name == "kernel":
            ssm.plot_kernel(path, _checkpoint_mixers(args.checkpoint))
        else:
            ssm.plot_reconstruction(path)
        written.append(str(path))
    if args.json:
        emit_json({"written": written})
    else:
        print("\n".join(written))
    return 0


def _checkpoint_mixers(directory):
    if directory is None:
        return None
    from mambakit.models import load_model
    from mambakit.modules.s4 import LTIMixer

    model = load_model(directory)
    layers = getattr(getattr(model, "backbone", None), "layers", None)
    mixer = getattr(layers[0], "mixer", None) if layers else None
    if not isinstance(mixer, LTIMixer):
        raise ValueError(f"{directory} holds a {type(model).__name__}: kernels exist only for LTI "
                         f"models (s4, s4d); a selective SSM's kernel changes with every input")
    return {f"{type(model).__name__} layer 0": mixer}


def _plot_selectivity(path: Path, args: argparse.Namespace) -> None:
    import torch

    from mambakit.data import load_tokenizer
    from mambakit.models import load_model
    from mambakit.plots.selectivity import plot_selectivity

    if args.checkpoint is None:
        raise ValueError("selectivity needs --checkpoint: a trained Mamba (e.g. runs/demo/mamba)")
    model = load_model(args.checkpoint)
    tokenizer = load_tokenizer(args.checkpoint)
    ids = tokenizer.encode(args.text)
    if not ids:
        raise ValueError("--text is empty")
    labels = [repr(tokenizer.decode([i]))[1:-1] for i in ids]
    plot_selectivity(path, model, torch.tensor([ids]), labels, args.layer)
