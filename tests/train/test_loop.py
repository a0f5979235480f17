"""The training loop: learning, exact resume after Ctrl-C, atomic checkpoints, NaN stops."""
import os
import signal

import pytest
import torch

from mambakit.data import ByteTokenizer, TokenDataset, token_byte_lengths
from mambakit.io import checkpoint as io_checkpoint
from mambakit.io.checkpoint import load_model
from mambakit.train import TrainConfig, TrainingInterrupted, train
from mambakit.train import checkpoint as ckpt
from mambakit.train.distributed import DistContext
from mambakit.train.loop import accumulate_gradients
from tests.conftest import tiny_mamba

TEXT = ("def add(a, b):\n    return a + b\n\n" * 30).encode()


def corpus() -> TokenDataset:
    tok = ByteTokenizer()
    return TokenDataset(torch.tensor(list(TEXT)).numpy(), tok.eos_token_id, token_byte_lengths(tok))


def model():
    torch.manual_seed(0)
    return tiny_mamba(vocab_size=257, d_model=16, d_state=4).train()


def config(**kw):
    base = dict(steps=6, batch_size=2, seq_len=16, lr=1e-2, warmup_steps=2, eval_every=0,
                eval_batches=1, progress=False, device="cpu")
    return TrainConfig(**{**base, **kw})


def same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_loss_falls_on_a_tiny_corpus():
    data = corpus()
    result = train(model(), data, data, config(steps=40, batch_size=4, seq_len=32, eval_every=20))
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    assert result.final_eval["loss"] < losses[0]


def test_interrupted_and_resumed_run_ends_at_the_same_weights(tmp_path):
    data = corpus()
    straight = model()
    train(straight, data, data, config(ckpt_every=2), out_dir=tmp_path / "a")

    def ctrl_c(step, record):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)   # the real signal path: stop at a step boundary
    with pytest.raises(TrainingInterrupted, match="interrupted at step 3"):
        train(model(), data, data, config(ckpt_every=2), out_dir=tmp_path / "b", on_step=ctrl_c)
    assert ckpt.latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step-00000003"
    resumed = tiny_mamba(vocab_size=257, d_model=16, d_state=4)   # different init: all restored
    result = train(resumed, data, data, config(ckpt_every=2), out_dir=tmp_path / "b", resume=True)
    assert result.resumed_from == 3 and result.steps == 6
    assert same_weights(straight, resumed)
    assert same_weights(straight, load_model(tmp_path / "b"))
    steps = [r["step"] for r in result.history if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]                      # metrics.jsonl has no duplicates


def test_existing_run_is_not_overwritten_without_resume(tmp_path):
    data = corpus()
    train(model(), data, data, config(steps=1), out_dir=tmp_path)
    with pytest.raises(ValueError, match="pass --resume"):
        train(model(), data, data, config(steps=1), out_dir=tmp_path)


def test_checkpoint_failing_mid_write_leaves_the_previous_one(tmp_path, monkeypatch):
    data = corpus()
    real_save, calls = ckpt.save_file, []

    def failing_save(tensors, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:     # checkpoint 2's model weights: the disk fills up mid-write
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError(28, "No space left on device")
        return real_save(tensors, path, *args, **kwargs)
    monkeypatch.setattr(ckpt, "save_file", failing_save)              # optimizer state
    monkeypatch.setattr(io_checkpoint, "save_file", failing_save)     # model weights
    with pytest.raises(OSError, match="No space left"):
        train(model(), data, data, config(ckpt_every=2), out_dir=tmp_path)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000002"]   # no debris
    good = ckpt.latest_checkpoint(root)
    assert good.name == "step-00000002"
    assert torch.isfinite(torch.cat([p.flatten() for p in load_model(good).parameters()])).all()
    monkeypatch.setattr(ckpt, "save_file", real_save)
    monkeypatch.setattr(io_checkpoint, "save_file", real_save)
    result = train(model(), data, data, config(ckpt_every=2), out_dir=tmp_path, resume=True)
    assert result.resumed_from == 2 and result.steps == 6


def test_nan_loss_stops_clearly_and_keeps_the_last_good_checkpoint(tmp_path):
    data = corpus()
    net = model()

    def poison(step, record):
        if step == 3:
            with torch.no_grad():
                net.backbone.embedding.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"loss became nan at step 4.*step-00000002"):
        train(net, data, data, config(ckpt_every=2), out_dir=tmp_path, on_step=poison)
    good = load_model(ckpt.latest_checkpoint(tmp_path / "checkpoints"))
    assert torch.isfinite(good.backbone.embedding.weight).all()


def test_gradient_accumulation_matches_one_big_batch():
    data = corpus()
    grads = []
    for accum in (1, 2):
        net = model()
        accumulate_gradients(net, net, data, config(batch_size=4, grad_accum=accum), 0, DistContext())
        grads.append([p.grad.clone() for p in net.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_bf16_autocast_trains():
    data = corpus()
    result = train(model(), data, data, config(steps=3, dtype="bf16"))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in result.history if "loss" in r)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="dtype"):
        config(dtype="fp8")
    with pytest.raises(ValueError, match="divide evenly"):
        train(model(), corpus(), corpus(), config(batch_size=3, grad_accum=2))
