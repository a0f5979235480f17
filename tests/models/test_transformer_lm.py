"""TransformerLM: KV-cache decode == full forward, causality, exact left padding, positions, config."""
import pytest
import torch

from mambakit import TransformerConfig, TransformerLM
from mambakit.generation import pad_prompts

VARIANTS = {
    "rope-swiglu": dict(),
    "learned-gelu": dict(positions="learned", mlp="gelu", rms_norm=False, bias=True),
}
PROMPTS = [[5, 9, 3, 7, 1, 8, 2], [4], [6, 2, 9, 11]]


def tiny(**overrides):
    fields = dict(d_model=32, n_layer=2, n_head=4, vocab_size=50, max_seq_len=64)
    return TransformerLM(TransformerConfig(**{**fields, **overrides})).eval()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("batch,capacity", [(1, None), (3, 3)])   # capacity 3: the cache must grow
def test_prefill_and_kv_cache_decode_equal_full_forward(variant, batch, capacity):
    model = tiny(**VARIANTS[variant])
    ids = torch.randint(0, 50, (batch, 11))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(batch, capacity)
        pre = model(ids[:, :6], cache=cache)
        rest = torch.stack([model.step(ids[:, t], cache) for t in range(6, 11)], 1)
        chunks = model.allocate_cache(batch, capacity)
        model(ids[:, :4], cache=chunks)
        second = model(ids[:, 4:], cache=chunks)                # a second prefill chunk sees the first
    torch.testing.assert_close(pre, full[:, :6], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rest, full[:, 6:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(second, full[:, 4:], atol=1e-5, rtol=1e-5)
    assert cache.seqlen_offset == 11 and cache.next_position.tolist() == [11] * batch


@pytest.mark.parametrize("variant", VARIANTS)
def test_attention_is_causal(variant):
    model = tiny(**VARIANTS[variant])
    ids = torch.randint(0, 50, (2, 12))
    changed = ids.clone()
    changed[:, 7] = (ids[:, 7] + 1) % 50
    with torch.no_grad():
        a, b = model(ids), model(changed)
        masked = model(changed, attention_mask=torch.ones_like(ids))     # the explicit-mask path
    torch.testing.assert_close(a[:, :7], b[:, :7], atol=0, rtol=0)
    assert not torch.allclose(a[:, 7:], b[:, 7:])
    torch.testing.assert_close(masked, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_padded_logits_equal_each_prompt_alone(variant):
    model = tiny(**VARIANTS[variant])
    ids, mask = pad_prompts(PROMPTS)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask)
        assert torch.isfinite(logits).all()                      # pad rows too: no all-masked softmax
        for row, prompt in enumerate(PROMPTS):
            alone = model(torch.tensor([prompt]))[0]
            torch.testing.assert_close(logits[row, ids.shape[1] - len(prompt):], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_padded_greedy_generation_equals_one_by_one(variant):
    model = tiny(**VARIANTS[variant])
    ids, mask = pad_prompts(PROMPTS, pad_id=3)
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=8, temperature=0.0)
    for row, prompt in enumerate(PROMPTS):
        alone = model.generate(torch.tensor([prompt]), max_new_tokens=8, temperature=0.0)
        assert batch[row, ids.shape[1]:].tolist() == alone[0, len(prompt):].tolist()


def test_pad_keys_stay_masked_in_later_decode_steps():
    model = tiny()
    ids, mask = pad_prompts([[5, 9, 3], [4]])
    cache = model.allocate_cache(2)
    with torch.no_grad():
        model(ids, cache=cache, attention_mask=mask)
        padded = model.step(torch.tensor([7, 7]), cache)[1]
        alone_cache = model.allocate_cache(1)
        model(torch.tensor([[4]]), cache=alone_cache)
        alone = model.step(torch.tensor([7]), alone_cache)[0]
    assert cache.key_mask[:, :4].tolist() == [[True] * 4, [False, False, True, True]]
    assert cache.next_position.tolist() == [4, 2]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


def test_learned_positions_stop_at_max_seq_len_and_rope_runs_past_it():
    learned = tiny(positions="learned", max_seq_len=8)
    learned(torch.randint(0, 50, (1, 8)))
    with pytest.raises(ValueError, match="past max_seq_len 8"):
        learned(torch.randint(0, 50, (1, 9)))
    cache = learned.allocate_cache(1)
    learned(torch.randint(0, 50, (1, 8)), cache=cache)
    with pytest.raises(ValueError, match="position 8 is past max_seq_len 8"):
        learned.step(torch.tensor([1]), cache)
    assert cache.seqlen_offset == 8                              # the refused step changed nothing
    assert "backbone.pos_embedding.weight" in dict(learned.named_parameters())
    rope = tiny(max_seq_len=8)
    assert rope(torch.randint(0, 50, (1, 20))).shape == (1, 20, 56)
    assert not any("pos_embedding" in n for n, _ in rope.named_parameters())


def test_config_validation_and_auto_fields():
    with pytest.raises(ValueError, match=r"d_model \(30\) must be divisible by n_head \(4\)"):
        TransformerConfig(d_model=30, n_head=4)
    with pytest.raises(ValueError, match="even head size"):
        TransformerConfig(d_model=36, n_head=4)                  # head size 9
    TransformerConfig(d_model=36, n_head=4, positions="learned")
    with pytest.raises(ValueError, match="mlp must be one of"):
        TransformerConfig(mlp="relu")
    with pytest.raises(ValueError, match="positions must be one of"):
        TransformerConfig(positions="alibi")
    with pytest.raises(ValueError, match="embedding_init_std"):
        TransformerConfig(embedding_init_std=0.0)
    assert TransformerConfig(d_model=768).resolved_n_head == 12
    assert TransformerConfig(d_model=200).resolved_n_head == 2      # 200 // 64 = 3 does not divide
    assert TransformerConfig(d_model=96, mlp="gelu").resolved_d_ff == 384
    assert TransformerConfig(d_model=96).resolved_d_ff == 256       # 8/3 * 96, SwiGLU's 3 matrices


def test_embedding_init_std_sets_the_token_embedding_and_tied_head_only():
    torch.manual_seed(0)
    gpt2 = tiny(d_model=64, vocab_size=4096)
    wide = tiny(d_model=64, vocab_size=4096, embedding_init_std=1.0)
    assert abs(gpt2.backbone.embedding.weight.std().item() - 0.02) < 0.002
    assert abs(wide.backbone.embedding.weight.std().item() - 1.0) < 0.05
    assert wide.lm_head.weight is wide.backbone.embedding.weight
    q = wide.backbone.layers[0].attn.mixer
    assert max(p.std().item() for n, p in q.named_parameters() if n.endswith("weight")) < 0.03


def test_gpt2_small_preset_has_gpt2s_parameter_count():
    with torch.device("meta"):
        model = TransformerLM(TransformerConfig.preset("gpt2-small"))
    # GPT-2 small is 124,439,808 parameters; our vocab 50257 is padded to 50264 (7 more rows).
    assert model.num_parameters() == 124_439_808 + 7 * 768


def test_training_reduces_loss():
    model = tiny().train()
    seq = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8] * 4])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = torch.nn.functional.cross_entropy(model(seq[:, :-1]).flatten(0, 1), seq[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
