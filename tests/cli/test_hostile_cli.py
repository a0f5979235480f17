"""The command line against careless or hostile input (issue 12): every case a subprocess with a
timeout, ending in one line on stderr, a non-zero exit, no traceback, and nothing left behind."""
import pytest
import torch

from tests.cli.test_cli import mambakit
from tests.conftest import tiny_mamba


def one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in last, last
    return last


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck")
    tiny_mamba(vocab_size=257).save_pretrained(path)
    return path


def test_generate_refuses_a_nan_temperature(checkpoint):
    # before: nan temperature sampled at 1
    r = mambakit("generate", str(checkpoint), "--temperature", "nan", timeout=60)
    one_line_error(r, "--temperature", "finite")


def in_process(capsys, *argv):
    """main() in this process, for cases that need no fresh interpreter: (exit code, out, err)."""
    from mambakit.cli.main import main

    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_seed_errors_name_the_option(capsys):
    from mambakit.cli.main import main

    for verb in (["generate", "ck"], ["train", "--out", "x"], ["synth", "selective-copying"]):
        with pytest.raises(SystemExit):
            main([*verb, "--seed", str(2**64)])
        assert "argument --seed: expected a seed between 0 and 2**63 - 1" in capsys.readouterr().err


def test_generate_prints_nothing_before_an_argument_error(checkpoint, capsys):
    # before: a nan penalty gave a traceback; a bad --top-p came after the prompt was printed
    code, out, err = in_process(capsys, "generate", str(checkpoint), "--repetition-penalty", "nan")
    assert code == 2 and "--repetition-penalty: expected a finite number" in err
    code, out, err = in_process(capsys, "generate", str(checkpoint), "--prompt", "hello", "--top-p", "2")
    assert code == 2 and "top_p must be in (0, 1]" in err and out == ""


TRAIN = ("train", "--steps", "1", "--seq-len", "16", "--batch-size", "1", "--d-model", "16",
         "--max-bytes", "20000", "--eval-batches", "1", "--no-progress")


def test_train_refuses_an_exported_model_folder_and_leaves_it_untouched(checkpoint):
    # before: config.json and model.safetensors of the export were replaced, exit 0
    before = {p.name: p.read_bytes() for p in checkpoint.iterdir()}
    r = mambakit(*TRAIN, "--out", str(checkpoint), timeout=120)
    one_line_error(r, "not a mambakit training run", "config.json")
    assert {p.name: p.read_bytes() for p in checkpoint.iterdir() if p.name in before} == before


def test_second_train_into_a_held_run_folder_is_refused_at_once(tmp_path):
    # before: both "succeeded", leaving one run's checkpoints and the other's final model
    import os

    from mambakit.train.run_dir import open_run

    with open_run(tmp_path):
        r = mambakit(*TRAIN, "--out", str(tmp_path), timeout=120)
    one_line_error(r, f"in use by another training run (pid {os.getpid()})")
    assert not (tmp_path / "data").exists()


def test_rejected_train_leaves_no_out_folder(tmp_path, capsys):
    code, _, err = in_process(capsys, *TRAIN, "--model", "no-such-family", "--out", str(tmp_path / "run"))
    assert code == 2 and "no-such-family" in err
    assert not (tmp_path / "run").exists()


def test_generate_refuses_a_different_tokenizer_of_the_same_size(tmp_path, capsys):
    from mambakit.data.bpe import train_bpe

    ours = train_bpe(["hello world, hello there"] * 20, vocab_size=280)
    other = train_bpe(["completely different words here"] * 20, vocab_size=ours.vocab_size)
    assert other.vocab_size == ours.vocab_size
    tiny_mamba(vocab_size=ours.vocab_size).save_pretrained(tmp_path / "ck")
    ours.save(tmp_path / "ck")
    other.save(tmp_path / "other")
    # before: same size passed the fit check and decoded garbage
    code, _, err = in_process(capsys, "generate", str(tmp_path / "ck"), "--tokenizer", str(tmp_path / "other"))
    assert code == 2 and "is not the tokenizer" in err
    # before: a folder without tokenizer.json silently meant bytes
    (tmp_path / "empty").mkdir()
    code, _, err = in_process(capsys, "generate", str(tmp_path / "ck"), "--tokenizer", str(tmp_path / "empty"))
    assert code == 2 and "holds no tokenizer.json" in err
    code, out, _ = in_process(capsys, "generate", str(tmp_path / "ck"), "--tokenizer", str(tmp_path / "ck"),
                              "--max-new-tokens", "2", "--json")
    assert code == 0


