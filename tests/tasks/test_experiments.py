"""The papers' experiments: MQAR against Zoology's definition, chunked evaluation == one forward,
resumable and time-bounded runs, the paper recipe, thread fallback."""
import dataclasses
import json
import shutil

import pytest
import torch

from mambakit import threads
from mambakit.tasks import IGNORE_INDEX, SynthConfig, mqar, run_synth
from mambakit.tasks.common import seeded
from mambakit.tasks.evaluate import scored_logits
from mambakit.tasks.runner import build_synth_model, loss_targets


def test_mqar_layout_is_zoologys():
    b, l, k, v = 200, 64, 6, 40
    inputs, targets = mqar(b, l, k, v, generator=seeded(0))
    assert inputs.shape == targets.shape == (b, l) and inputs.dtype == torch.int64
    keys, values = inputs[:, 0:2 * k:2], inputs[:, 1:2 * k:2]               # k_1 v_1 … k_K v_K first
    assert bool(((keys >= 1) & (keys < v // 2)).all() and ((values >= v // 2) & (values < v)).all())
    for row in range(b):
        assert len(set(keys[row].tolist())) == k and len(set(values[row].tolist())) == k
        scored = (targets[row] != IGNORE_INDEX).nonzero().flatten()
        assert len(scored) == k and bool((scored >= 2 * k).all()) and bool(((scored - 2 * k) % 2 == 0).all())
        for pos in scored.tolist():                    # each query is a key; its answer is that key's value
            i = keys[row].tolist().index(int(inputs[row, pos]))
            assert targets[row, pos] == values[row, i]
    assert bool((targets[:, :2 * k] == IGNORE_INDEX).all())
    zeros = mqar(4, l, k, v, random_non_queries=False, generator=seeded(1))[0]
    query_region = zeros[:, 2 * k:]
    assert int((query_region != 0).sum()) == 4 * k                          # only the queries there


def test_mqar_query_gaps_follow_the_power_law():
    """One pair per row (so sampling without replacement does not matter): the gap g of the query
    after the context has probability ∝ (g+1)^(a-1), Zoology's power law."""
    l, a, n = 40, 0.01, 6000
    inputs, targets = mqar(n, l, 1, 16, power_a=a, generator=seeded(2))
    gaps = ((targets != IGNORE_INDEX).int().argmax(-1) - 2) // 2
    space = (l - 2) // 2
    p = torch.arange(1, space + 1, dtype=torch.float64) ** (a - 1)
    p = p / p.sum()
    freq = torch.bincount(gaps, minlength=space).double() / n
    torch.testing.assert_close(freq[:4], p[:4], atol=0.025, rtol=0)
    assert gaps.max() < space


@pytest.mark.parametrize("model", ["mamba", "transformer", "s4d", "gru"])
def test_chunked_evaluation_equals_one_forward(model):
    cfg = SynthConfig(task="selective-copying", model=model, d_model=16, n_layer=2, num_tokens=5, seq_len=37,
                      steps=1, eval_lengths=())
    net = build_synth_model(cfg).eval()
    inputs, targets = cfg.sample(3, 37, seeded(4))
    whole = scored_logits(net, inputs, targets, cfg.vocab_size)
    chunked = scored_logits(net, inputs, targets, cfg.vocab_size, chunk=8)   # 8 does not divide 37
    assert whole.shape == (15, cfg.vocab_size)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)


def test_loss_on_all_positions_is_next_token_with_answers_kept():
    inputs = torch.tensor([[3, 4, 5, 15, 15]])
    targets = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 7, 8]])
    assert torch.equal(loss_targets(inputs, targets, "answers"), targets)
    assert loss_targets(inputs, targets, "all").tolist() == [[4, 5, 15, 7, 8]]


TINY = dict(task="induction-heads", d_model=16, n_layer=1, vocab_size=6, seq_len=12, steps=6, batch_size=4,
            eval_lengths=(24,), eval_samples=8, eval_chunk=5, checkpoint_every=2, device="cpu")


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    whole = run_synth(SynthConfig(**TINY))
    cfg = SynthConfig(**TINY, checkpoint_dir=str(tmp_path / "ckpt"))

    def stop_at_3(step, steps, loss):
        if step == 3:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run_synth(cfg, stop_at_3)
    seen = []
    resumed = run_synth(cfg, lambda step, steps, loss: seen.append(step))
    assert seen == [4, 5, 6]                                   # continued after the interruption
    assert resumed["losses"] == pytest.approx(whole["losses"], rel=1e-5)
    assert resumed["eval"] == whole["eval"]
    with pytest.raises(ValueError, match="other settings.*lr"):
        run_synth(dataclasses.replace(cfg, lr=1e-2))


