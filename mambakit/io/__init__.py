"""File helpers every layer may use (they import nothing else from mambakit): atomic writes, safe
reads of config.json / safetensors / torch `.bin` (no pickle), and state-dict export and strict
loading. The checkpoint *formats* built on them live in `mambakit.formats`."""
