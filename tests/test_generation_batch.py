"""Batched generation with left padding, streaming (tokens and text), stop strings."""
import pytest
import torch

from mambakit.data.tokenizer import ByteTokenizer
from mambakit.generation import TextDecoder, generate_text, pad_prompts, stream, stream_text
from tests.conftest import tiny_mamba

PROMPTS = [[5, 9, 3, 7, 1, 8, 2], [4], [6, 2, 9, 11]]   # lengths 7, 1 (< d_conv - 1), 4; no pad id 0


def test_pad_prompts_left_pads():
    ids, mask = pad_prompts([[1, 2, 3], [4]], pad_id=9)
    assert ids.tolist() == [[1, 2, 3], [9, 9, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match=r"prompt\(s\) \[1\] are empty"):
        pad_prompts([[1], []])


@pytest.mark.parametrize("backend", ["ref", "auto"])
@pytest.mark.parametrize("repetition_penalty", [1.0, 1.5])
def test_padded_batch_equals_each_prompt_alone(backend, repetition_penalty):
    model = tiny_mamba()
    model.set_scan_backend(backend)
    ids, mask = pad_prompts(PROMPTS)
    kw = dict(max_new_tokens=8, temperature=0.0, repetition_penalty=repetition_penalty)
    batch = model.generate(ids, attention_mask=mask, **kw)
    for row, prompt in enumerate(PROMPTS):
        alone = model.generate(torch.tensor([prompt]), **kw)
        assert batch[row, ids.shape[1]:].tolist() == alone[0, len(prompt):].tolist()


def test_pads_do_not_count_for_the_repetition_penalty():
    model = tiny_mamba()
    kw = dict(max_new_tokens=3, temperature=0.0, repetition_penalty=5.0)
    alone = model.generate(torch.tensor([PROMPTS[1]]), **kw)
    pad_id = int(alone[0, 1])         # the short row's own first choice: penalising it would change it
    assert pad_id not in PROMPTS[1]
    ids, mask = pad_prompts(PROMPTS, pad_id=pad_id)
    assert model.generate(ids, attention_mask=mask, **kw)[1, ids.shape[1]:].tolist() == alone[0, 1:].tolist()


def test_padded_prefill_logits_and_state_equal_unpadded():
    model = tiny_mamba()
    ids, mask = pad_prompts(PROMPTS)
    cache = model.allocate_cache(3)
    with torch.no_grad():
        logits = model(ids, cache=cache, attention_mask=mask)[:, -1]
        for row, prompt in enumerate(PROMPTS):
            alone = model.allocate_cache(1)
            torch.testing.assert_close(logits[row], model(torch.tensor([prompt]), cache=alone)[0, -1],
                                       atol=1e-5, rtol=1e-5)
            for got, want in zip(cache.layers, alone.layers):
                torch.testing.assert_close(got.ssm[row], want.ssm[0], atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(got.conv[row], want.conv[0], atol=1e-5, rtol=1e-5)


def test_right_padding_and_bad_masks_are_rejected():
    model = tiny_mamba()
    ids = torch.tensor([[1, 2, 0]])
    with pytest.raises(ValueError, match="LEFT padding"):
        model.generate(ids, attention_mask=torch.tensor([[1, 1, 0]]))
    with pytest.raises(ValueError, match="shape"):
        model.generate(ids, attention_mask=torch.tensor([[1, 1]]))


def test_streaming_yields_the_same_tokens_as_generate():
    model = tiny_mamba()
    ids, mask = pad_prompts(PROMPTS)
    kw = dict(max_new_tokens=6, temperature=0.8, top_p=0.9, seed=3, attention_mask=mask)
    steps = list(stream(model, ids, **kw))
    assert len(steps) == 6
    assert torch.equal(torch.stack(steps, 1), model.generate(ids, **kw)[:, ids.shape[1]:])


def test_text_decoder_never_splits_a_utf8_character():
    tok = ByteTokenizer()
    text = "héllo, wörld €𝄞!"
    dec = TextDecoder(tok)
    pieces = [dec.push(b) for b in tok.encode(text)] + [dec.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text == dec.text


def test_text_decoder_holds_back_a_possible_stop_string():
    tok = ByteTokenizer()
    dec = TextDecoder(tok, stop=["\n\n"])
    assert [dec.push(b) for b in tok.encode("a\nb\n")] == ["a", "", "\nb", ""]
    assert dec.push(ord("\n")) == "" and dec.finished and dec.text == "a\nb"


def test_stop_strings_stop_each_row_and_truncate():
    model = tiny_mamba(vocab_size=128)               # ASCII bytes only: every token decodes
    tok = ByteTokenizer()
    prompts = ["ab", "hello"]
    kw = dict(max_new_tokens=24, temperature=1.0, seed=1)   # the same draws with and without stop
    full = generate_text(model, tok, prompts, **kw)
    stop = full[0][5:7]
    assert len(stop) == 2 and full[0].index(stop) >= 1
    cut = generate_text(model, tok, prompts, stop=[stop], **kw)
    assert cut[0] == full[0][:full[0].index(stop)]
    assert cut[1] == (full[1][:full[1].index(stop)] if stop in full[1] else full[1])
    text = stream_text(model, tok, prompts, stop=[stop], **kw)
    assert ["".join(row) for row in zip(*text)] == cut
    [alone] = generate_text(model, tok, "ab", **kw)
    stop = alone[5:7]
    steps = list(stream_text(model, tok, "ab", stop=[stop], **kw))
    assert len(steps) == alone.index(stop) + len(stop) < 24   # decoding stopped, not just the output


def test_eos_ends_a_text_row():
    model = tiny_mamba(vocab_size=128)
    tok = ByteTokenizer()
    kw = dict(max_new_tokens=10, temperature=1.0, seed=2)
    [full] = generate_text(model, tok, "ab", **kw)
    eos = ord(full[3])
    assert generate_text(model, tok, "ab", eos_token_id=eos, **kw) == [full[:full.index(full[3])]]


@pytest.mark.parametrize("name", ["mamba", "transformer", "gru", "s4d"])
def test_chunked_prefill_equals_one_pass_with_and_without_padding(name):
    from mambakit.generation import prefill
    from mambakit.models import build

    model = build(name, "tiny").eval()
    ids, mask = pad_prompts([list(range(3, 20)), list(range(5, 9))], pad_id=0)   # 13 pads in row 1
    with torch.no_grad():
        whole = prefill(model, ids, model.allocate_cache(2), mask, chunk_size=10_000)
        cache = model.allocate_cache(2)
        chunked = prefill(model, ids, cache, mask, chunk_size=5)       # pads force a first chunk of 14
        after = model.step(torch.tensor([7, 7]), cache)
        ref_cache = model.allocate_cache(2)
        model(ids, cache=ref_cache, attention_mask=mask)
        ref_after = model.step(torch.tensor([7, 7]), ref_cache)
    torch.testing.assert_close(chunked, whole, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(after, ref_after, atol=1e-4, rtol=1e-4)
