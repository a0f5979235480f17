"""The training loop: learning, exact resume after Ctrl-C, atomic checkpoints, NaN stops."""
import json
import os
import shutil
import signal

import pytest
import torch

from mambakit.data import ByteTokenizer, TokenDataset, token_byte_lengths
from mambakit.io import files as io_files
from mambakit.models import load_model
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
    monkeypatch.setattr(io_files, "save_file", failing_save)     # model weights
    with pytest.raises(OSError, match=r"no space left to write .*model.safetensors \(.* MiB free there\)"):
        train(model(), data, data, config(ckpt_every=2), out_dir=tmp_path)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000002"]   # no debris
    good = ckpt.latest_checkpoint(root)
    assert good.name == "step-00000002"
    assert torch.isfinite(torch.cat([p.flatten() for p in load_model(good).parameters()])).all()
    monkeypatch.setattr(ckpt, "save_file", real_save)
    monkeypatch.setattr(io_files, "save_file", real_save)
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


def test_bf16_autocast_trains_like_fp32():
    data = corpus()
    losses = {dtype: [r["loss"] for r in train(model(), data, data, config(steps=3, dtype=dtype)).history
                      if "loss" in r] for dtype in ("fp32", "bf16")}
    assert len(losses["bf16"]) == len(losses["fp32"]) == 3
    # same seed, same batches: bf16 matmuls (8-bit mantissa) move a ~5.5-nat loss by a few hundredths
    for bf16, fp32 in zip(losses["bf16"], losses["fp32"]):
        assert abs(bf16 - fp32) < 0.05 * fp32, losses
    assert losses["bf16"] != losses["fp32"]      # and autocast did compute in bf16


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="dtype"):
        config(dtype="fp8")
    with pytest.raises(ValueError, match="divide evenly"):
        train(model(), corpus(), corpus(), config(batch_size=3, grad_accum=2))


def test_update_that_breaks_the_weights_stops_and_is_never_saved(tmp_path):
    # before: the guard looked only at loss and gradients, so the update of an lr of 1e38 was
    # saved as "the last good checkpoint" and the final model, all of it non-finite
    data = corpus()
    with pytest.raises(FloatingPointError, match=r"update of step 1 made weights non-finite.*"
                                                 r"not saved \(no checkpoint had been written yet\)"):
        train(model(), data, data, config(lr=1e38, warmup_steps=0, ckpt_every=1), out_dir=tmp_path / "a")
    assert ckpt.latest_checkpoint(tmp_path / "a" / "checkpoints") is None
    assert not (tmp_path / "a" / "model.safetensors").exists()

    net = model()

    def poison(step, record):
        if step == 2:
            with torch.no_grad():
                net.backbone.norm_f.weight.fill_(float("inf"))
    with pytest.raises(FloatingPointError, match=r"step 2 made weights non-finite \(backbone.norm_f"
                                                 r".*the last good checkpoint is .*step-00000001"):
        train(net, data, data, config(ckpt_every=1, steps=3), out_dir=tmp_path / "b", on_step=poison)
    latest = ckpt.latest_checkpoint(tmp_path / "b" / "checkpoints")
    assert latest.name == "step-00000001"
    assert all(torch.isfinite(p).all() for p in load_model(latest).parameters())
    result = train(model(), data, data, config(ckpt_every=1, steps=3), out_dir=tmp_path / "b", resume=True)
    assert result.resumed_from == 1 and result.steps == 3


def test_resume_refuses_changed_settings_or_data_unless_allowed(tmp_path):
    data = corpus()
    train(model(), data, data, config(steps=2, ckpt_every=1), out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"other settings \(steps 2 -> 3; batch_size 2 -> 4; lr 0.01 -> 0.02\).*--allow-changes"):
        train(model(), data, data, config(steps=3, lr=2e-2, batch_size=4), out_dir=tmp_path, resume=True)
    other = TokenDataset(data.tokens[::-1].copy(), data.eos_token_id, data.byte_lengths)
    with pytest.raises(ValueError, match=r"other settings \(data '"):
        train(model(), other, other, config(steps=2), out_dir=tmp_path, resume=True)
    with pytest.warns(UserWarning, match=r"changed settings \(steps 2 -> 3\)"):
        result = train(model(), data, data, config(steps=3), out_dir=tmp_path, resume=True,
                       allow_changes=True)
    assert result.resumed_from == 2 and result.steps == 3


