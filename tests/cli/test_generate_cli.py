"""`mambakit convert` and `mambakit generate` (batching, tokenizer.json, streaming, stop), as a user
runs them: subprocesses against checkpoints written here."""
import json

import torch

from mambakit.data.bpe import train_bpe
from mambakit.data.tokenizer import ByteTokenizer
from mambakit.generation import generate_text
from mambakit.models import load_model
from tests.cli.test_cli import mambakit
from tests.conftest import tiny_mamba


def test_convert_then_generate_a_batch_of_prompts(tmp_path):
    model = tiny_mamba(vocab_size=257)
    model.save_pretrained(tmp_path / "ck")
    r = mambakit("convert", str(tmp_path / "ck"), str(tmp_path / "hf"), "--to", "transformers", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["src_format"] == "mambakit"
    r = mambakit("convert", str(tmp_path / "hf"), str(tmp_path / "ssm"), "--to", "mamba_ssm")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "ssm" / "pytorch_model.bin").is_file()

    r = mambakit("generate", str(tmp_path / "ssm"), "--prompt", "a", "--prompt", "bb",
                 "--max-new-tokens", "6", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["tokenizer"] == "bytes" and [x["prompt"] for x in out["results"]] == ["a", "bb"]
    # each row of the padded batch == that prompt generated alone, in process
    for x in out["results"]:
        alone = model.generate(torch.tensor([list(x["prompt"].encode())]), max_new_tokens=6,
                               eos_token_id=256)
        assert x["tokens"] == alone[0].tolist()
        assert x["completion"] == generate_text(model, ByteTokenizer(), x["prompt"], max_new_tokens=6)[0]


def test_generate_streams_uses_tokenizer_json_and_stops(tmp_path):
    tok = train_bpe(["hello world, hello there"] * 20, vocab_size=280)
    model = tiny_mamba(vocab_size=tok.vocab_size)
    model.save_pretrained(tmp_path / "ck")
    tok.save(tmp_path / "ck")
    r = mambakit("convert", str(tmp_path / "ck"), str(tmp_path / "hf"), "--to", "transformers")
    assert r.returncode == 0, r.stderr
    assert load_model(tmp_path / "hf").config.vocab_size >= tok.vocab_size

    args = ("generate", str(tmp_path / "hf"), "--prompt", "hello", "--max-new-tokens", "12",
            "--temperature", "1.0", "--seed", "0")
    r = mambakit(*args, "--json")
    assert r.returncode == 0, r.stderr
    [res] = json.loads(r.stdout)["results"]
    assert json.loads(r.stdout)["tokenizer"] == "tokenizer.json"
    assert res["tokens"][:len(tok.encode("hello"))] == tok.encode("hello")
    streamed = mambakit(*args)                          # streaming is the default for one prompt
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == "hello" + res["completion"] + "\n"

    stop = res["completion"][2:4]
    r = mambakit(*args, "--json", "--stop", stop)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["results"][0]["completion"] == res["completion"][:res["completion"].index(stop)]


def test_convert_errors_are_one_line(tmp_path):
    r = mambakit("convert", str(tmp_path / "missing"), str(tmp_path / "out"), "--to", "mamba_ssm")
    assert r.returncode == 2 and "not a checkpoint directory" in r.stderr and "Traceback" not in r.stderr
    r = mambakit("convert", "a", "b", "--to", "onnx")
    assert r.returncode != 0 and "invalid choice" in r.stderr


def test_a_checkpoint_without_its_tokenizer_is_refused_until_given_one(tmp_path):
    tok = train_bpe(["hello world, hello there"] * 20, vocab_size=280)
    assert tok.vocab_size > 264                          # too many ids for the byte fallback
    tiny_mamba(vocab_size=tok.vocab_size).save_pretrained(tmp_path / "ck")  # no tokenizer.json
    tok.save(tmp_path / "tok")
    for args in (["generate", str(tmp_path / "ck")], ["eval", str(tmp_path / "ck"), "--max-bytes", "1000"]):
        r = mambakit(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert "--tokenizer PATH" in r.stderr.strip().splitlines()[-1]
    r = mambakit("generate", str(tmp_path / "ck"), "--tokenizer", str(tmp_path / "tok"), "--prompt", "hello",
                 "--max-new-tokens", "3", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["tokenizer"] == "tokenizer.json"
    assert out["results"][0]["tokens"][:len(tok.encode("hello"))] == tok.encode("hello")


def test_convert_refuses_a_destination_holding_a_checkpoint(tmp_path):
    tiny_mamba().save_pretrained(tmp_path / "ck")
    tiny_mamba(vocab_size=60).save_pretrained(tmp_path / "old", format="transformers")  # model.safetensors
    r = mambakit("convert", str(tmp_path / "ck"), str(tmp_path / "old"), "--to", "mamba_ssm")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "already holds a checkpoint (config.json, model.safetensors)" in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "old" / "pytorch_model.bin").exists()
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "README.md").write_text("notes")    # other files are no obstacle
    r = mambakit("convert", str(tmp_path / "ck"), str(tmp_path / "new"), "--to", "mamba_ssm")
    assert r.returncode == 0, r.stderr
    assert load_model(tmp_path / "new").config.vocab_size == 50


def test_generate_in_every_weight_format_matches_the_quantized_model_in_process(tmp_path):
    import mambakit as mk

    model = tiny_mamba(vocab_size=257)
    model.save_pretrained(tmp_path / "ck")
    for flags, fmt in ((["--dtype", "bf16"], "bf16"), (["--quantize", "int8"], "int8")):
        r = mambakit("generate", str(tmp_path / "ck"), "--prompt", "ab", "--max-new-tokens", "5",
                     "--json", *flags)
        assert r.returncode == 0, r.stderr
        expect = mk.quantize(load_model(tmp_path / "ck"), fmt).generate(
            torch.tensor([list(b"ab")]), max_new_tokens=5, eos_token_id=256)
        assert json.loads(r.stdout)["results"][0]["tokens"] == expect[0].tolist()
