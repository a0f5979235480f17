"""The fused Mamba block decode step (ops/block_step_cpu.py) against its twin, the unfused
Block.step (RMSNorm, the mixer's step ops, the residual add), in every weight format; and the
whole-model step (MambaLMStep: every block, norm_f and the LM head in one call) against its twin,
MixerLM.step layer by layer, for every thread count and each ISA build."""
import copy

import pytest
import torch

import mambakit
from mambakit import MambaConfig, MambaLM
from mambakit.models.mixer_lm import MixerLM
from mambakit.ops.block_step_cpu import MambaBlockStep, MambaLMStep
from mambakit.ops.cpu_kernels import available, build_for

from .isa import isa_targets

pytestmark = pytest.mark.skipif(available(torch.device("cpu")) is not None, reason="no C++ kernels")


def unfused(block, x, state):
    return block._add(x, block.mixer.step(block.norm(x), state))


# d_inner 84 and d_model 42 (not multiples of a q8 block or a vector), dt_rank 5, d_state 6, d_conv 3.
@pytest.mark.parametrize("fmt", [None, "fp32", "bf16", "int8"])          # None: plain nn.Linear
@pytest.mark.parametrize("batch", [1, 3, 20])                             # 20: past 4-row tiles
@pytest.mark.parametrize("bias", [False, True])
def test_fused_block_step_equals_the_unfused_ops(fmt, batch, bias):
    model = MambaLM(MambaConfig(d_model=42, n_layer=1, vocab_size=50, d_state=6, d_conv=3, dt_rank=5,
                                bias=bias, conv_bias=not bias)).eval()
    if fmt is not None:
        mambakit.quantize(model, fmt)
    block = model.backbone.layers[0]
    x = torch.randn(batch, 42)
    state = block.mixer.allocate_state(batch)
    state.conv.normal_()
    state.ssm.normal_()
    before, old = copy.deepcopy(state), (state.conv, state.ssm)
    with torch.inference_mode():
        ref_state = copy.deepcopy(state)
        ref = unfused(block, x, ref_state)
        got = block.mixer.fused_block_step(x, block.norm, state)
        assert got is not None                                                 # the fused path ran
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(state.conv, ref_state.conv, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(state.ssm, ref_state.ssm, atol=1e-5, rtol=1e-5)
        assert torch.equal(old[0], before.conv) and torch.equal(old[1], before.ssm)   # new buffers
        fused = block.mixer._fused_for(block.norm)
        for threads in (2, 3):         # every stage split over the threads (3: uneven shares)
            out, conv, ssm = fused(x, before.conv, before.ssm, threads)
            torch.testing.assert_close(out, got, atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(conv, state.conv, atol=0, rtol=0)
            torch.testing.assert_close(ssm, state.ssm, atol=1e-6, rtol=1e-6)
    cache = model.allocate_cache(batch)                                      # and through the model
    ids = torch.randint(0, 50, (batch, 5))
    with torch.inference_mode():
        steps = torch.stack([model.step(ids[:, t], cache) for t in range(5)], 1)
        torch.testing.assert_close(steps, model(ids), atol=5e-2 if fmt in ("bf16", "int8") else 1e-4, rtol=1e-4)


def test_autograd_and_bf16_models_take_the_unfused_ops():
    model = MambaLM(MambaConfig(d_model=32, n_layer=1, vocab_size=50, d_state=8))
    block = model.backbone.layers[0]
    x = torch.randn(2, 32)
    assert block.mixer.fused_block_step(x, block.norm, block.mixer.allocate_state(2)) is None   # grad on
    with torch.no_grad():
        model.to(torch.bfloat16)
        assert block.mixer.fused_block_step(x, block.norm, block.mixer.allocate_state(2)) is None


def test_bad_step_inputs_name_the_problem():
    model = MambaLM(MambaConfig(d_model=32, n_layer=1, vocab_size=50, d_state=8)).eval()
    mixer = model.backbone.layers[0].mixer
    fused = mixer._fused_for(model.backbone.layers[0].norm)
    state = mixer.allocate_state(2)
    with pytest.raises(ValueError, match=r"mamba block step: ssm_state must be a contiguous CPU \(2, 64, 8\)"):
        fused(torch.zeros(2, 32), state.conv, state.ssm[:, :, :4].contiguous(), 1)
    with pytest.raises(ValueError, match=r"residual must be \(b, 32\) with 1 <= b <= 64, got \(65, 32\)"):
        fused(torch.zeros(65, 32), state.conv, state.ssm, 1)


@pytest.mark.parametrize("change", ["data", "parameter", "module", "in_place_A_log"])
def test_the_fused_step_follows_replaced_weights(change):
    """The fused step is rebuilt when a tensor it reads is swapped (.data, a new Parameter, a new
    module) or A_log is updated in place; it always equals the unfused ops on the current weights."""
    model = MambaLM(MambaConfig(d_model=32, n_layer=1, vocab_size=50, d_state=8)).eval()
    block = model.backbone.layers[0]
    mixer, x = block.mixer, torch.randn(2, 32)
    with torch.inference_mode():
        mixer.fused_block_step(x, block.norm, mixer.allocate_state(2))
    with torch.no_grad():
        if change == "data":
            mixer.out_proj.weight.data = torch.randn_like(mixer.out_proj.weight)
        elif change == "parameter":
            mixer.in_proj.weight = torch.nn.Parameter(torch.randn_like(mixer.in_proj.weight))
        elif change == "module":
            mambakit.quantize(model, "int8")
        else:
            mixer.A_log.add_(0.5)
    with torch.inference_mode():
        got = mixer.fused_block_step(x, block.norm, mixer.allocate_state(2))
        ref = unfused(block, x, mixer.allocate_state(2))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def lm(fmt, bias=False, n_layer=3, **kw):
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=42, n_layer=n_layer, vocab_size=50, d_state=6, d_conv=3, dt_rank=5,
                                bias=bias, conv_bias=not bias, **kw)).eval()
    if fmt is not None:
        mambakit.quantize(model, fmt)
    return model


