"""The command line against careless or hostile input (issue 12): every case a subprocess with a
timeout, ending in one line on stderr, a non-zero exit, no traceback, and nothing left behind."""
import pytest

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
