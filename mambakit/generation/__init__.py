"""Generation: sampling (`sampling`), the prefill / decode steps that compose into `stream` and
`generate` (`steps`), and text streaming with stop strings on top (`text`)."""
from mambakit.generation.sampling import Sampler, SamplingParams, process_logits, sample
from mambakit.generation.steps import (
                                       PREFILL_CHUNK,
                                       decode_n_tokens,
                                       decode_one_token,
                                       generate,
                                       pad_prompts,
                                       prefill,
                                       stream,
)
from mambakit.generation.text import TextDecoder, TextStream, generate_text, stream_text

__all__ = ["PREFILL_CHUNK", "Sampler", "SamplingParams", "TextDecoder", "TextStream",
           "decode_n_tokens", "decode_one_token", "generate", "generate_text", "pad_prompts",
           "prefill", "process_logits", "sample", "stream", "stream_text"]