def test_time_budget_stops_training_and_still_evaluates():
    result = run_synth(SynthConfig(**{**TINY, "steps": 10**6, "time_budget": 1e-3}))
    assert result["stopped_early"] and result["steps_done"] < 10**6
    assert result["eval"][0]["applicable"]


def test_defaults_are_the_papers_settings():
    cfg = SynthConfig()                                        # selective copying = Table 1's CPU setting
    assert (cfg.num_tokens, cfg.vocab_size, cfg.seq_len) == (16, 16, 128)
    paper = SynthConfig.paper("induction-heads", model="transformer")
    assert (paper.seq_len, paper.batch_size, paper.lr, paper.min_lr_ratio, paper.warmup_steps) == (256, 8, 1e-3, 1.0, 0)
    assert paper.eval_lengths[0] == 2 ** 6 and paper.eval_lengths[-1] == 2 ** 20 and paper.model == "transformer"
    with pytest.raises(ValueError, match="no paper recipe"):
        SynthConfig.paper("mqar")
    cpu = SynthConfig.recipe("cpu", "induction-heads", steps=10)          # a flag given overrides the recipe
    assert (cpu.seq_len, cpu.steps, cpu.then, cpu.total_steps) == (256, 10, ((8192, 200),), 210)
    assert cpu.lengths[-1] == 2 ** 20 and cpu.eval_max_tokens == 2 ** 20
    with pytest.raises(ValueError, match="unknown recipe"):
        SynthConfig.recipe("gpu", "induction-heads")


def test_table1_rows_differ_by_selection_only():
    """Each architecture's LTI and selective rows hold the same state per channel (N = 16 real
    values: S4/S4D as 8 conjugate pairs) and so about the same parameters."""
    from mambakit.tasks.experiments import TABLE1_ROWS

    params, state = {}, {}
    for _, model, fields, _, _, _ in TABLE1_ROWS:
        net = build_synth_model(SynthConfig(model=model, model_fields=dict(fields)))
        params[model] = sum(p.numel() for p in net.parameters())
        state[model] = net.config.d_state
    assert set(state.values()) == {16}
    for lti, selective in (("s4", "s6"), ("mamba-s4d", "mamba")):
        assert abs(params[lti] / params[selective] - 1) < 0.1, params


def test_auto_threads_falls_back_to_one_on_a_busy_machine(monkeypatch):
    monkeypatch.setattr(threads, "machine_busy", lambda: True)
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert threads.auto_threads() == 1
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert threads.auto_threads() == torch.get_num_threads()
    monkeypatch.setattr(threads, "machine_busy", lambda: False)
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert threads.auto_threads() == torch.get_num_threads()


def test_then_stages_train_longer_sequences_with_the_same_tokens_per_batch(monkeypatch):
    cfg = SynthConfig(**{**TINY, "then": ((24, 2), (48, 1))})
    assert cfg.total_steps == 9
    assert [cfg.batch_shape(s) for s in (0, 5, 6, 7, 8)] == [(4, 12)] * 2 + [(2, 24)] * 2 + [(1, 48)]
    shapes = []
    sample = SynthConfig.sample
    monkeypatch.setattr(SynthConfig, "sample", lambda self, b, l, g: shapes.append((b, l)) or sample(self, b, l, g))
    result = run_synth(dataclasses.replace(cfg, eval_lengths=()))
    assert result["steps_done"] == 9 and not result["stopped_early"]
    assert shapes[:9] == [(4, 12)] * 6 + [(2, 24)] * 2 + [(1, 48)]          # then the evaluation batches
    with pytest.raises(ValueError, match="seq_len"):
        SynthConfig(**{**TINY, "then": ((2, 5),)})                              # too short for the task


