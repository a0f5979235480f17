"""Hybrid stacks (mamba_ssm's attn_layer_idx / attn_cfg): the attention layer against the attention
formula written out here (softmax(q kᵀ / √hd) v, causal, grouped-query heads, rotary on the first
rotary_emb_dim channels as flash_attn's non-interleaved RotaryEmbedding), Mamba-1 and Mamba-2 stacks
whose one cache holds SSM states and KV caches (prefill + step == forward, padded batches, state
API), mamba_ssm hybrid checkpoints both ways, and clear errors."""
import json
import math

import pytest
import torch

from mambakit import Mamba2Config, Mamba2LM, MambaConfig, MambaLM
from mambakit.generation import pad_prompts
from mambakit.models import load_model
from mambakit.modules.mha import MHA
from tests.models.helpers import prefill_then_steps

ATTN = dict(num_heads=4, num_heads_kv=2, rotary_emb_dim=4, qkv_proj_bias=True, out_proj_bias=False)
FAMILIES = {
    "mamba": lambda **kw: MambaLM(MambaConfig(d_model=32, n_layer=3, vocab_size=50, d_state=8, **kw)),
    "mamba2": lambda **kw: Mamba2LM(Mamba2Config(d_model=32, n_layer=3, vocab_size=50, d_state=8, headdim=16,
                                                 chunk_size=4, **kw)),
}


def hybrid(family, **kw):
    return FAMILIES[family](attn_layer_idx=[1], attn_cfg=ATTN, **kw).eval()


