"""`mambakit serve` as a user runs it: a subprocess on a free port, talked to with the openai client,
with a chat template from the checkpoint's tokenizer_config.json; bad arguments exit 2 in one line."""
import contextlib
import json
import subprocess
import sys
import time
import urllib.request

import openai

from mambakit import quantize
from mambakit.data.tokenizer import ByteTokenizer
from mambakit.generation import generate_text
from mambakit.serve.run import free_port
from tests.cli.test_cli import mambakit
from tests.serve.conftest import tiny_byte_mamba

TEMPLATE = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"


@contextlib.contextmanager
def serving(checkpoint, *options):
    """`mambakit serve CHECKPOINT OPTIONS` on a free port; yields (port, /health) once it is up."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mambakit.cli.main", "serve", str(checkpoint),
                             "--port", str(port), *options],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    health = json.loads(r.read())
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not come up within 90 s"
                time.sleep(0.2)
        yield port, health
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_a_checkpoint_over_http(tmp_path):
    model = tiny_byte_mamba()
    model.save_pretrained(tmp_path / "ck")
    (tmp_path / "ck" / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE}))
    with serving(tmp_path / "ck", "--api-key", "k", "--max-batch", "4") as (port, health):
        c = model.config
        assert health["model"] == "ck" and health["family"] == "mamba" and health["weights"] == "fp32"
        assert health["state_bytes_per_sequence"] == c.n_layer * c.d_inner * (c.d_state + c.d_conv - 1) * 4
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0, timeout=30)
        messages = [{"role": "user", "content": "hi"}]
        r = client.chat.completions.create(model="ck", messages=messages, max_tokens=10, temperature=0)
        prompt = "<user>hi<assistant>"
        assert r.usage.prompt_tokens == len(prompt)
        assert r.choices[0].message.content == generate_text(model, ByteTokenizer(), prompt, max_new_tokens=10)[0]


def test_serve_quantized_weights_answer_as_the_quantized_model_does(tmp_path):
    """--quantize int8 serves what mambakit.quantize(model, "int8") generates in-process."""
    model = tiny_byte_mamba()
    model.save_pretrained(tmp_path / "ck")
    with serving(tmp_path / "ck", "--quantize", "int8") as (port, health):
        assert health["weights"] == "int8"
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=30)
        r = client.completions.create(model="ck", prompt="def f", max_tokens=12, temperature=0)
        expected = generate_text(quantize(model, "int8"), ByteTokenizer(), "def f", max_new_tokens=12)[0]
        assert r.choices[0].text == expected


def test_serve_a_missing_checkpoint_exits_2_in_one_line(tmp_path):
    r = mambakit("serve", str(tmp_path / "missing"), "--port", str(free_port()))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "error" in r.stderr
