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


@pytest.mark.parametrize("option", ["--temperature", "--repetition-penalty"])
def test_generate_refuses_non_finite_sampling_options_naming_them(checkpoint, option):
    # before: nan temperature sampled at 1, nan penalty gave a traceback
    r = mambakit("generate", str(checkpoint), option, "nan", timeout=60)
    one_line_error(r, option, "finite")


def test_seed_errors_name_the_option(capsys):
    from mambakit.cli.main import main

    for verb in (["generate", "ck"], ["train", "--out", "x"], ["synth", "selective-copying"]):
        with pytest.raises(SystemExit):
            main([*verb, "--seed", str(2**64)])
        assert "argument --seed: expected a seed between 0 and 2**63 - 1" in capsys.readouterr().err


def test_generate_prints_nothing_before_an_argument_error(checkpoint):
    r = mambakit("generate", str(checkpoint), "--prompt", "hello", "--top-p", "2", timeout=60)
    one_line_error(r, "top_p must be in (0, 1]")
    assert r.stdout == ""
