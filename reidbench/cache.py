"""Where reidbench keeps what it builds once and reuses (synthetic benchmarks, the tiny CLIP,
tokenizers). Torch-free, so data generation and the CLI can use it cheaply."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The reidbench cache: ``cache_dir`` if given, else ``$REIDBENCH_CACHE`` (unless empty),
    else ``~/.cache/reidbench``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("REIDBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "reidbench"
