"""Continuous batching: one thread owns the model and runs a loop of engine steps.

Each step (1) drops rows that finished or whose client went away, (2) admits waiting requests,
(3) runs one prefill chunk of the oldest admitted request — a long prompt is fed `prefill_chunk`
tokens per step, so it never stalls the running rows for more than one chunk — and (4) runs one
decode step of the whole running batch through a single `model.step`. Rows join the batch with
`state.concat` when their prompt is in and leave it with `state.select`, so requests come and go
at any step; each row samples with its own parameters and seed (`generation.Sampler`) and is
turned into text incrementally (`generation.TextDecoder`, stop strings included).

Prompt states are cached (`PrefixCache`) at chunk boundaries — those at chunk × 2^k and the
last one inside the prompt, so a prompt of l tokens stores O(log l) states while a shared prefix
still finds one at least half its length — before the last prompt token (so the same prompt
again prefills one token) and after a finished completion (so the next turn of a chat starts
from it). HTTP lives elsewhere: the engine calls each request's
`emit(event)` from its thread; events are dicts {"choice", "text", "finish_reason"} and finally
{"done": True, "usage": {...}} or {"error": message}.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from mambakit.generation import Sampler, SamplingParams, TextDecoder, prefill
from mambakit.serve.metrics import Metrics
from mambakit.serve.prefix_cache import PrefixCache, prefix_hashes
from mambakit.state import concat, fork, select, snapshot, state_nbytes

log = logging.getLogger("mambakit.serve")


class QueueFull(Exception):
    """The waiting queue is at its bound: the client should retry later (HTTP 429)."""


class EngineStopped(Exception):
    """The engine thread is not running: nothing will be served (HTTP 503)."""


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int = 16
    stop: list[str] = field(default_factory=list)
    seed: Optional[int] = None
    n: int = 1
    ignore_eos: bool = False


@dataclass
class Choice:
    """One generated sequence: a row of the running batch once its prompt is in."""

    index: int
    sampler: Sampler
    decoder: TextDecoder
    next_token: int = -1
    generated: int = 0
    fed: list[int] = field(default_factory=list)   # tokens absorbed by the state after the prompt
    finish_reason: Optional[str] = None
    last_emit: float = 0.0


class Job:
    """A request inside the engine. `cancel()` may be called from any thread."""

    def __init__(self, request: GenerationRequest, emit: Callable[[dict], None], deadline: float):
        self.request, self.emit, self.deadline = request, emit, deadline
        self.hashes = prefix_hashes(request.prompt_ids)
        self.cancelled = False
        self.choices: list[Choice] = []
        self.cache = None
        self.pos = 0                 # prompt tokens in self.cache
        self.cached_tokens = 0       # of which came from the prefix cache
        self.submitted = time.perf_counter()

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def over(self) -> bool:
        return self.cancelled or (bool(self.choices) and all(c.finish_reason for c in self.choices))


class Engine:
    def __init__(self, model, tokenizer, max_batch: int = 16, max_queue: int = 64,
                 prefill_chunk: int = 256, state_cache_mb: float = 256.0,
                 request_timeout: Optional[float] = None, metrics: Optional[Metrics] = None):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_batch, self.max_queue, self.prefill_chunk = max_batch, max_queue, prefill_chunk
        self.request_timeout = request_timeout
        self.prefix_cache = PrefixCache(int(state_cache_mb * 2**20))
        self.metrics = metrics or Metrics()
        self.state_bytes = state_nbytes(model.allocate_cache(1))
        self._waiting: deque[Job] = deque()
        self._prefilling: deque[Job] = deque()
        self._rows: list[tuple[Job, Choice]] = []
        self._cache = None
        self._wake = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="mambakit-engine", daemon=True)

    # -- the HTTP side ---------------------------------------------------------------------------
    def start(self) -> "Engine":
        self._thread.start()
        return self

    def shutdown(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        self._thread.join(timeout=10)

    def submit(self, request: GenerationRequest, emit: Callable[[dict], None]) -> Job:
        timeout = self.request_timeout
        job = Job(request, emit, time.perf_counter() + timeout if timeout else float("inf"))
        with self._wake:
            if not self.alive:
                raise EngineStopped("the engine is not running (see the server's log)")
            if len(self._waiting) >= self.max_queue:
                self.metrics.inc("requests_rejected_total")
                raise QueueFull(f"{len(self._waiting)} requests are waiting (--max-queue {self.max_queue})")
            self._waiting.append(job)
            self.metrics.inc("requests_total")
            self.metrics.inc("prompt_tokens_total", len(request.prompt_ids))
            self._wake.notify()
        return job

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def live_states(self) -> int:
        """Sequences holding a state: rows decoding plus prompts being prefilled."""
        return len(self._rows) + sum(max(1, j.request.n) for j in self._prefilling)

    def gauges(self) -> dict[str, float]:
        return {"queue_depth": len(self._waiting), "batch_size": len(self._rows),
                "live_states": self.live_states, "state_cache_entries": len(self.prefix_cache),
                "state_cache_bytes": self.prefix_cache.nbytes, "state_bytes_per_sequence": self.state_bytes}

    # -- the engine thread -----------------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not (self._stop or self._waiting or self._prefilling or self._rows):
                        self._wake.wait(timeout=1.0)
                    if self._stop:
                        return
                    room = self.max_batch - self.live_states
                    while self._waiting and self._waiting[0].request.n <= room:
                        room -= self._waiting[0].request.n
                        self._prefilling.append(self._waiting.popleft())
                try:
                    self._drop_over()
                    if self._prefilling:
                        self._guarded([self._prefilling[0]], self._prefill_chunk)
                    if self._rows:
                        self._guarded([j for j, _ in self._rows], self._decode_step)
                except Exception as e:  # noqa: BLE001 - the engine's own bookkeeping: fail what is live
                    self._fail(list(self._prefilling) + [j for j, _ in self._rows], e)
                    self._prefilling.clear()
                    self._rows, self._cache = [], None

    def _guarded(self, jobs: list[Job], fn) -> None:
        """Run one step; an exception fails the jobs it touched, never the engine."""
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - reported to the affected clients, then dropped
            self._fail(jobs, e)
            if fn == self._decode_step:     # the batch's states may be half-advanced: drop them all
                self._rows, self._cache = [], None

    def _fail(self, jobs: list[Job], e: Exception) -> None:
        log.exception("engine step failed; failing its %d request(s)", len(jobs))
        for job in jobs:
            job.emit({"error": f"{type(e).__name__}: {e}"})
            job.cancel()
        self.metrics.inc("errors_total")

    def _drop_over(self) -> None:
        now = time.perf_counter()
        with self._wake:                   # the HTTP threads append to _waiting
            waiting = list(self._waiting)
        for job in waiting + list(self._prefilling) + [j for j, _ in self._rows]:
            if now > job.deadline and not job.over:
                if not job.choices:            # still queued or prefilling: nothing to show yet
                    job.emit({"error": "the request timed out before its prompt was processed"})
                    job.cancel()
                for c in job.choices:
                    if not c.finish_reason:
                        self._finish(job, c, "length")
        with self._wake:
            for queue in (self._waiting, self._prefilling):
                for job in [j for j in queue if j.cancelled]:
                    queue.remove(job)
        keep = [i for i, (job, c) in enumerate(self._rows) if not (job.cancelled or c.finish_reason)]
        if len(keep) == len(self._rows):
            return
        for job, c in self._rows:
            if c.finish_reason and job.request.n == 1 and not job.cancelled:
                self._remember(job, c)
        self._rows = [self._rows[i] for i in keep]
        self._cache = select(self._cache, keep) if keep else None

    def _remember(self, job: Job, choice: Choice) -> None:
        """Store the finished row's state keyed by prompt + the tokens it absorbed."""
        row = next(i for i, (_, c) in enumerate(self._rows) if c is choice)
        tokens = job.request.prompt_ids + choice.fed
        h = job.hashes[-1]
        for t in choice.fed:
            h = hash((h, t))
        self.prefix_cache.store(tokens, h, select(self._cache, [row]))

    def _prefill_chunk(self) -> None:
        job, model, prompt = self._prefilling[0], self.model, self._prefilling[0].request.prompt_ids
        if job.cache is None:
            hit = self.prefix_cache.lookup(prompt, job.hashes, len(prompt) - 1)
            self.metrics.inc("state_cache_hits_total" if hit else "state_cache_misses_total")
            job.cache = snapshot(hit.state) if hit else model.allocate_cache(1, max_seqlen=len(prompt))
            job.pos = job.cached_tokens = len(hit.tokens) if hit else 0
        # Feed up to the next chunk boundary, or to just before the last prompt token (a state
        # stored there serves the same prompt again with a one-token prefill).
        end = min((job.pos // self.prefill_chunk + 1) * self.prefill_chunk, len(prompt))
        if job.pos < len(prompt) - 1 < end:
            end = len(prompt) - 1
        ids = torch.tensor([prompt[job.pos:end]], device=model.device)
        logits = prefill(model, ids, job.cache, chunk_size=ids.shape[1])[:, : model.vocab_size]  # (1, vocab)
        self.metrics.inc("prefill_tokens_total", end - job.pos)
        job.pos = end
        if job.pos < len(prompt):
            if self._worth_storing(job.pos, len(prompt)):
                self.prefix_cache.store(prompt[:job.pos], job.hashes[job.pos - 1], job.cache)
            return
        self._start_choices(job, logits)

    def _worth_storing(self, pos: int, length: int) -> bool:
        chunks, rest = divmod(pos, self.prefill_chunk)
        last_boundary = (length - 2) // self.prefill_chunk     # the last one before length - 1
        return pos == length - 1 or (rest == 0 and (chunks & (chunks - 1) == 0 or chunks == last_boundary))

    def _start_choices(self, job: Job, logits: torch.Tensor) -> None:
        """The prompt is in: its rows join the batch (before any text goes out, so that a client
        reading /metrics after its first token sees its state), then sample their first tokens."""
        req, tok = job.request, self.tokenizer
        eos = None if req.ignore_eos else tok.eos_token_id
        history = torch.tensor([req.prompt_ids], device=logits.device)
        job.choices = [Choice(i, Sampler(req.params, history, None if req.seed is None else req.seed + i),
                              TextDecoder(tok, req.stop, eos)) for i in range(req.n)]
        rows = fork(job.cache, req.n) if req.n > 1 else job.cache
        job.cache = None
        self._cache = rows if self._cache is None else concat([self._cache, rows])
        self._rows.extend((job, c) for c in job.choices)
        self._prefilling.popleft()
        for c in job.choices:
            self._accept(job, c, int(c.sampler(logits)[0]))
        self.metrics.observe("time_to_first_token_seconds", time.perf_counter() - job.submitted)

    def _decode_step(self) -> None:
        tokens = torch.tensor([c.next_token for _, c in self._rows], device=self.model.device)
        logits = self.model.step(tokens, self._cache)[:, : self.model.vocab_size]   # (b, vocab)
        for i, (job, c) in enumerate(self._rows):
            c.fed.append(c.next_token)
            self._accept(job, c, int(c.sampler(logits[i:i + 1])[0]))

    def _accept(self, job: Job, c: Choice, token: int) -> None:
        """Route a sampled token: text to the client, and whether the row goes on."""
        c.next_token, c.generated = token, c.generated + 1
        now = time.perf_counter()
        if c.last_emit:
            self.metrics.observe("inter_token_latency_seconds", now - c.last_emit)
        c.last_emit = now
        self.metrics.inc("completion_tokens_total")
        text = c.decoder.push(token)
        if c.decoder.finished:
            self._finish(job, c, "stop", text)
        elif c.generated >= job.request.max_tokens:
            self._finish(job, c, "length", text + c.decoder.flush())
        elif text:
            job.emit({"choice": c.index, "text": text, "finish_reason": None})

    def _finish(self, job: Job, c: Choice, reason: str, text: str = "") -> None:
        c.finish_reason = reason
        job.emit({"choice": c.index, "text": text + c.decoder.flush(), "finish_reason": reason})
        if job.over:
            completion = sum(x.generated for x in job.choices)
            job.emit({"done": True, "usage": {
                "prompt_tokens": len(job.request.prompt_ids), "completion_tokens": completion,
                "total_tokens": len(job.request.prompt_ids) + completion,
                "prompt_tokens_details": {"cached_tokens": job.cached_tokens}}})
            self.metrics.inc("requests_finished_total")
            self.metrics.observe("request_seconds", time.perf_counter() - job.submitted)
