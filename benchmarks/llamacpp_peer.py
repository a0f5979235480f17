"""llama.cpp as a peer of bench_lm.py (`--with-llamacpp`), built and run on this machine.

1. source: the llama.cpp tree vendored in the `llama-cpp-python` sdist on PyPI (pinned below), got
   with `pip download --no-binary :all:` into ~/.cache/mambakit/llamacpp/<version>/;
2. build: cmake + ninja, Release, native CPU (GGML_NATIVE), static, only `llama-bench` and
   `llama-quantize`, niced, -j2; kept in the cache and reused by later runs;
3. model: our random-weight MambaLM exported in transformers' format, converted with the tree's own
   `convert_hf_to_gguf.py` (its `gguf-py` on PYTHONPATH; no tokenizer files, so it takes its
   built-in GPT-NeoX vocabulary, 50280 ids like the 130M shape) to f32, then `llama-quantize` to
   f16 and q8_0;
4. run: `llama-bench -t <cores> -o json`: prefill `-p L -n 0`, decode `-p 0 -n N -d CTX` (CTX
   tokens of context processed untimed first), medians of its repetitions.
Any failure raises LlamaCppUnavailable with one line saying why; bench_lm then goes on without it.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
from pathlib import Path

VERSION = "0.3.36"  # llama-cpp-python sdist whose vendor/llama.cpp is built
TYPES = ("f32", "f16", "q8_0")  # llama.cpp's model types, beside mambakit's fp32 / bf16 / int8
PAIRS = {"fp32": "f32", "bf16": "f16", "int8": "q8_0"}  # mambakit precision -> the llama.cpp peer
BUILD_FLAGS = ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=OFF",
               "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF",
               "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TOOLS=ON"]
TARGETS = ("llama-bench", "llama-quantize")


class LlamaCppUnavailable(RuntimeError):
    """llama.cpp could not be fetched, built, converted to or run; the message is one line."""


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mambakit" / "llamacpp" / VERSION


def _run(cmd: list, what: str, log: Path, timeout: float, env: dict | None = None) -> str:
    """Run `cmd`, appending its output to `log`; a failure becomes one line naming `what`."""
    try:
        proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LlamaCppUnavailable(f"{what} failed: {e}") from None
    with open(log, "a") as f:
        f.write(f"$ {' '.join(map(str, cmd))}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}").splitlines()[-1]
        raise LlamaCppUnavailable(f"{what} failed ({last.strip()[:200]}); see {log}")
    return proc.stdout


def source(root: Path) -> Path:
    """The llama.cpp tree of the pinned sdist, downloaded and unpacked once."""
    tree = root / "src" / "vendor" / "llama.cpp"
    if (tree / "CMakeLists.txt").is_file():
        return tree
    root.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "--quiet",
          f"llama-cpp-python=={VERSION}", "-d", root], "downloading the llama-cpp-python sdist",
         root / "build.log", timeout=600)
    archive = next(root.glob("llama_cpp_python-*.tar.gz"), None)
    if archive is None:
        raise LlamaCppUnavailable(f"pip download left no llama_cpp_python sdist in {root}")
    staging = root / "src.partial"
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(archive) as tar:
        tar.extractall(staging, filter="data")  # refuses absolute paths and links out of the folder
    top = next(staging.iterdir())
    top.rename(root / "src")  # whole tree or nothing: an interrupted unpack is not mistaken for one
    shutil.rmtree(staging)
    return tree


def build(root: Path, jobs: int = 2) -> Path:
    """build/bin with llama-bench and llama-quantize, compiled once for this CPU."""
    bin_dir = root / "build" / "bin"
    if all((bin_dir / t).is_file() for t in TARGETS):
        return bin_dir
    tree = source(root)
    for tool in ("cmake", "ninja"):
        if shutil.which(tool) is None:
            raise LlamaCppUnavailable(f"building llama.cpp needs {tool} on PATH")
    log = root / "build.log"
    print(f"[llama.cpp] building {', '.join(TARGETS)} in {root / 'build'} (once; several minutes)", flush=True)
    nice = ["nice", "-n", "5"] if shutil.which("nice") else []
    _run([*nice, "cmake", "-S", tree, "-B", root / "build", "-G", "Ninja", *BUILD_FLAGS],
         "configuring llama.cpp", log, timeout=600)
    _run([*nice, "ninja", "-C", root / "build", f"-j{jobs}", *TARGETS], "compiling llama.cpp", log, timeout=7200)
    return bin_dir


def convert(export_dir: Path, out_dir: Path, root: Path, bin_dir: Path) -> dict[str, Path]:
    """{type: gguf file} for each of TYPES, from a transformers-format MambaForCausalLM folder."""
    tree = source(root)
    log = root / "convert.log"
    f32 = out_dir / "model-f32.gguf"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree / "gguf-py"), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1"}
    _run([sys.executable, tree / "convert_hf_to_gguf.py", export_dir, "--outtype", "f32", "--outfile", f32],
         "convert_hf_to_gguf.py", log, timeout=1800, env=env)
    files = {"f32": f32}
    for kind in TYPES[1:]:
        files[kind] = out_dir / f"model-{kind}.gguf"
        _run([bin_dir / "llama-quantize", f32, files[kind], kind.upper()], f"llama-quantize to {kind}", log, timeout=1800)
    return files


def parse_llama_bench(text: str) -> list[dict]:
    """llama-bench `-o json` output -> rows {n_prompt, n_gen, n_depth, type, median_ns}: the median
    of its per-repetition samples (each covers n_prompt + n_gen tokens after n_depth untimed)."""
    try:
        tests = json.loads(text)
    except json.JSONDecodeError as e:
        raise LlamaCppUnavailable(f"llama-bench printed no JSON ({e})") from None
    rows = []
    for t in tests if isinstance(tests, list) else []:
        samples = t.get("samples_ns") or [t.get("avg_ns")]
        if not all(isinstance(s, (int, float)) and s > 0 for s in samples):
            raise LlamaCppUnavailable(f"llama-bench test without timings: {json.dumps(t)[:200]}")
        rows.append({"n_prompt": int(t["n_prompt"]), "n_gen": int(t["n_gen"]), "n_depth": int(t.get("n_depth", 0)),
                     "type": t.get("model_type", ""), "median_ns": statistics.median(samples)})
    if not rows:
        raise LlamaCppUnavailable("llama-bench's JSON held no tests")
    return rows


def to_cases(rows: list[dict]) -> dict:
    """Rows -> bench_lm's shapes: {"prefill": {L: {seconds, tokens_per_s}},
    "decode": {context: {ms_per_token, tokens_per_s}}} (keys are strings, as in lm.json)."""
    prefill, decode = {}, {}
    for r in rows:
        seconds = r["median_ns"] / 1e9
        if r["n_gen"] == 0 and r["n_prompt"] > 0:
            prefill[str(r["n_prompt"])] = {"seconds": seconds, "tokens_per_s": r["n_prompt"] / seconds}
        elif r["n_prompt"] == 0 and r["n_gen"] > 0:
            ms = seconds * 1e3 / r["n_gen"]
            decode[str(r["n_depth"])] = {"ms_per_token": ms, "tokens_per_s": 1e3 / ms}
    return {"prefill": prefill, "decode": decode}


def bench_model(bin_dir: Path, gguf: Path, threads: int, lengths: list[int], contexts: list[int],
                n_gen: int, repetitions: int) -> dict:
    """Prefill tok/s at each length and decode ms/token after each context, for one gguf file."""
    common = [bin_dir / "llama-bench", "-m", gguf, "-t", threads, "-r", repetitions, "-o", "json"]
    log = gguf.parent / "llama-bench.log"
    prefill = _run([*common, "-p", ",".join(map(str, lengths)), "-n", "0"], "llama-bench prefill", log, timeout=3600)
    decode = _run([*common, "-p", "0", "-n", n_gen, "-d", ",".join(map(str, contexts))],
                  "llama-bench decode", log, timeout=3600)
    return to_cases(parse_llama_bench(prefill) + parse_llama_bench(decode))


def ratios(results: dict) -> list[dict]:
    """mambakit vs llama.cpp at each paired precision, from bench_lm's results: decode ms/token
    ours/theirs (target ≤ 1) and prefill tok/s ours/theirs (target ≥ 2), where both ran."""
    out = []
    for ours, theirs in PAIRS.items():
        for key, field, target in (("decode", "ms_per_token", "<= 1"), ("prefill", "tokens_per_s", ">= 2")):
            mine = results[key].get(f"mambakit {ours}", {})
            peer = results[key].get(f"llama.cpp {theirs}", {})
            for x in mine:
                a, b = mine[x].get(field), peer.get(x, {}).get(field)
                if a and b:
                    out.append({"what": key, "at": x, "mambakit": ours, "llama.cpp": theirs,
                                "ratio": a / b, "target": target})
    return out


def ratio_lines(rows: list[dict]) -> list[str]:
    unit = {"decode": "ms/token ours/theirs", "prefill": "tok/s ours/theirs"}
    return [f"{r['what']} {'ctx' if r['what'] == 'decode' else 'L'}={r['at']}: mambakit {r['mambakit']} vs "
            f"llama.cpp {r['llama.cpp']}: {r['ratio']:.2f}x {unit[r['what']]} (target {r['target']})" for r in rows]


def run_peer(export_dir: Path, work_dir: Path, threads: int, lengths: list[int], contexts: list[int],
             n_gen: int = 32, repetitions: int = 3) -> dict:
    """{"llama.cpp f32": cases, ...} for a transformers-format export; raises LlamaCppUnavailable."""
    root = cache_dir()
    bin_dir = build(root)
    files = convert(export_dir, work_dir, root, bin_dir)
    return {f"llama.cpp {kind}": bench_model(bin_dir, path, threads, lengths, contexts, n_gen, repetitions)
            for kind, path in files.items()}
