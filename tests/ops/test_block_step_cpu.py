"""The fused Mamba block decode step (ops/block_step_cpu.py) against its twin, the unfused
Block.step (RMSNorm, the mixer's step ops, the residual add), in every weight format."""
import copy

import pytest
import torch

import mambakit
from mambakit import MambaConfig, MambaLM
from mambakit.ops.cpu_kernels import available

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
