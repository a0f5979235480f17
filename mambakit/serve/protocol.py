"""OpenAI's request bodies -> a GenerationRequest, with OpenAI-style errors for anything wrong.

Fields follow https://platform.openai.com/docs/api-reference (completions, chat completions);
`top_k`, `min_p`, `repetition_penalty` and `ignore_eos` are extras in vLLM's convention (the
openai client sends them through `extra_body`). A field we do not know, or one we know but do not
implement with a non-default value (`logprobs`, `echo`, presence/frequency penalties...), is a 400
naming it: a silently ignored option would be a silent wrong answer.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from mambakit.generation import SamplingParams
from mambakit.serve.engine import GenerationRequest

MAX_STOP = 4            # OpenAI's limit on stop sequences
COMMON = {"model", "max_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
          "stop", "seed", "n", "stream", "stream_options", "user", "ignore_eos",
          "presence_penalty", "frequency_penalty", "logprobs", "logit_bias"}
FIELDS = {"completion": COMMON | {"prompt", "echo", "suffix", "best_of"},
          "chat": COMMON | {"messages", "max_completion_tokens", "top_logprobs"}}
# Known but not implemented: allowed only at the value that means "off".
OFF = {"presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "logprobs": (None, False),
       "echo": (False,), "suffix": (None,), "best_of": (None, 1), "logit_bias": (None, {}),
       "top_logprobs": (None, 0)}
ROLES = ("system", "user", "assistant")


class APIError(Exception):
    def __init__(self, status: int, message: str, param: Optional[str] = None,
                 type: str = "invalid_request_error", code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _bad(param: str, message: str) -> APIError:
    return APIError(400, f"{param}: {message}", param=param)


def _number(body: dict, name: str, default, low=None, high=None, integer=False, low_open=False):
    value = body.get(name)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise _bad(name, f"must be {'an integer' if integer else 'a number'}, got {json.dumps(value)}")
    if (low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high):
        span = f"{'(' if low_open else '['}{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise _bad(name, f"must be in {span}, got {value}")
    return value


def parse_request(body: Any, kind: str, tokenizer, chat_template, model_name: str,
                  max_prompt_tokens: int, max_batch: int, default_max_tokens: int) -> tuple[GenerationRequest, bool, bool]:
    """-> (request, stream, include_usage). Raises APIError (400 / 404)."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    unknown = sorted(set(body) - FIELDS[kind])
    if unknown:
        raise _bad(unknown[0], f"unknown field (known: {', '.join(sorted(FIELDS[kind]))})")
    for name, off in OFF.items():
        if name in body and body[name] not in off:
            raise _bad(name, f"not supported by this server (only {off[0]!r})")
    model = body.get("model")
    if not isinstance(model, str):
        raise _bad("model", "required, a string")
    if model != model_name:
        raise APIError(404, f"The model '{model}' does not exist (this server has '{model_name}')",
                       param="model", code="model_not_found")
    if kind == "chat":
        text = chat_template(_messages(body.get("messages")))
    else:
        text = body.get("prompt")
        if isinstance(text, list) and len(text) == 1 and isinstance(text[0], str):
            text = text[0]
        if not isinstance(text, str):
            raise _bad("prompt", "required, one string")
    prompt_ids = tokenizer.encode(text)
    if not prompt_ids:
        raise _bad("messages" if kind == "chat" else "prompt", "is empty after tokenization")
    if len(prompt_ids) > max_prompt_tokens:
        raise APIError(400, f"the prompt is {len(prompt_ids)} tokens, over this server's limit of "
                            f"{max_prompt_tokens} (--max-prompt-tokens)", param="prompt",
                       code="context_length_exceeded")
    max_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(isinstance(s, str) for s in stop):
        raise _bad("stop", f"must be a string or a list of at most {MAX_STOP} strings")
    top_k = _number(body, "top_k", None, integer=True)
    try:
        params = SamplingParams(
            temperature=_number(body, "temperature", 1.0, 0, 2),
            top_k=None if top_k in (None, 0, -1) else top_k,       # vLLM: 0 / -1 mean "off"
            top_p=_number(body, "top_p", None, 0, 1, low_open=True),
            min_p=_number(body, "min_p", None, 0, 1),
            repetition_penalty=_number(body, "repetition_penalty", 1.0, 0, None, low_open=True))
    except ValueError as e:
        raise APIError(400, str(e), param=str(e).split(" ")[0]) from None
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise _bad("stream_options", 'must be an object like {"include_usage": true}')
    for name in ("stream", "ignore_eos"):
        if body.get(name) is not None and not isinstance(body[name], bool):
            raise _bad(name, f"must be true or false, got {json.dumps(body[name])}")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise _bad("user", "must be a string")
    request = GenerationRequest(
        prompt_ids=prompt_ids, params=params, stop=stop,
        max_tokens=_number(body, max_name, default_max_tokens, 1, integer=True),
        seed=_number(body, "seed", None, integer=True),
        n=_number(body, "n", 1, 1, max_batch, integer=True),
        ignore_eos=bool(body.get("ignore_eos")))
    return request, bool(body.get("stream")), bool((options or {}).get("include_usage"))


def _messages(messages: Any) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "required, a non-empty list of {role, content} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str) \
                or set(m) - {"role", "content", "name"}:
            raise _bad(f"messages[{i}]", f"must be {{role: one of {list(ROLES)}, content: a string}}")
    return messages


def plain_chat_template(messages: list[dict]) -> str:
    """The template when the tokenizer brings none: one "role: content" paragraph per message,
    then "assistant:" for the model to continue."""
    return "".join(f"{m['role']}: {m['content']}\n\n" for m in messages) + "assistant:"


def load_chat_template(directory: Optional[str]):
    """The `chat_template` of `directory/tokenizer_config.json` (a Jinja template, rendered in
    Jinja's sandbox as transformers does), else `plain_chat_template`."""
    path = Path(directory) / "tokenizer_config.json" if directory else None
    config = json.loads(path.read_text()) if path and path.is_file() else {}
    source = config.get("chat_template")
    if not isinstance(source, str):
        return plain_chat_template
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(source)
    special = {k: v if isinstance(v, str) else (v or {}).get("content", "")
               for k, v in config.items() if k in ("bos_token", "eos_token")}
    return lambda messages: template.render(messages=messages, add_generation_prompt=True, **special)
