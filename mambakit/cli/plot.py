"""`mambakit plot`: draw the SSM lineage's pictures as PNG (thin layer over mambakit.plots.ssm)."""
from __future__ import annotations

import argparse
from pathlib import Path

from mambakit.cli.common import emit_json

WHAT = ("hippo", "kernel", "reconstruction")


def add_parser(sub) -> None:
    p = sub.add_parser("plot", help="draw HiPPO / SSM kernel / reconstruction pictures",
                       description="Write PNGs: the HiPPO-LegS matrix, SSM convolution kernels, and a "
                                   "signal rebuilt from HiPPO states of growing size.")
    p.add_argument("what", choices=[*WHAT, "all"], help="which picture")
    p.add_argument("--out", default="plots", help="output folder (default: plots)")
    p.add_argument("--checkpoint", help="S4/S4D checkpoint: draw the kernels of its first layer")
    p.add_argument("--json", action="store_true", help="print the written paths as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mambakit.plots import ssm

    out = Path(args.out)
    what = WHAT if args.what == "all" else (args.what,)
    written = []
    for name in what:
        path = out / f"{name}.png"
        if name == "hippo":
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
    from mambakit.io.checkpoint import load_model
    from mambakit.modules.s4 import LTIMixer

    model = load_model(directory)
    mixer = model.backbone.layers[0].mixer
    if not isinstance(mixer, LTIMixer):
        raise ValueError(f"{directory} holds a {type(model).__name__}: kernels exist only for LTI "
                         f"models (s4, s4d); a selective SSM's kernel changes with every input")
    return {f"{type(model).__name__} layer 0": mixer}
