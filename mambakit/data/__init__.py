"""Data: the embedded default corpus, tokenizers, and batch samplers."""
from mambakit.data.corpus import default_corpus_files, load_default_corpus
from mambakit.data.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer

__all__ = ["ByteTokenizer", "HFTokenizer", "load_tokenizer", "default_corpus_files", "load_default_corpus"]
