"""Where reidbench keeps what it builds once and reuses (synthetic benchmarks, the tiny CLIP,
tokenizers). Torch-free, so data generation and the CLI can use it cheaply.

Every entry is built once: under :func:`cache_lock` (the synthetic benchmarks) or
``backbones.tokenizer.cached_directory`` (tokenizers, the tiny CLIP), so processes started
together on an empty cache wait for the first builder instead of racing it."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The reidbench cache: ``cache_dir`` if given, else ``$REIDBENCH_CACHE`` (unless empty),
    else ``~/.cache/reidbench``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("REIDBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "reidbench"


@contextlib.contextmanager
def cache_lock(path: str | os.PathLike, what: str = "a cache entry"):
    """Hold an exclusive ``flock`` on ``path`` (created, with its parents) while building
    ``what``: a second process asking for it waits (saying once on stderr which PID it
    waits for), then finds it built. Released however the holder ends (the kernel drops
    a dead process's locks), so a killed build never blocks the next one."""
    import fcntl
    import sys

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            print(f"reidbench: waiting for PID {holder}, which is building {what} ({path})", file=sys.stderr,
                  flush=True)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
