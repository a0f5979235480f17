"""A real server on 127.0.0.1 (a free port, uvicorn on a thread, a startup deadline) serving a
tiny random-weight byte-level Mamba, and helpers to read it from outside."""
import time
import urllib.error
import urllib.request

import pytest
import torch

API_KEY = "test-key"


def tiny_byte_mamba(**fields):
    from mambakit.models import build

    torch.manual_seed(0)
    return build("mamba", "tiny", **fields).eval()


class Served:
    """An engine + app on a thread; `client()` is the official openai client for it."""

    def __init__(self, model, api_key=API_KEY, **engine_options):
        from mambakit.data.tokenizer import ByteTokenizer
        from mambakit.serve.app import create_app
        from mambakit.serve.engine import Engine
        from mambakit.serve.run import ServerThread

        self.model, self.tokenizer, self.api_key = model, ByteTokenizer(), api_key
        self.engine = Engine(model, self.tokenizer, **engine_options).start()
        self.thread = ServerThread(create_app(self.engine, "tiny", api_key=api_key, max_prompt_tokens=512))
        self.url = self.thread.start()

    def close(self):
        self.thread.stop()
        self.engine.shutdown()

    def client(self, cls=None):
        import openai

        return (cls or openai.OpenAI)(base_url=self.url + "/v1", api_key=self.api_key or "unused",
                                      max_retries=0, timeout=30)

    def metric(self, name: str) -> float:
        request = urllib.request.Request(self.url + "/metrics",
                                         headers={"Authorization": f"Bearer {self.api_key}"})
        with urllib.request.urlopen(request, timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(f"mambakit_{name} "):
                    return float(line.split()[1])
        raise KeyError(name)

    def wait_for(self, name: str, value: float, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while self.metric(name) != value:
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} stayed at {self.metric(name)}, expected {value}")
            time.sleep(0.05)

    def post(self, path: str, body: bytes, key: str | None = None) -> tuple[int, dict]:
        import json

        request = urllib.request.Request(self.url + path, data=body, method="POST", headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {key or self.api_key}"})
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def served():
    s = Served(tiny_byte_mamba(), max_batch=16, prefill_chunk=16, state_cache_mb=4)
    yield s
    s.close()
