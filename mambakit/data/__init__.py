"""Data: the embedded default corpus, user text/.jsonl sources, tokenizers (bytes, BPE), memory-
mapped token files and packed batches with document boundaries."""
from mambakit.data.corpus import default_corpus_files
from mambakit.data.packing import Batch, eval_batches, train_batch
from mambakit.data.sources import iter_documents, iter_texts
from mambakit.data.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer, token_byte_lengths
from mambakit.data.tokens import TokenDataset, open_tokens, prepare

__all__ = ["ByteTokenizer", "HFTokenizer", "load_tokenizer", "token_byte_lengths",
           "default_corpus_files", "iter_documents", "iter_texts",
           "TokenDataset", "prepare", "open_tokens", "Batch", "train_batch", "eval_batches"]
