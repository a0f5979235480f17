"""The server through the official `openai` client: what it returns equals what the library
generates alone (`generate_text`, the same prompt, seed and sampling), streamed or not, one client
or sixteen at once; the prefix-state cache skips the prefix; bad requests get OpenAI's errors."""
import asyncio
import http.client
import json
from urllib.parse import urlparse

import openai
import pytest
import torch

from mambakit.generation import generate_text
from mambakit.serve.protocol import plain_chat_template
from tests.serve.conftest import Served, tiny_byte_mamba


def alone(served, prompt, n, **kw):
    return generate_text(served.model, served.tokenizer, prompt, max_new_tokens=n, **kw)[0]


def streamed_text(stream):
    parts = {}
    for chunk in stream:
        for c in chunk.choices:
            parts[c.index] = parts.get(c.index, "") + (c.text if hasattr(c, "text") else c.delta.content or "")
    return parts


def test_completions_equal_generate_streamed_or_not(served):
    client = served.client()
    greedy = client.completions.create(model="tiny", prompt="def main(", max_tokens=24, temperature=0)
    assert greedy.choices[0].text == alone(served, "def main(", 24)
    assert greedy.usage.prompt_tokens == 9 and greedy.object == "text_completion"
    kw = dict(model="tiny", prompt="import os\n", max_tokens=30, temperature=1.0, top_p=0.9, seed=11)
    full = client.completions.create(**kw)
    streamed = streamed_text(client.completions.create(stream=True, **kw))
    want = alone(served, "import os\n", 30, temperature=1.0, top_p=0.9, seed=11)
    assert full.choices[0].text == streamed[0] == want
    assert full.choices[0].finish_reason in ("stop", "length")


def test_chat_streamed_equals_unstreamed_and_the_plain_template(served):
    client = served.client()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    kw = dict(model="tiny", messages=messages, max_tokens=20, temperature=0.7, seed=3,
              extra_body={"top_k": 40})
    full = client.chat.completions.create(**kw)
    streamed = streamed_text(client.chat.completions.create(stream=True, **kw))
    assert full.choices[0].message.role == "assistant" and full.object == "chat.completion"
    want = alone(served, plain_chat_template(messages), 20, temperature=0.7, top_k=40, seed=3)
    assert full.choices[0].message.content == streamed[0] == want


def test_n_choices_use_seed_plus_index(served):
    r = served.client().completions.create(model="tiny", prompt="x = ", max_tokens=12, temperature=1.0,
                                           seed=20, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    for c in r.choices:
        assert c.text == alone(served, "x = ", 12, temperature=1.0, seed=20 + c.index)


def test_sixteen_concurrent_streams_each_get_what_they_get_alone(served):
    client = served.client(openai.AsyncOpenAI)
    prompts = [f"def f{i}(" + "ab" * i for i in range(16)]          # lengths 6..36: prefill interleaves

    async def one(i):
        stream = await client.completions.create(model="tiny", prompt=prompts[i], max_tokens=32,
                                                 temperature=1.0, seed=i, stream=True)
        return "".join([c.choices[0].text async for c in stream if c.choices])

    async def everyone():
        try:
            return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(16))), timeout=60)
        finally:
            await client.close()

    got = asyncio.run(everyone())
    for i, text in enumerate(got):
        assert text == alone(served, prompts[i], 32, temperature=1.0, seed=i), i
    served.wait_for("live_states", 0)
    assert served.metric("batch_size") == 0


def test_a_shared_prefix_is_prefilled_once(served):
    client = served.client()
    prefix = "# A long shared system prompt about parsing. " * 6 + "Q: "   # 273 tokens
    first = client.completions.create(model="tiny", prompt=prefix + "one?", max_tokens=8, temperature=0)
    before = served.metric("prefill_tokens_total")
    second = client.completions.create(model="tiny", prompt=prefix + "two?", max_tokens=8, temperature=0)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached == len(prefix) // 16 * 16                            # the last chunk boundary inside it
    assert served.metric("prefill_tokens_total") - before == second.usage.prompt_tokens - cached
    assert second.choices[0].text == alone(served, prefix + "two?", 8)
    again = client.completions.create(model="tiny", prompt=prefix + "one?", max_tokens=8, temperature=0)
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1
    assert again.choices[0].text == first.choices[0].text
    assert served.metric("state_cache_hits_total") >= 2