def attention_by_formula(mha: MHA, x: torch.Tensor) -> torch.Tensor:
    """x (b, l, d) -> (b, l, d), written from the definitions, one head at a time."""
    b, l, _ = x.shape
    h, hk, hd, r = mha.num_heads, mha.num_heads_kv, mha.head_dim, mha.rotary_emb_dim
    W, bias = mha.in_proj.weight, mha.in_proj.bias
    qkv = x @ W.T + bias
    q, k, v = qkv[..., :h * hd], qkv[..., h * hd:(h + hk) * hd], qkv[..., (h + hk) * hd:]
    inv_freq = 1.0 / (mha.rotary_emb_base ** (torch.arange(0, r, 2).float() / r))   # (r/2,)
    angle = torch.arange(l).float()[:, None] * inv_freq                               # (l, r/2)
    rot = torch.polar(torch.ones_like(angle), angle)                                 # e^{iθ}

    def rotate(t):  # pairs (i, i + r/2) of the first r channels turn as one complex number
        z = torch.complex(t[..., :r // 2], t[..., r // 2:r]) * rot
        return torch.cat([z.real, z.imag, t[..., r:]], -1)

    outs = []
    for head in range(h):
        kv_head = head // (h // hk)                                   # grouped-query sharing
        qh = rotate(q[..., head * hd:(head + 1) * hd])
        kh = rotate(k[..., kv_head * hd:(kv_head + 1) * hd])
        vh = v[..., kv_head * hd:(kv_head + 1) * hd]
        scores = qh @ kh.transpose(-1, -2) / math.sqrt(hd)            # (b, l, l)
        scores = scores.masked_fill(torch.ones(l, l, dtype=torch.bool).triu(1), -math.inf)
        outs.append(scores.softmax(-1) @ vh)
    return torch.cat(outs, -1) @ mha.out_proj.weight.T


def test_attention_layer_matches_the_formula():
    mha = MHA(32, **ATTN)
    with torch.no_grad():
        mha.in_proj.bias.normal_()
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        torch.testing.assert_close(mha(x), attention_by_formula(mha, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_one_cache_holds_both_states_and_modes_agree(family):
    model = hybrid(family)
    ids = torch.randint(0, 50, (2, 10))
    with torch.no_grad():
        full = model(ids)
        mixed, cache = prefill_then_steps(model, ids, 6)
        torch.testing.assert_close(mixed, full, atol=1e-4, rtol=1e-4)
        kinds = [type(s).__name__ for s in cache.layers]
        assert kinds[1] == "KVCacheState" and kinds[0] == kinds[2] != "KVCacheState"
        # the state API works on the mixed cache: row 1 alone continues as it would in the batch
        row = cache.select(torch.tensor([1]))
        nxt = torch.randint(0, 50, (2,))
        torch.testing.assert_close(model.step(nxt[1:], row), model.step(nxt, cache.clone())[1:],
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_padded_batch_generation_equals_one_by_one(family):
    model = hybrid(family)
    prompts = [[5, 9, 3, 7, 1, 8, 2], [4], [6, 2, 9, 11]]
    ids, mask = pad_prompts(prompts, pad_id=3)
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=5, temperature=0.0)
    for row, prompt in enumerate(prompts):
        alone = model.generate(torch.tensor([prompt]), max_new_tokens=5, temperature=0.0)
        assert batch[row, ids.shape[1]:].tolist() == alone[0, len(prompt):].tolist()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_state_file_round_trip_resumes_the_sequence(family, tmp_path):
    """A hybrid cache on disk: the KV cache comes back at the slot count it was saved with (it
    grows past a fresh cache's), and continuing from the file equals running the whole sequence."""
    from safetensors.torch import load_file, save_file

    from mambakit.io.files import CheckpointError
    from mambakit.state import load_state, save_state

    model = hybrid(family)
    a, b = torch.randint(0, 50, (2, 19)), torch.randint(0, 50, (2, 5))
    with torch.no_grad():
        cache = model.allocate_cache(2)
        model(a, cache=cache)
        save_state(cache, tmp_path / "h.state")
        resumed = load_state(tmp_path / "h.state", model)
        assert resumed.layers[1].k.shape == cache.layers[1].k.shape and resumed.seqlen_offset == 19
        torch.testing.assert_close(model(b, cache=resumed), model(torch.cat([a, b], 1))[:, 19:],
                                   atol=1e-4, rtol=1e-4)
    # a file whose KV fields disagree on the slot count is refused, naming the layer
    tensors = load_file(tmp_path / "h.state")
    tensors["layers.1.v"] = tensors["layers.1.v"][:, :, :3].contiguous()
    save_file(tensors, tmp_path / "bad.state", metadata={"format": "mambakit-state", "seqlen_offset": "19"})
    with pytest.raises(CheckpointError, match="layers.1: fields disagree on the number of slots"):
        load_state(tmp_path / "bad.state", model)


def test_mamba_ssm_hybrid_checkpoint_round_trip(tmp_path):
    model = hybrid("mamba2")
    model.save_pretrained(tmp_path / "ssm", format="mamba_ssm")
    config = json.loads((tmp_path / "ssm" / "config.json").read_text())
    assert config["attn_layer_idx"] == [1] and config["attn_cfg"] == ATTN
    keys = torch.load(tmp_path / "ssm" / "pytorch_model.bin", weights_only=True)
    assert {k for k in keys if k.startswith("backbone.layers.1.")} == {
        "backbone.layers.1.norm.weight", "backbone.layers.1.mixer.in_proj.weight",
        "backbone.layers.1.mixer.in_proj.bias", "backbone.layers.1.mixer.out_proj.weight"}
    back = load_model(tmp_path / "ssm")
    ids = torch.randint(0, 50, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(back(ids), model(ids), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="no equivalent of attention layers"):
        model.save_pretrained(tmp_path / "hf", format="transformers")


@pytest.mark.parametrize("fields, message", [
    (dict(attn_layer_idx=[3], attn_cfg=ATTN), r"attn_layer_idx must be distinct layer indices in 0..2"),
    (dict(attn_layer_idx=[1], attn_cfg={"num_head": 4}), r"attn_cfg: unknown key\(s\) \['num_head'\]"),
    (dict(attn_layer_idx=[1], attn_cfg={}), r"attn_cfg must give num_heads"),
    (dict(attn_layer_idx=[1], attn_cfg={"num_heads": 4, "causal": False}), r"attn_cfg.causal=False is not supported"),
])
def test_hybrid_config_errors_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        FAMILIES["mamba2"](**fields)


def test_reset_is_refused_by_attention_layers():
    model = hybrid("mamba")
    assert not model.supports_reset
    with pytest.raises(ValueError, match="reset .* not supported by attention layers"):
        model(torch.randint(0, 50, (1, 4)), reset=torch.tensor([[False, False, True, False]]))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_d_intermediate_mlp_matches_mamba_ssm_block_formula(family, tmp_path):
    """mamba_ssm's Block with d_intermediate > 0, written out: h += mixer(norm(h)); h += fc2(y · SiLU(g))
    with [y, g] = fc1(norm2(h)) (value first) and the hidden width rounded up to 128 — on every layer,
    attention layers included; the checkpoint round-trips through mamba_ssm's format under its key
    names, and transformers' formats (no MLP there) refuse it."""
    from mambakit.modules.mlp import GatedMLP

    model = hybrid(family, d_intermediate=40)
    ids = torch.randint(0, 50, (2, 9))
    layers = model.backbone.layers
    assert all(isinstance(layer.mlp, GatedMLP) for layer in layers)
    assert tuple(layers[0].mlp.fc1.weight.shape) == (256, 32) and tuple(layers[0].mlp.fc2.weight.shape) == (32, 128)
    with torch.no_grad():
        for layer in layers:                               # random norm weights: norm and norm2 must differ
            layer.norm.weight.uniform_(0.5, 1.5)
            layer.norm2.weight.uniform_(0.5, 1.5)

        def rms(x, w):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w

        h = model.backbone.embedding(ids).float()
        for layer in layers:
            h = h + layer.mixer(rms(h, layer.norm.weight))
            y, g = (rms(h, layer.norm2.weight) @ layer.mlp.fc1.weight.T).chunk(2, -1)
            h = h + (y * g * torch.sigmoid(g)) @ layer.mlp.fc2.weight.T
        want = rms(h, model.backbone.norm_f.weight) @ model.lm_head.weight.T
        torch.testing.assert_close(model(ids), want, atol=1e-5, rtol=1e-5)
        # one token at a time through the same blocks
        cache = model.allocate_cache(2)
        stepped = torch.stack([model.step(ids[:, t], cache) for t in range(9)], 1)
        torch.testing.assert_close(stepped, want, atol=1e-4, rtol=1e-4)

    model.save_pretrained(tmp_path / "ssm", format="mamba_ssm")
    assert json.loads((tmp_path / "ssm" / "config.json").read_text())["d_intermediate"] == 40
    keys = torch.load(tmp_path / "ssm" / "pytorch_model.bin", weights_only=True)
    assert {"backbone.layers.1.norm2.weight", "backbone.layers.1.mlp.fc1.weight",
            "backbone.layers.1.mlp.fc2.weight"} <= set(keys)
    back = load_model(tmp_path / "ssm")
    with torch.no_grad():
        torch.testing.assert_close(back(ids), model(ids), atol=1e-6, rtol=0)
    plain = FAMILIES[family](d_intermediate=40)
    with pytest.raises(ValueError, match="d_intermediate"):
        plain.save_pretrained(tmp_path / "hf", format="transformers")
    with pytest.raises(ValueError, match=r"d_intermediate must be an int >= 0"):
        FAMILIES[family](d_intermediate=-1)
