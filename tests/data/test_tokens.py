"""Document sources, memory-mapped token files, and the BPE tokenizer."""
import json

import numpy as np
import pytest

from mambakit.data import ByteTokenizer, load_tokenizer, open_tokens, prepare, token_byte_lengths
from mambakit.data.bpe import train_bpe
from mambakit.data.sources import iter_documents

TEXTS = ["def f(x):\n    return x + 1\n", "héllo wörld — ünïcode ✓\n", "class A:\n    pass\n"] * 20


def write_jsonl(path, texts, field="text"):
    path.write_text("".join(json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(texts)))
    return path


def test_jsonl_and_folder_sources(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ["one", "two"])
    (tmp_path / "b.txt").write_text("three")
    (tmp_path / "c.bin").write_bytes(b"\0\1\2")     # binary: skipped
    docs = list(iter_documents([tmp_path]))
    assert sorted(d.text for d in docs) == ["one", "three", "two"]
    assert {d.key for d in docs} == {"a.jsonl:1", "a.jsonl:2", "b.txt"}


@pytest.mark.parametrize("line,message", [("{not json", "not valid JSON"),
                                          ('{"body": "x"}', "no string field 'text'")])
def test_bad_jsonl_names_the_line(tmp_path, line, message):
    (tmp_path / "d.jsonl").write_text('{"text": "ok"}\n' + line + "\n")
    with pytest.raises(ValueError, match=f"d.jsonl:2: {message}"):
        list(iter_documents([tmp_path / "d.jsonl"]))


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        list(iter_documents([tmp_path / "nope"]))


def test_prepare_writes_memmapped_tokens_with_eos_between_documents(tmp_path):
    src = write_jsonl(tmp_path / "docs.jsonl", TEXTS)
    tok = ByteTokenizer()
    out = prepare(tmp_path / "prep", tok, [src])
    train, val = open_tokens(out, "train", tok), open_tokens(out, "val", tok)
    assert isinstance(train.tokens, np.memmap) and train.tokens.dtype == np.uint16
    docs = list(iter_documents([src]))
    expected = {False: [], True: []}
    for d in docs:
        expected[d.is_val] += tok.encode(d.text) + [tok.eos_token_id]
    if not expected[True]:  # too few documents for the hash split: the tail of train is val
        k = max(1, len(expected[False]) // 20)
        expected = {False: expected[False][:-k], True: expected[False][-k:]}
    assert train.tokens.tolist() == expected[False] and val.tokens.tolist() == expected[True]
    # a second prepare of the same sources reuses the files; a changed tokenizer is refused
    stamp = (out / "train.bin").stat().st_mtime_ns
    prepare(tmp_path / "prep", tok, [src])
    assert (out / "train.bin").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="different tokenizer"):
        open_tokens(out, "train", train_bpe(TEXTS, vocab_size=300))


def test_truncated_token_file_is_detected(tmp_path):
    out = prepare(tmp_path, ByteTokenizer(), [write_jsonl(tmp_path / "d.jsonl", TEXTS)])
    with open(out / "train.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(ValueError, match="truncated or replaced"):
        open_tokens(out, "train", ByteTokenizer())


def test_default_corpus_prepares_under_a_byte_cap(tmp_path):
    tok = ByteTokenizer()
    out = prepare(tmp_path, tok, max_bytes=50_000)
    train, val = open_tokens(out, "train", tok), open_tokens(out, "val", tok)
    text_bytes = int((np.asarray(train.tokens) != tok.eos_token_id).sum())
    assert text_bytes == 50_000 and len(val) > 0


def test_bpe_trains_saves_loads_and_round_trips(tmp_path):
    tok = train_bpe(TEXTS, vocab_size=320)
    assert 257 < tok.vocab_size <= 320 and tok.eos_token_id is not None
    tok.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    text = "def g(y):\n  return 'ünïcode ✓ 😀' * 2  \n\n"
    ids = loaded.encode(text)
    assert loaded.decode(ids) == text and ids == tok.encode(text)
    assert len(ids) < len(text.encode())            # merges learned something
    lengths = token_byte_lengths(loaded)
    assert int(lengths[ids].sum()) == len(text.encode("utf-8"))
    assert lengths[loaded.eos_token_id] == 0


def test_bpe_rejects_a_vocab_smaller_than_the_byte_alphabet():
    with pytest.raises(ValueError, match="vocab_size must be"):
        train_bpe(TEXTS, vocab_size=100)


def test_check_tokenizer_fits_allows_vocab_padding_only():
    from types import SimpleNamespace

    from mambakit.data.tokenizer import check_tokenizer_fits

    model = lambda v: SimpleNamespace(vocab_size=v)
    for v in (257, 264):
        check_tokenizer_fits(ByteTokenizer(), model(v))
    for v in (256, 265, 50280):
        with pytest.raises(ValueError, match=r"bytes, 257 tokens.*vocab_size %d.*--tokenizer PATH" % v):
            check_tokenizer_fits(ByteTokenizer(), model(v))
    neox = SimpleNamespace(vocab_size=50277, kind="tokenizer.json")  # mamba-130m's, 50280 rows in HF
    check_tokenizer_fits(neox, model(50280))
    check_tokenizer_fits(neox, model(50304))
    with pytest.raises(ValueError, match="50277 tokens"):
        check_tokenizer_fits(neox, model(50276))


def test_edited_data_is_tokenized_again_and_token_files_are_not_private(tmp_path):
    import os
    import stat

    src = tmp_path / "a.txt"
    src.write_text("first version of the text\n" * 20)
    tok = ByteTokenizer()
    prepare(tmp_path / "cache", tok, [str(src)])
    before = open_tokens(tmp_path / "cache", "train", tok)
    # before: the cache was keyed by the path only, so an edit kept training on stale tokens
    src.write_text("other version of the text\n" * 20)        # same size
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**9))
    prepare(tmp_path / "cache", tok, [str(src)])
    after = open_tokens(tmp_path / "cache", "train", tok)
    assert bytes(after.tokens[:5].tolist()) == b"other" and after.fingerprint() != before.fingerprint()
    umask = os.umask(0)
    os.umask(umask)
    for name in ("train.bin", "val.bin", "train.json"):   # before: the .bin files were 0600
        assert stat.S_IMODE((tmp_path / "cache" / name).stat().st_mode) == 0o666 & ~umask