def test_a_client_that_disconnects_mid_stream_frees_its_row(served):
    url = urlparse(served.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    body = {"model": "tiny", "prompt": "while True:", "max_tokens": 1_000_000, "ignore_eos": True,
            "stream": True}
    conn.request("POST", "/v1/completions", json.dumps(body),
                 {"Content-Type": "application/json", "Authorization": f"Bearer {served.api_key}"})
    response = conn.getresponse()
    assert response.status == 200
    first = response.read1(256)
    assert first.startswith(b"data: ") and b"error" not in first, first
    assert served.metric("live_states") == 1, first + response.read1(4096)
    conn.sock.close()                                                     # gone mid-stream
    conn.close()
    served.wait_for("live_states", 0)
    r = served.client().completions.create(model="tiny", prompt="ok", max_tokens=3, temperature=0)
    assert r.choices[0].text == alone(served, "ok", 3)


@pytest.mark.parametrize("body,status,param", [
    (b"{not json", 400, None),
    (json.dumps({"model": "tiny", "prompt": "a", "bogus": 1}).encode(), 400, "bogus"),
    (json.dumps({"model": "tiny", "prompt": "a", "max_tokens": "ten"}).encode(), 400, "max_tokens"),
    (json.dumps({"model": "tiny", "prompt": "a", "temperature": 3}).encode(), 400, "temperature"),
    (json.dumps({"model": "tiny", "prompt": "a", "logprobs": 2}).encode(), 400, "logprobs"),
    (json.dumps({"model": "tiny", "prompt": 5}).encode(), 400, "prompt"),
    (json.dumps({"model": "tiny", "prompt": "a" * 513}).encode(), 400, "prompt"),
    (json.dumps({"model": "tiny", "prompt": "a", "n": 17}).encode(), 400, "n"),
    (json.dumps({"model": "gpt-4", "prompt": "a"}).encode(), 404, "model"),
])
def test_bad_requests_get_openai_errors(served, body, status, param):
    got, reply = served.post("/v1/completions", body)
    assert got == status and reply["error"]["param"] == param and reply["error"]["message"]
    assert served.metric("live_states") == 0


def test_bad_key_and_unknown_routes(served):
    status, reply = served.post("/v1/completions", b"{}", key="wrong")
    assert status == 401 and reply["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=served.url + "/v1", api_key="wrong", max_retries=0, timeout=30).models.list()
    assert [m.id for m in served.client().models.list()] == ["tiny"]
    status, reply = served.post("/v1/embeddings", b"{}")
    assert status == 404 and "Not Found" in reply["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="context_length_exceeded|over this server's limit"):
        served.client().completions.create(model="tiny", prompt="b" * 600, max_tokens=1)


def test_full_queue_answers_429_and_recovers():
    s = Served(tiny_byte_mamba(), max_batch=1, max_queue=1)
    try:
        client = s.client()
        long = dict(model="tiny", prompt="a", max_tokens=1_000_000, stream=True, extra_body={"ignore_eos": True})
        running = client.completions.create(**long)          # takes the one batch slot
        next(iter(running))
        waiting = client.completions.create(**long)          # fills the queue
        s.wait_for("queue_depth", 1)
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model="tiny", prompt="b", max_tokens=1)
        running.close()
        waiting.close()
        s.wait_for("live_states", 0)
        s.wait_for("queue_depth", 0)
        assert client.completions.create(model="tiny", prompt="c", max_tokens=2).usage.completion_tokens == 2
    finally:
        s.close()


def test_an_error_in_one_request_fails_only_that_request():
    """A byte tokenizer in front of a 128-token model: a prompt with a byte >= 128 cannot be run;
    it gets a 500 error, and the requests around it are served."""
    s = Served(tiny_byte_mamba(vocab_size=128))
    try:
        client = s.client()
        with pytest.raises(openai.InternalServerError, match="out of range for vocab_size 128"):
            client.completions.create(model="tiny", prompt="café", max_tokens=4)
        assert client.completions.create(model="tiny", prompt="cafe", max_tokens=4).usage.completion_tokens >= 1
        s.wait_for("live_states", 0)
        assert s.metric("errors_total") == 1
    finally:
        s.close()


def test_a_request_past_its_timeout_ends_with_length():
    s = Served(tiny_byte_mamba(), request_timeout=0.5)
    try:
        r = s.client().completions.create(model="tiny", prompt="a", max_tokens=1_000_000,
                                          extra_body={"ignore_eos": True})
        assert r.choices[0].finish_reason == "length" and 0 < r.usage.completion_tokens < 1_000_000
        s.wait_for("live_states", 0)
    finally:
        s.close()


@pytest.mark.parametrize("name", ["transformer", "gru", "mamba2", "s4d"])
def test_other_families_serve_exactly_too(name):
    """The engine only uses the state API, so every family batches: two concurrent prompts of
    different lengths (KV caches of different lengths share a batch) each get their text alone."""
    from mambakit.models import build

    torch.manual_seed(0)
    s = Served(build(name, "tiny").eval(), api_key=None, prefill_chunk=8)
    client = s.client(openai.AsyncOpenAI)
    prompts = ["def f(", "class Parser(object):\n    "]

    async def both():
        try:
            return await asyncio.wait_for(asyncio.gather(*(client.completions.create(
                model="tiny", prompt=p, max_tokens=12, temperature=0) for p in prompts)), timeout=60)
        finally:
            await client.close()

    try:
        for p, r in zip(prompts, asyncio.run(both())):
            assert r.choices[0].text == alone(s, p, 12)
        s.wait_for("live_states", 0)
    finally:
        s.close()


def test_a_stopped_engine_answers_503_instead_of_hanging():
    s = Served(tiny_byte_mamba())
    try:
        s.engine.shutdown()
        status, reply = s.post("/v1/completions", json.dumps({"model": "tiny", "prompt": "a"}).encode())
        assert status == 503 and "not running" in reply["error"]["message"]
    finally:
        s.close()