def test_resume_refuses_other_stages_and_reads_checkpoints_from_before_stages(tmp_path):
    cfg = SynthConfig(**{**TINY, "steps": 2, "checkpoint_dir": str(tmp_path)})
    run_synth(cfg)
    state = tmp_path / "latest"
    saved = json.loads((tmp_path / state.read_text().strip() / "trainer_state.json").read_text())
    saved["synth_config"].pop("then")                   # as written before the field existed
    (tmp_path / state.read_text().strip() / "trainer_state.json").write_text(json.dumps(saved))
    assert run_synth(cfg)["steps_done"] == 2                                    # same run: nothing to do
    with pytest.raises(ValueError, match="other settings.*then"):
        run_synth(dataclasses.replace(cfg, then=((24, 1),)))


def test_synth_transformer_takes_the_unit_embedding_init_unless_told_otherwise():
    """SYNTH_MODEL_FIELDS: the synthetic tasks' Transformer embeds with N(0, 1) (GPT-2's 0.02 left
    it at chance on induction heads); a model field overrides it, other models are untouched, and
    the run's report says which init the model had."""
    base = dict(task="induction-heads", d_model=64, n_layer=1, seq_len=16, steps=1, eval_lengths=(), eval_samples=4)
    emb = build_synth_model(SynthConfig(model="transformer", **base)).backbone.embedding.weight
    assert abs(emb.std().item() - 1.0) < 0.2
    told = SynthConfig(model="transformer", model_fields={"embedding_init_std": 0.02}, **base)
    assert abs(build_synth_model(told).backbone.embedding.weight.std().item() - 0.02) < 0.005
    sized = SynthConfig(model="transformer", budget_params=60_000, **base)
    assert abs(build_synth_model(sized).backbone.embedding.weight.std().item() - 1.0) < 0.2
    assert abs(build_synth_model(SynthConfig(model="mamba", **base)).backbone.embedding.weight.std().item() - 0.02) < 0.005
    result = run_synth(SynthConfig(model="transformer", **base))
    assert result["model_config"]["embedding_init_std"] == 1.0


def test_mqar_fillers_are_zero_as_zoologys_figure2_unless_random():
    cfg = SynthConfig(task="mqar")
    assert (cfg.seq_len, cfg.num_tokens, cfg.vocab_size, cfg.random_fillers) == (64, 4, 64, False)
    inputs, targets = cfg.sample(8, 64, seeded(5))
    assert int((inputs[:, 8:] != 0).sum()) == 8 * 4                      # the queries, nothing else
    noisy, noisy_targets = dataclasses.replace(cfg, random_fillers=True).sample(8, 64, seeded(5))
    fillers = noisy[:, 8:][noisy_targets[:, 8:] == IGNORE_INDEX]
    assert (fillers != 0).float().mean() > 0.9 and int(fillers.max()) >= 32     # values' ids among them
    with pytest.raises(ValueError, match="MQAR setting"):
        SynthConfig(task="induction-heads", random_fillers=True)


def test_mqar_transformer_embeds_as_configured_but_induction_heads_takes_the_unit_init():
    """SYNTH_MODEL_FIELDS is per task: MQAR's Transformer keeps the config's N(0, 0.02)."""
    mq = build_synth_model(SynthConfig(task="mqar", model="transformer", d_model=64, n_layer=1, steps=1))
    ih = build_synth_model(SynthConfig(task="induction-heads", model="transformer", d_model=64, n_layer=1, steps=1))
    assert abs(mq.backbone.embedding.weight.std().item() - 0.02) < 0.005
    assert abs(ih.backbone.embedding.weight.std().item() - 1.0) < 0.2


