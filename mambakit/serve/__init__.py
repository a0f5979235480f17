"""`mambakit serve`: an OpenAI-compatible HTTP server with continuous batching and a prompt-state
cache. `engine` (the batching loop, no HTTP) ← `protocol` (request bodies) ← `app` (routes)."""
from mambakit.serve.engine import Engine, GenerationRequest, QueueFull
from mambakit.serve.prefix_cache import PrefixCache

__all__ = ["Engine", "GenerationRequest", "PrefixCache", "QueueFull"]
