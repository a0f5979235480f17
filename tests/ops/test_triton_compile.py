"""Every Triton kernel compiles for a GPU (sm_90) on this GPU-less machine: triton's own LLVM and
bundled ptxas need no device. The interpreter tests check what the kernels compute; this catches
what only the compiler rejects. Small tiles (and every optional input on) keep it quick; run as a
script it compiles in this process (`python tests/ops/test_triton_compile.py`).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]


def compile_all() -> list[str]:
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from mambakit.ops.triton_kernels import scan, ssd, state_update

    act = ("u_ptr", "delta_ptr", "x_ptr", "dt_ptr", "B_ptr", "C_ptr", "z_ptr", "out_ptr", "y_ptr", "dout_ptr")
    scalars = {"dt_min": "fp32", "dt_max": "fp32"}
    common = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, ACC=tl.float32)
    cases = [(scan.selective_scan_fwd_kernel, dict(common, HAS_H0=True, HAS_RESET=True, SAVE_CKPT=True,
                                                  CHUNK=16, BLOCK_D=16, BLOCK_N=16)),
             (scan.selective_scan_bwd_kernel, dict(common, HAS_DLAST=True, HAS_RESET=True, CHUNK=16,
                                                  BLOCK_D=16, BLOCK_N=16)),
             (state_update.selective_state_update_kernel, dict(common, BLOCK_D=16, BLOCK_N=16)),
             (ssd.ssd_fwd_kernel, dict(common, D_PER_P=True, HAS_LIMIT=True, HAS_H0=True, HAS_RESET=True,
                                       Q=16, BLOCK_P=16, BLOCK_N=16, DOT=tl.bfloat16)),
             (ssd.ssd_fwd_kernel, dict(common, D_PER_P=False, HAS_LIMIT=False, HAS_H0=False, HAS_RESET=False,
                                       Q=16, BLOCK_P=16, BLOCK_N=16, DOT=tl.float32))]
    built = []
    for fn, constexprs in cases:
        signature = {name: "constexpr" if name in constexprs else scalars.get(name) or
                     ("*u8" if name == "reset_ptr" else "*bf16" if name in act else "*fp32") if
                     name.endswith("_ptr") or name in scalars else "i32" for name in fn.arg_names}
        triton.compile(ASTSource(fn, signature, constexprs=constexprs), target=GPUTarget("cuda", 90, 32))
        built.append(fn.__name__)
    return built


def test_every_kernel_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}   # compile, don't interpret
    r = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=600, cwd=ROOT,
                       env={**env, "PYTHONPATH": str(ROOT), "TRITON_DEFAULT_FP_FUSION": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["selective_scan_fwd_kernel", "selective_scan_bwd_kernel",
                                "selective_state_update_kernel", "ssd_fwd_kernel", "ssd_fwd_kernel"]


if __name__ == "__main__":
    print("\n".join(compile_all()))
