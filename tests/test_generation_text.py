"""Incremental text decoding: the pieces equal a one-shot decode (Python's own UTF-8 codec, the
tokenizers library's decode) and the work per token does not grow with the output."""
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mambakit.data.tokenizer import ByteTokenizer
from mambakit.generation import Sampler, SamplingParams, TextDecoder, decode_n_tokens, generate, prefill
from tests.conftest import tiny_mamba


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 255), st.integers(0x80, 0xBF), st.sampled_from([0xE2, 0xF0])),
                max_size=80))
@example([0x80] * 40 + list("€".encode()) + [0xE2] * 20 + list(b"ok"))   # long undecodable runs
def test_pieces_join_to_pythons_decode_of_all_bytes(data):
    """Any byte sequence, invalid UTF-8 included: the streamed pieces join to what
    bytes.decode(errors="replace") gives for the whole output, and no piece ends mid-character."""
    dec = TextDecoder(ByteTokenizer())
    pieces = [dec.push(b) for b in data]
    pieces.append(dec.flush())
    assert "".join(pieces) == bytes(data).decode("utf-8", errors="replace") == dec.text


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="ab\n", max_size=30), st.sampled_from(["\n\n", "ab", "aab", "b\na"]))
def test_stop_string_cut_equals_find_on_the_whole_text(text, stop):
    dec = TextDecoder(ByteTokenizer(), stop=[stop])
    shown = "".join(dec.push(b) for b in text.encode()) + dec.flush()
    cut = text[:text.find(stop)] if stop in text else text
    assert shown == cut == dec.text


class _CountingTokenizer(ByteTokenizer):
    decoded = 0

    def decode(self, ids):
        ids = list(ids)
        self.decoded += len(ids)
        return super().decode(ids)


def test_work_per_token_does_not_grow_with_the_output():
    tok = _CountingTokenizer()
    dec = TextDecoder(tok, stop=["<end>", "\n\n\n"])
    text = ("héllo wörld, € and 𝄞 " * 200).encode()
    for i, b in enumerate(text):
        dec.push(b)
        for _ in range(1000 if i == text.index(b",") else 0):
            dec.push(300)                    # a run of tokens without text (specials): adds nothing
    assert dec.text == text.decode()
    assert tok.decoded <= 16 * len(text)     # a whole-output re-decode per token would be ~len²


def test_hf_tokenizer_pieces_equal_its_one_shot_decode():
    from mambakit.data.bpe import train_bpe

    tok = train_bpe(["the cat sat on the mat; naïve café — ünïcödé ✓\n"] * 50, vocab_size=300)
    ids = tok.encode("the café sat — on ünïcödé mats ✓ naïve")
    dec = TextDecoder(tok)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == tok.decode(ids)


def test_steps_driven_by_hand_equal_generate():
    """prefill → Sampler → decode_n_tokens is what generate runs; a caller can drive it itself."""
    model = tiny_mamba()
    ids = torch.randint(0, 50, (2, 5))
    kw = dict(temperature=0.9, top_k=20)
    want = generate(model, ids, max_new_tokens=7, seed=4, **kw)[:, 5:]
    with torch.no_grad():
        cache = model.allocate_cache(2)
        sampler = Sampler(SamplingParams(**kw), ids, seed=4)
        first = sampler(prefill(model, ids, cache)[:, :model.vocab_size])
        got = torch.stack(list(decode_n_tokens(model, first, cache, 7, sampler)), 1)
    assert torch.equal(got, want) and cache.seqlen_offset == 5 + 7