def _file_size_limit(limit):
    """preexec for a child whose files may not grow past `limit` bytes: its writes then fail the
    way a full disk makes them fail (EFBIG instead of ENOSPC), with no real disk to fill."""
    import resource
    import signal

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # fail the write instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_convert_onto_a_full_disk_is_one_line_and_writes_nothing(checkpoint, tmp_path):
    # before: a traceback (safetensors' SafetensorError is no OSError), exit 1
    import subprocess
    import sys

    dst = tmp_path / "hf"
    r = subprocess.run([sys.executable, "-m", "mambakit.cli.main", "convert", str(checkpoint), str(dst),
                        "--to", "transformers"], capture_output=True, text=True, timeout=120,
                       preexec_fn=_file_size_limit(20_000))
    one_line_error(r, f"no space left to write {dst / 'model.safetensors'}", "MiB free there")
    assert not dst.exists() or list(dst.iterdir()) == []


def test_every_writer_s_full_disk_error_is_recognised(tmp_path):
    """The texts each writer raises on a full disk or a size limit, as observed (see above)."""
    from safetensors import SafetensorError

    from mambakit.io.atomic import DiskFullError, disk_full

    seen = [OSError(28, "No space left on device"), OSError(27, "File too large"),
            SafetensorError("Error while serializing: I/O error: File too large (os error 27)"),
            RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
            RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")]
    for exc in seen:
        assert isinstance(disk_full(tmp_path / "x", exc), DiskFullError), exc
    assert disk_full(tmp_path / "x", RuntimeError("Some tensors share memory")) is None


@pytest.mark.parametrize("flags,needle", [
    (("--batch-size", "100000000"), "a training step of 100000000 x 16 tokens"),
    (("--seq-len", "1000000000"), "a training step of 1 x 1000000000 tokens"),
    (("--d-model", "100000000"), "MambaConfig's weights"),
    (("--budget-params", "1000000000000"), "weights"),
])
def test_train_refuses_sizes_beyond_memory_with_the_estimate(tmp_path, capsys, flags, needle):
    # before: out-of-memory tracebacks
    options = dict(zip(TRAIN[1:-1:2], TRAIN[2:-1:2]))
    options.update(zip(flags[::2], flags[1::2]))
    args = ["train", *[x for kv in options.items() for x in kv], "--no-progress"]
    code, _, err = in_process(capsys, *args, "--out", str(tmp_path / "run"))
    assert code == 2 and needle in err and "GiB of memory" in err, err
    assert not (tmp_path / "run").exists()


def test_huge_configs_are_refused_quickly_with_the_estimate(tmp_path):
    # before: tracebacks, and n_layer 1e9 hung for minutes building layers
    from mambakit import MambaConfig, MambaLM
    from mambakit.models import TransformerLM
    from mambakit.models.transformer_lm import TransformerConfig

    for field, value in (("d_model", 10**12), ("vocab_size", 10**15), ("pad_vocab_size_multiple", 10**9),
                         ("n_layer", 10**9)):
        with pytest.raises(ValueError, match="MambaConfig's weights would need .* GiB of memory"):
            MambaLM(MambaConfig(**{"d_model": 16, "n_layer": 2, "vocab_size": 257, field: value}))
    model = TransformerLM(TransformerConfig.preset("tiny"))
    with pytest.raises(ValueError, match=r"a KV cache of 1 x 100,000,\d+ positions would need about"):
        model.generate(torch.tensor([[1, 2]]), max_new_tokens=100_000_000)


@pytest.mark.parametrize("argv", [
    ("tokenizer", "prepare", "--data", "{tmp}/missing.txt", "--out", "{tmp}/out"),
    ("demo", "--models", "no-such-family", "--out", "{tmp}/out"),
])
def test_other_rejected_commands_leave_no_out_folder(tmp_path, capsys, argv):
    # before: the --out folder was created before the error
    code, _, err = in_process(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert code == 2 and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