def test_resume_cleans_orphaned_temps_and_logs_the_final_eval_once(tmp_path):
    data = corpus()
    train(model(), data, data, config(steps=2, ckpt_every=1), out_dir=tmp_path)
    # what kill -9 inside the writers leaves: a checkpoint temp folder, temp files beside the
    # final model, `latest` and the token cache
    orphans = [tmp_path / "checkpoints" / ".step-00000003.x1y2", tmp_path / "checkpoints" / ".latest.ab.tmp",
               tmp_path / ".model.safetensors.cd.tmp", tmp_path / "data" / ".train.bin.ef.tmp"]
    orphans[0].mkdir()
    for p in orphans[1:]:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"half")
    result = train(model(), data, data, config(steps=2, ckpt_every=1), out_dir=tmp_path, resume=True)
    assert not any(p.exists() for p in orphans)
    finals = [r for r in result.history if "loss" not in r]
    assert [r["step"] for r in finals] == [2]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 2]   # two steps, one final eval


def test_identical_runs_write_identical_bytes(tmp_path):
    # safetensors writes its metadata from a hash map: before, byte order varied between saves
    net = model()
    blobs = set()
    for i in range(8):
        net.save_pretrained(tmp_path / str(i))
        blobs.add((tmp_path / str(i) / "model.safetensors").read_bytes())
    assert len(blobs) == 1


@pytest.fixture(scope="module")
def one_step_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(model(), corpus(), corpus(), config(steps=1), out_dir=out)
    return out


def _corrupt(path, edit):
    state = json.loads(path.read_text())
    edit(state)
    path.write_text(json.dumps(state))


@pytest.mark.parametrize("edit,match", [
    (lambda s: s.update(step=-5), r"step -5 in a folder named step-00000001"),
    (lambda s: s.update(step=1_000_000), r"step 1000000 in a folder named step-00000001"),
    (lambda s: s["param_groups"][0].update(betas=["x", 7]), r"param group 0: betas is \['x', 7\]"),
    (lambda s: s["param_groups"][1].update(eps=float("nan")), r"param group 1: eps is nan"),
    (lambda s: s.update(param_groups=[]), r"0 param groups, this optimizer has 2"),
])
def test_corrupt_trainer_state_is_refused_on_resume(one_step_run, tmp_path, edit, match):
    # before: a traceback, or a step / betas accepted as they were
    data = corpus()
    shutil.copytree(one_step_run, tmp_path, dirs_exist_ok=True)
    _corrupt(tmp_path / "checkpoints" / "step-00000001" / ckpt.STATE_NAME, edit)
    with pytest.raises(io_files.CheckpointError, match=match):
        train(model(), data, data, config(steps=1), out_dir=tmp_path, resume=True)


def test_corrupt_rng_state_is_refused_on_resume(one_step_run, tmp_path):
    from safetensors.torch import load_file, save_file

    data = corpus()
    shutil.copytree(one_step_run, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "checkpoints" / "step-00000001" / ckpt.OPTIMIZER_NAME
    tensors = load_file(path)
    tensors["rng/torch"] = tensors["rng/torch"][:100].clone()
    save_file(tensors, path)
    with pytest.raises(io_files.CheckpointError, match=r"corrupt checkpoint \(RNG state"):
        train(model(), data, data, config(steps=1), out_dir=tmp_path, resume=True)


def test_grad_checkpointing_gives_the_same_loss_and_gradients():
    from mambakit.models import build

    ids = torch.randint(0, 50, (2, 11))
    for name in ("mamba", "transformer"):
        model = build(name, "tiny", d_model=32, vocab_size=50)
        grads = []
        for checkpointing in (False, True):
            model.gradient_checkpointing = checkpointing
            model.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
            loss.backward()
            grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
        torch.testing.assert_close(grads[0][0], grads[1][0])
        for a, b in zip(grads[0][1], grads[1][1]):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