def random_cache(model, batch):
    cache = model.allocate_cache(batch)
    for state in cache.layers:
        state.conv.normal_()
        state.ssm.normal_()
    return cache


# vocab 50 pads to 56 rows of the head: not a multiple of the 32-row blocks the threads share
@pytest.mark.parametrize("fmt", [None, "fp32", "bf16", "int8"])
@pytest.mark.parametrize("batch", [1, 3, 20])
@pytest.mark.parametrize("bias", [False, True])
def test_whole_model_step_equals_the_layer_by_layer_step(fmt, batch, bias):
    model = lm(fmt, bias)
    cache, twin_cache = random_cache(model, batch), None
    twin_cache = cache.clone()
    old = [(s.conv, s.ssm) for s in cache.layers]
    before = cache.clone()
    ids = torch.randint(0, 50, (batch, 4))
    with torch.inference_mode():
        for t in range(4):
            got = model.step(ids[:, t], cache)
            assert model.__dict__["_fused_lm"][1] is not None                # the whole-model call ran
            ref = MixerLM.step(model, ids[:, t], twin_cache)
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        assert cache.seqlen_offset == twin_cache.seqlen_offset == 4
        for s, r in zip(cache.layers, twin_cache.layers):
            torch.testing.assert_close(s.conv, r.conv, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(s.ssm, r.ssm, atol=1e-5, rtol=1e-5)
        for (conv, ssm), b in zip(old, before.layers):                       # new buffers each step
            assert torch.equal(conv, b.conv) and torch.equal(ssm, b.ssm)
        fused, h = model.__dict__["_fused_lm"][1], model.backbone.embedding(ids[:, 0])
        states = [(s.conv, s.ssm) for s in before.layers]
        one = fused(h, states, 1)
        for threads in (2, 3):
            other = fused(h, states, threads)
            torch.testing.assert_close(other[0], one[0], atol=1e-6, rtol=1e-6)
            for a, b in zip(one[1] + one[2], other[1] + other[2]):
                torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("march", isa_targets())
def test_each_isa_build_of_the_whole_model_step(march):
    """The native build and the AVX2-only / no-SIMD builds give the layer-by-layer step's logits
    (the int8 GEMV's arithmetic per build is checked exactly in test_linear)."""
    lib = None if march == "native" else build_for(march, ("mamba_block_step.cpp", "gemv.cpp", "decode_step.cpp"))
    for fmt in ("fp32", "bf16", "int8"):
        model = lm(fmt)
        cache = random_cache(model, 3)
        blocks = []
        for layer in model.backbone.layers:
            m = layer.mixer
            blocks.append(MambaBlockStep(layer.norm.weight, layer.norm.eps, (m.in_proj.weight, getattr(m.in_proj, "scale", None), m.in_proj.bias),
                m.conv1d.weight[:, 0, :], m.conv1d.bias,
                (m.x_proj.weight, getattr(m.x_proj, "scale", None), m.x_proj.bias), m.dt_proj.weight,
                m.dt_proj.bias, -torch.exp(m.A_log.float()), m.D,
                (m.out_proj.weight, getattr(m.out_proj, "scale", None), m.out_proj.bias), lib=lib))
        head = model.lm_head
        fused = MambaLMStep(blocks, model.backbone.norm_f.weight, model.backbone.norm_f.eps,
                            (head.weight, getattr(head, "scale", None), head.bias))
        ids = torch.randint(0, 50, (3,))
        with torch.inference_mode():
            logits, convs, ssms = fused(model.backbone.embedding(ids), [(s.conv, s.ssm) for s in cache.layers], 2)
            ref = MixerLM.step(model, ids, cache)
        tol = 1e-5 if march == "native" or fmt != "int8" else 1e-4
        torch.testing.assert_close(logits, ref, atol=tol, rtol=tol)
        for s, conv, ssm in zip(cache.layers, convs, ssms):
            torch.testing.assert_close(conv, s.conv, atol=tol, rtol=tol)
            torch.testing.assert_close(ssm, s.ssm, atol=tol, rtol=tol)


@pytest.mark.parametrize("case", ["grad", "bf16_model", "hybrid_attention", "mlp", "batch_65"])
def test_models_the_whole_model_step_cannot_run_take_the_layer_by_layer_step(case):
    kw = {"hybrid_attention": dict(attn_layer_idx=[1], attn_cfg=dict(num_heads=2)),
          "mlp": dict(d_intermediate=16)}.get(case, {})
    model = lm("fp32" if case == "bf16_model" else None, **kw)
    if case == "bf16_model":
        model.to(torch.bfloat16)
    batch = 65 if case == "batch_65" else 2
    cache = model.allocate_cache(batch)
    ids = torch.randint(0, 50, (batch,))
    with torch.set_grad_enabled(case == "grad"):
        got = model.step(ids, cache)
        ref = MixerLM.step(model, ids, model.allocate_cache(batch))
    assert "_fused_lm" not in model.__dict__ or model.__dict__["_fused_lm"][1] is None
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("change", ["layer_weight", "head_module", "norm_f"])
def test_the_whole_model_step_follows_replaced_weights(change):
    model = lm(None, n_layer=2)
    ids = torch.randint(0, 50, (2,))
    with torch.inference_mode():
        model.step(ids, model.allocate_cache(2))
    with torch.no_grad():
        if change == "layer_weight":
            model.backbone.layers[1].mixer.in_proj.weight.data = torch.randn_like(model.backbone.layers[1].mixer.in_proj.weight)
        elif change == "head_module":
            mambakit.quantize(model, "int8")
        else:
            model.backbone.norm_f.weight = torch.nn.Parameter(torch.rand(42) + 0.5)
    with torch.inference_mode():
        got = model.step(ids, model.allocate_cache(2))
        ref = MixerLM.step(model, ids, model.allocate_cache(2))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_bad_whole_model_step_inputs_name_the_problem():
    model = lm(None, n_layer=2)
    cache = model.allocate_cache(2)
    with torch.inference_mode():
        model.step(torch.zeros(2, dtype=torch.long), cache)
    fused, h = model.__dict__["_fused_lm"][1], torch.zeros(2, 42)
    states = [(s.conv, s.ssm) for s in cache.layers]
    with pytest.raises(ValueError, match="mamba lm step: needs 2 layer states, got 1"):
        fused(h, states[:1], 1)
    with pytest.raises(ValueError, match=r"mamba lm step: layer 1's ssm_state must be a contiguous CPU \(2, 84, 6\)"):
        fused(h, [states[0], (states[1][0], states[1][1][:, :, :3].contiguous())], 1)
    with pytest.raises(ValueError, match=r"residual must be \(b, 42\) with 1 <= b <= 64, got \(65, 42\)"):
        fused(torch.zeros(65, 42), states, 1)
    blocks = model.__dict__["_fused_lm"][1]._keep[0]
    with pytest.raises(ValueError, match=r"mamba lm step: lm_head.weight must be a contiguous CPU \(56, 42\)"):
        MambaLMStep(blocks, model.backbone.norm_f.weight, 1e-5, (model.lm_head.weight.double(), None, None))


def test_states_of_the_whole_model_step_save_and_load(tmp_path):
    """The new states are views into one buffer per token: each saves and loads as its own layer's."""
    from mambakit.state import load_state, save_state
    model = lm(None, n_layer=3)
    cache = model.allocate_cache(2)
    with torch.inference_mode():
        model.step(torch.tensor([1, 2]), cache)
    assert model.__dict__["_fused_lm"][1] is not None
    save_state(cache, tmp_path / "s.state")
    loaded = load_state(tmp_path / "s.state", model)
    for a, b in zip(cache.layers, loaded.layers):
        assert torch.equal(a.conv, b.conv) and torch.equal(a.ssm, b.ssm)