def test_stop_at_ends_training_at_a_check_step_and_a_resumed_run_stays_stopped(tmp_path, monkeypatch):
    """stop_at is checked every stop_check_every steps on validation batches of their own stream,
    not the evaluation's; a run that stopped, run again with more steps, does not train on."""
    from mambakit.tasks import evaluate, runner

    checks = []                          # (stream, accuracy) of every evaluation, in order
    real = evaluate.evaluate_synth

    def spy(model, cfg, seq_len, stream=evaluate.EVAL_SEED_OFFSET, samples=None):
        result = real(model, cfg, seq_len, stream, samples)
        checks.append((stream, result["token_accuracy"]))
        return result
    monkeypatch.setattr(runner, "evaluate_synth", spy)
    cfg = SynthConfig(**{**TINY, "steps": 60, "stop_at": 1e-9, "stop_check_every": 3,
                         "checkpoint_dir": str(tmp_path)})
    result = run_synth(cfg)                      # any correct answer passes
    validation = [acc for stream, acc in checks if stream == evaluate.VALIDATION_SEED_OFFSET]
    assert result["reached_stop_at"] and result["stopped_early"]
    assert result["steps_done"] == 3 * len(validation) < 60          # one check every 3 steps ...
    assert validation[-1] > 0 and all(acc == 0 for acc in validation[:-1])     # ... until the first hit
    assert checks[-1][0] == evaluate.EVAL_SEED_OFFSET                # the report: held-out evaluation
    again = run_synth(dataclasses.replace(cfg, steps=80))
    assert again["steps_done"] == result["steps_done"] and again["reached_stop_at"]
    never = run_synth(dataclasses.replace(cfg, stop_at=1.0, checkpoint_dir=None, steps=7))
    assert never["steps_done"] == 7 and not never["reached_stop_at"]
    with pytest.raises(ValueError, match="stop_at"):
        SynthConfig(stop_at=1.5)


def test_mqar_sweep_tries_each_learning_rate_until_one_reaches_the_target():
    from mambakit.tasks.experiments import run_mqar_sweep

    base = SynthConfig(task="mqar", d_model=8, n_layer=1, vocab_size=16, steps=4, batch_size=2,
                       eval_samples=8, stop_check_every=2, device="cpu")
    tried = run_mqar_sweep(base, ["gru"], [8], [16], lrs=[1e-3, 3e-2])["points"][0]
    assert [run["lr"] for run in tried["runs"]] == [1e-3, 3e-2]
    assert tried["accuracy"] == max(run["accuracy"] for run in tried["runs"])
    assert tried["lr"] == max(tried["runs"], key=lambda run: run["accuracy"])["lr"]


def test_mqar_sweep_skips_the_remaining_rates_once_one_reaches_the_target(monkeypatch):
    from mambakit.tasks import experiments

    trained = []

    def fake_run(cfg, on_progress=None):           # reaches the target at lr 3e-3 only
        trained.append(cfg.lr)
        return {"eval": [{"token_accuracy": 0.995 if cfg.lr == 3e-3 else 0.3}], "reached_stop_at": cfg.lr == 3e-3,
                "config": dataclasses.asdict(cfg), "steps_done": 1, "train_seconds": 0.0}
    monkeypatch.setattr(experiments, "run_synth", fake_run)
    base = SynthConfig(task="mqar", stop_at=0.99, steps=1)
    point = experiments.run_mqar_sweep(base, ["gru"], [8], [16], lrs=[1e-3, 3e-3, 1e-2])["points"][0]
    assert trained == [1e-3, 3e-3] and [run["lr"] for run in point["runs"]] == [1e-3, 3e-3]
    assert (point["lr"], point["accuracy"]) == (3e-3, 0.995)


def test_in_workers_reraises_a_workers_error():
    from mambakit.tasks.experiments import in_workers

    with pytest.raises(ValueError, match="invalid literal"):          # a worker's error, as raised there
        in_workers(int, [("12",), ("twelve",)], jobs=2)
    with pytest.raises(ValueError, match="jobs"):
        in_workers(pow, [(1, 1)], jobs=0)


def test_table1_rows_trained_in_worker_processes_equal_the_rows_trained_here():
    """--jobs changes where rows train, not what they learn: same losses, same accuracy, at both
    lengths of a continued row (handed over through a temporary folder: no checkpoint_dir)."""
    from mambakit.tasks.experiments import run_table1

    base = SynthConfig(task="selective-copying", d_model=8, n_layer=1, seq_len=34, steps=3, batch_size=2,
                       eval_lengths=(), eval_samples=4, device="cpu")
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)                                   # the workers' thread count: same sums
    try:
        here = run_table1(base, models=["s6", "mamba"], continue_at=(40, 2))
    finally:
        torch.set_num_threads(threads_before)
    finished = []
    there = run_table1(base, models=["s6", "mamba"], continue_at=(40, 2), jobs=2, threads=1, on_done=finished.append)
    assert sorted(finished) == ["Mamba block + S6", "S6, no gate"]
    assert [r["model"] for r in there["rows"]] == ["s6", "mamba"]
    assert [[(st["seq_len"], st["steps_done"]) for st in r["stages"]] for r in there["rows"]] == [
        [(34, 6), (40, 4)], [(34, 3), (40, 2)]]                            # no-gate rows: twice the steps
    for a, b in zip(here["rows"], there["rows"]):
        assert [run["losses"] for run in a["results"]] == [run["losses"] for run in b["results"]]
        assert a["accuracy"] == b["accuracy"] == b["stages"][1]["accuracy"]
        first, then = b["results"]
        assert then["config"]["init_from"] == first["config"]["checkpoint_dir"] and then["config"]["batch_size"] == 1
    with pytest.raises(ValueError, match="continue_at"):
        run_table1(base, continue_at=(34, 5))


