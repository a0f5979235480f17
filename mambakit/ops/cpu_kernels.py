"""The one home of the compiled CPU kernels: builds, caches, loads and declares every C++ symbol.

Why plain C++ loaded with ctypes rather than a torch extension or numba: it needs only a system
g++ (no torch headers, no ninja, no new dependency), compiles in seconds instead of ~40 s, and is
compiled with -march=native for the CPU it runs on (AVX2-only and AVX-512 machines both occur).

All sources in csrc/ link into one shared object, cached in ~/.cache/mambakit/ (or
$MAMBAKIT_CACHE) under a hash of sources, flags, compiler and CPU. It is written atomically (temp
file + rename) beside a `.sum` file holding its size and sha256; a cached object whose size or
hash no longer matches (a truncated copy, a disk error) is rebuilt, never loaded. If g++ is
missing or compilation fails, `available()` says why and the ops' "auto" falls back to "ref".

Leaves on top of this module: scan_cpu.py (selective scan fwd/bwd), mamba_inner.py (the Mamba
mixer's conv + SiLU + scan + gate for whole sequences, training), step_cpu.py (one-token decode
step and Mamba-2's SSD step, the matrix-vector products of decoding), block_step_cpu.py (a whole
Mamba block's decode step, or a whole Mamba LM's, in one call), ssd_chunk_scan.py / ssd_cpu.py (Mamba-2's chunked SSD
forward) and mamba2_cpu.py (its conv + SiLU and gated RMSNorm for prefill). A new kernel is a csrc/ file
plus its entry in `_SIGNATURES`. `build_for` compiles for another target (AVX2-only, no SIMD) so
tests reach the portable fallbacks of the intrinsics code on an AVX-512 machine.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

CSRC = Path(__file__).parent / "csrc"
SOURCES = [CSRC / "selective_scan.cpp", CSRC / "decode_step.cpp", CSRC / "ssd_step.cpp",
           CSRC / "gemv.cpp", CSRC / "mamba_block_step.cpp", CSRC / "ssd_chunk.cpp",
           CSRC / "mamba2_rows.cpp", CSRC / "causal_conv1d.cpp"]  # linked into one library
HEADERS = [CSRC / "fastmath.h", CSRC / "decode_ops.h", CSRC / "gemv.h"]
# -fno-trapping-math: FP operations may be assumed not to trap (nothing here reads FP exception
# flags), which lets GCC if-convert the range checks in fastmath.h's exp_ and so vectorise every
# loop that calls it; with the default the scan's exp loops stayed scalar ("control flow in loop"):
# 130M fp32 prefill at L=512 went from ~200 to ~310 tok/s on a Zen 3 EPYC. Results are unchanged.
FLAGS = ["-O3", "-fopenmp", "-shared", "-fPIC", "-std=gnu++17", "-fno-trapping-math"]  # plus -march


class ScanArgs(ctypes.Structure):
    """Mirror of `struct ScanArgs` in selective_scan.cpp (order and types must match)."""

    _fields_ = [(name, ctypes.c_void_p) for name in (
        "u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0", "reset", "out", "last", "ckpt", "v",
        "dout", "dlast", "du", "ddelta", "dA", "dB", "dC", "dD", "dz", "dh0")] + \
        [(name, ctypes.c_int64) for name in ("b", "d", "l", "n", "g", "chunk")] + \
        [("softplus", ctypes.c_int32), ("threads", ctypes.c_int32)]


class MambaBlockArgs(ctypes.Structure):
    """Mirror of `struct MambaBlockArgs` in mamba_block_step.cpp (order and types must match)."""

    _fields_ = [(name, ctypes.c_void_p) for name in (
        "residual", "norm_w", "residual_out", "in_w", "xp_w", "out_w", "in_scale", "xp_scale", "out_scale",
        "in_bias", "xp_bias", "out_bias", "conv_w", "conv_b", "dt_w", "dt_b", "A", "D",
        "conv_state", "ssm_state", "conv_state_out", "ssm_state_out")] + \
        [(name, ctypes.c_int64) for name in ("b", "d_model", "d_inner", "d_state", "dt_rank", "d_conv")] + \
        [("eps", ctypes.c_float)] + \
        [(name, ctypes.c_int32) for name in ("in_format", "xp_format", "out_format", "threads")]


class MambaLMArgs(ctypes.Structure):
    """Mirror of `struct MambaLMArgs` in mamba_block_step.cpp (order and types must match)."""

    _fields_ = [("layers", ctypes.POINTER(MambaBlockArgs)), ("n_layer", ctypes.c_int64),
                ("residual", ctypes.c_void_p), ("norm_w", ctypes.c_void_p), ("eps", ctypes.c_float),
                ("head_format", ctypes.c_int32), ("head_w", ctypes.c_void_p), ("head_scale", ctypes.c_void_p),
                ("head_bias", ctypes.c_void_p), ("vocab", ctypes.c_int64), ("logits", ctypes.c_void_p),
                ("b", ctypes.c_int64), ("threads", ctypes.c_int32)]


_P, _I, _I32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
_SCAN = [ctypes.POINTER(ScanArgs)]
# Every exported symbol and its argument types (all return void).
_SIGNATURES = {
    "mk_scan_fwd_f32": _SCAN, "mk_scan_fwd_f64": _SCAN,
    "mk_scan_bwd_f32": _SCAN, "mk_scan_bwd_f64": _SCAN,
    # u, u_ls, delta, delta_ls, A, B, C, bc_ls, D, z, z_ls, delta_bias, h0, y, y_ls, last, b, d, l, n,
    # softplus, threads
    "mk_scan_rows_fwd_f32": [_P, _I, _P, _I, _P, _P, _P, _I, _P, _P, _I, _P, _P, _P, _I, _P, _I, _I, _I, _I,
                             _I32, _I32],
    # x, x_stride, state, state_out, w, bias, y, b, d, k, silu
    "mk_conv_step_f32": [_P, _I, _P, _P, _P, _P, _P, _I, _I, _I, _I32],
    # state, state_out, x, x_stride, dt, dt_stride, dt_bias, softplus, A,
    # B, B_bstride, B_gstride, C, C_bstride, C_gstride, g, D, z, z_stride, y, b, d, n
    "mk_state_update_f32": [_P, _P, _P, _I, _P, _I, _P, _I32, _P,
                            _P, _I, _I, _P, _I, _I, _I, _P, _P, _I, _P, _I, _I, _I],
    # state, state_out, x, x_stride, dt, dt_stride, dt_bias, softplus, dt_lo, dt_hi, A,
    # B, B_stride, C, C_stride, g, D, D_per_channel, z, z_stride, y, y_stride, b, h, p, n
    "mk_ssd_step_f32": [_P, _P, _P, _I, _P, _I, _P, _I32, ctypes.c_float, ctypes.c_float, _P,
                        _P, _I, _P, _I, _I, _P, _I32, _P, _I, _P, _I, _I, _I, _I, _I],
    # x, x_stride, w, scale, bias, y, y_stride, m, n, k, threads
    **{f"mk_gemv_{w}": [_P, _I, _P, _P, _P, _P, _I, _I, _I, _I, _I32] for w in ("f32", "bf16", "i8")},
    "mk_gemv_arithmetic": [],
    "mk_mamba_block_step_f32": [ctypes.POINTER(MambaBlockArgs)],
    "mk_mamba_lm_step_f32": [ctypes.POINTER(MambaLMArgs)],
    # xdt, a, B, C, CB, h0, seg, y, final, H, b, l, h, p, g, n, Q, BC_stride, x, x_stride,
    # dt, dt_stride, dt_bias, softplus, dt_lo, dt_hi, A, D, D_per_channel, z, z_stride, threads
    "mk_ssd_chunk_fwd_f32": [_P] * 10 + [_I] * 8 + [_P, _I, _P, _I, _P, _I32, ctypes.c_float, ctypes.c_float,
                                                    _P, _P, _I32, _P, _I, _I32],
    # xdt, a, B, C, CB, H, seg, dy, dfinal, dx, da, dB, dC, dCB, dh0, b, l, h, p, g, n, Q, threads
    "mk_ssd_chunk_bwd_f32": [_P] * 15 + [_I] * 7 + [_I32],
    # y, y_stride, z, z_stride, w, out, rows, d, group, eps, norm_before_gate, threads
    "mk_rmsnorm_gated_f32": [_P, _I, _P, _I, _P, _P, _I, _I, _I, ctypes.c_float, _I32, _I32],
    # y, y_stride, z, z_stride, w, dout, dy, dz, dw_part, rows, d, group, eps, norm_before_gate, threads
    "mk_rmsnorm_gated_bwd_f32": [_P, _I, _P, _I, _P, _P, _P, _P, _P, _I, _I, _I, ctypes.c_float, _I32, _I32],
    # x, x_bstride, x_lstride, state, w, bias, u, u_bstride, u_cstride, u_lstride, state_out, scratch,
    # b, d, l, k, threads
    "mk_conv1d_silu_fwd_f32": [_P, _I, _I, _P, _P, _P, _P, _I, _I, _I, _P, _P, _I, _I, _I, _I, _I32],
    # x, x_bstride, x_lstride, state, w, bias, du, du_bstride, du_cstride, du_lstride, dx, dx_bstride,
    # dx_lstride, dw, dbias, scratch, b, d, l, k, threads
    "mk_conv1d_silu_bwd_f32": [_P, _I, _I, _P, _P, _P, _P, _I, _I, _I, _P, _I, _I, _P, _P, _P, _I, _I, _I, _I,
                               _I32],
    # v, z, z_bstride, z_lstride, y, b, d, l, threads
    "mk_gate_silu_f32": [_P, _P, _I, _I, _P, _I, _I, _I, _I32],
}
_RESTYPES = {"mk_gemv_arithmetic": ctypes.c_int32}  # every other symbol returns void

_lock = threading.Lock()
_state: dict = {}  # "lib" -> loaded CDLL, or "error" -> why not; plus "compile_seconds"


def cache_dir() -> Path:
    root = os.environ.get("MAMBAKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mambakit")
    return Path(root)


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def _fingerprint(path: Path) -> str:
    """"<size> <sha256>" of a file: what the `.sum` beside a cached object records."""
    data = path.read_bytes()
    return f"{len(data)} {hashlib.sha256(data).hexdigest()}"


def _cached_ok(target: Path, checksum: Path) -> bool:
    try:
        return checksum.read_text().strip() == _fingerprint(target)
    except OSError:
        return False


def _build(cxx: str, march: str = "native", sources: tuple[Path, ...] = tuple(SOURCES)) -> Path:
    """Compile the kernels (or reuse a verified cached build) and return the shared object's path."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    flags = [*FLAGS, f"-march={march}"]
    texts = [p.read_text() for p in (*sources, *HEADERS)]
    key = hashlib.sha256("\0".join([*texts, " ".join(flags), version, platform.machine(),
                                    _cpu_flags()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"mambakit-kernels-{key}.so"
    checksum = target.with_name(target.name + ".sum")
    if _cached_ok(target, checksum):
        return target

    # Compile beside the target, then rename: concurrent processes never load half a file. The
    # checksum goes last, so a crash in between leaves an unverified object that is rebuilt.
    # (Inline rather than mambakit.io.atomic: ops/ sits below io/ and imports nothing from it.)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp_sum = checksum.with_name(f".{checksum.name}.{os.getpid()}.tmp")
    start = time.perf_counter()
    try:
        proc = subprocess.run([cxx, *flags, *map(str, sources), "-o", str(tmp)], capture_output=True,
                              text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{cxx} failed: {proc.stderr.strip()[-500:]}")
        tmp_sum.write_text(_fingerprint(tmp))
        os.replace(tmp, target)
        os.replace(tmp_sum, checksum)
    finally:
        tmp.unlink(missing_ok=True)
        tmp_sum.unlink(missing_ok=True)
    _state["compile_seconds"] = time.perf_counter() - start
    return target


def library() -> Optional[ctypes.CDLL]:
    """The loaded kernel library with every symbol declared, or None (then `available` says why)."""
    with _lock:
        if "lib" not in _state and "error" not in _state:
            cxx = os.environ.get("CXX", "g++")
            if shutil.which(cxx) is None:
                _state["error"] = f"C++ compiler {cxx!r} not found (install g++ or set CXX)"
            else:
                try:
                    _state["lib"] = _load(_build(cxx))
                except (OSError, AttributeError, RuntimeError, subprocess.SubprocessError) as exc:
                    _state["error"] = f"could not build the fused kernels: {exc}"
        return _state.get("lib")


def _load(path: Path, complete: bool = True) -> ctypes.CDLL:
    """Load a built library and declare its symbols (all of them must be there if `complete`)."""
    lib = ctypes.CDLL(str(path))
    for name, argtypes in _SIGNATURES.items():
        if complete or hasattr(lib, name):
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, _RESTYPES.get(name)
    return lib


def build_for(march: str, sources: tuple[str, ...]) -> ctypes.CDLL:
    """`sources` (csrc/ file names) compiled for another target than this CPU, e.g. "x86-64-v3"
    (AVX2, no AVX-512) or "x86-64" (SSE2 only): how tests run the portable fallbacks here. Cached
    like the main library; raises RuntimeError if the compiler fails."""
    return _load(_build(os.environ.get("CXX", "g++"), march, tuple(CSRC / s for s in sources)), complete=False)


def available(device: torch.device) -> Optional[str]:
    """None if the compiled kernels can run on `device`, else the reason (compiles on first call)."""
    if device.type != "cpu":
        return f"runs on CPU tensors only, got {device.type}"
    return None if library() is not None else _state["error"]


def compile_seconds() -> Optional[float]:
    """Seconds this process spent compiling the kernels (None if they came from the cache)."""
    return _state.get("compile_seconds")


def in_place_rows(t: Tensor, lead: int = 1, one_stride: bool = False) -> Tensor:
    """t as a kernel that reads rows takes it: the dims after the first `lead` laid out contiguously
    (channels at stride 1), the leading dims at whatever strides the caller passes on — or, with
    `one_stride`, at strides that merge into one row stride (for kernels that take a single one).
    A column slice of a matmul output is such a view and passes in place; anything else is copied."""
    sizes, strides = t.shape, t.stride()
    expected = 1
    for i in reversed(range(lead, t.dim())):
        if sizes[i] != 1 and strides[i] != expected:
            return t.contiguous()
        expected *= sizes[i]
    if one_stride and any(sizes[i] != 1 and strides[i] != sizes[i + 1] * strides[i + 1] for i in range(lead - 1)):
        return t.contiguous()
    return t


def ptr(t: Optional[Tensor]) -> Optional[int]:
    """Address of a tensor's first element (None -> NULL) for a ctypes call."""
    return None if t is None else t.data_ptr()
