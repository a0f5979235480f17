"""Speed measurements of mambakit itself on this machine (medians of repeated runs).

Behind `mambakit bench`; the peer comparisons (transformers, mambapy) live in benchmarks/.
Never used as a timed test: machines are noisy, so these report, they don't assert.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings of CUDA calls mean something."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1,
                   device: torch.device | str = "cpu") -> float:
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def scan_throughput(backend: str, b: int = 1, d: int = 1536, n: int = 16, l: int = 2048,
                    backward: bool = False, repeats: int = 5, seed: int = 0) -> dict:
    """Time `selective_scan` (softplus Δ + bias, D skip, SiLU(z) gate) on random inputs shaped as
    in a Mamba block; elements/s counts the b·d·l·n state updates."""
    from mambakit.ops import selective_scan

    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    inputs = dict(u=r(b, d, l), delta=r(b, d, l) - 4, A=-torch.rand(d, n, generator=g) - 0.5,
                  B=r(b, n, l), C=r(b, n, l), D=r(d), z=r(b, d, l), delta_bias=r(d) * 0.1)
    if backward:
        for t in inputs.values():
            t.requires_grad_(True)

    def run():
        out = selective_scan(**inputs, delta_softplus=True, backend=backend)
        if backward:
            out.sum().backward()

    seconds = median_seconds(run, repeats)
    return {"backend": backend, "b": b, "d": d, "n": n, "l": l, "backward": backward,
            "median_s": seconds, "elements_per_s": b * d * l * n / seconds}


@torch.inference_mode()
def prefill_tokens_per_s(model, length: int, repeats: int = 3, seed: int = 0) -> float:
    """Tokens/s of one forward pass over a random (1, length) prompt."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.vocab_size, (1, length), generator=g)
    return length / median_seconds(lambda: model(ids), repeats)


@torch.inference_mode()
def decode_latency_ms(model, context: int, n_tokens: int = 8, seed: int = 0) -> float:
    """Median ms per decoded token after prefilling `context` tokens: the cost a chat user feels
    at that context length (flat for recurrent models, growing for attention's KV cache)."""
    return decode_latency_curve(model, [context], n_tokens, seed)[context]


@torch.inference_mode()
def decode_latency_curve(model, contexts, n_tokens: int = 8, seed: int = 0) -> dict[int, float]:
    """{context: median ms per decoded token} for increasing `contexts`, from ONE growing cache:
    the prompt is prefilled (chunked) only up to the next context each time, so a curve out to
    2^14 tokens costs one 2^14-token prefill, not one per point."""
    from mambakit.generation import prefill

    model.eval()
    contexts = sorted(contexts)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.vocab_size, (1, contexts[-1]), generator=g)
    cache = model.allocate_cache(1, max_seqlen=contexts[-1] + len(contexts) * (n_tokens + 1))
    done, result = 0, {}
    for context in contexts:
        logits = prefill(model, ids[:, done:context], cache) if context > done else None
        done = max(done, context)
        token = ids[:, done - 1] if logits is None else logits[:, :model.vocab_size].argmax(-1)
        times = []
        for _ in range(n_tokens + 1):   # the first step warms up allocations; not counted
            start = time.perf_counter()
            logits = model.step(token, cache)
            times.append(time.perf_counter() - start)
            token = logits[:, :model.vocab_size].argmax(-1)
        result[context] = 1000 * statistics.median(times[1:])
    return result