def test_init_from_starts_a_run_from_an_earlier_runs_weights(tmp_path):
    """A run started from another's checkpoint and barely trained (lr 1e-12) scores what that run
    scored on the same held-out batches; another model, or an empty folder, is refused by name."""
    copying = dict(task="selective-copying", d_model=16, n_layer=1, vocab_size=6, num_tokens=2, seq_len=12,
                   batch_size=8, eval_samples=64, device="cpu")
    first = run_synth(SynthConfig(**copying, steps=120, lr=1e-2, eval_lengths=(24,),
                                  checkpoint_dir=str(tmp_path / "first")))
    assert first["eval"][0]["token_accuracy"] > 1.5 * first["chance"]     # it learnt something to carry over
    barely = dict(steps=1, lr=1e-12, warmup_steps=0)
    again = run_synth(SynthConfig(**{**copying, "seq_len": 24}, **barely, eval_lengths=(12,),
                                  init_from=str(tmp_path / "first")))
    assert [e["token_accuracy"] for e in again["eval"]] == [first["eval"][1]["token_accuracy"],
                                                            first["eval"][0]["token_accuracy"]]
    fresh = run_synth(SynthConfig(**copying, **barely, eval_lengths=()))
    assert fresh["eval"][0]["token_accuracy"] < first["eval"][0]["token_accuracy"]
    with pytest.raises(ValueError, match="d_model=16.*d_model=8"):
        run_synth(SynthConfig(**{**TINY, "d_model": 8, "init_from": str(tmp_path / "first")}))
    with pytest.raises(ValueError, match="no checkpoint"):
        run_synth(SynthConfig(**{**TINY, "init_from": str(tmp_path / "nothing")}))
    # a resumed run continues from its own checkpoint: the run it started from is no longer read
    started = SynthConfig(**copying, steps=2, eval_lengths=(), init_from=str(tmp_path / "first"),
                          checkpoint_dir=str(tmp_path / "started"))
    run_synth(started)
    shutil.rmtree(tmp_path / "first")
    assert run_synth(dataclasses.replace(started, steps=3))["steps_done"] == 3


def test_warm_started_mqar_sweep_starts_each_length_from_the_last_ones_best_run(tmp_path):
    from mambakit.tasks.experiments import run_mqar_sweep

    base = SynthConfig(task="mqar", d_model=8, n_layer=1, vocab_size=16, steps=2, batch_size=2, eval_samples=4,
                       device="cpu", checkpoint_dir=str(tmp_path))
    sweep = run_mqar_sweep(base, ["gru", "mamba"], [8], [16, 32], lrs=[1e-3, 1e-2], warm_start=True, jobs=2)
    assert sweep["warm_start"] and [(p["model"], p["seq_len"]) for p in sweep["points"]] == [
        ("gru", 16), ("mamba", 16), ("gru", 32), ("mamba", 32)]
    for short, long in zip(sweep["points"][:2], sweep["points"][2:]):
        assert long["result"]["config"]["init_from"] == short["result"]["config"]["checkpoint_dir"]
        assert [run["lr"] for run in long["runs"]] == [short["lr"]]            # trains on at the winning rate
        assert short["result"]["config"]["checkpoint_dir"].endswith(f"-l16-lr{short['lr']:g}")
        assert long["result"]["config"]["checkpoint_dir"].endswith(f"-l32-lr{long['lr']:g}-from-l16")
        assert short["result"]["config"]["init_from"] is None
    with pytest.raises(ValueError, match="checkpoint_dir"):
        run_mqar_sweep(dataclasses.replace(base, checkpoint_dir=None), ["gru"], [8], [16, 32], warm_start=True)
