"""One registry of dataset adapters: ``list_datasets()`` / ``build_dataset(name, root)``."""

from __future__ import annotations

import difflib
import fnmatch
from typing import Callable

from .records import ReidDataset

Adapter = Callable[[str], ReidDataset]
_ADAPTERS: dict[str, Adapter] = {}


def register_dataset(name: str) -> Callable[[Adapter], Adapter]:
    def decorate(fn: Adapter) -> Adapter:
        if name in _ADAPTERS:
            raise ValueError(f"dataset {name!r} registered twice")
        _ADAPTERS[name] = fn
        return fn

    return decorate


def list_datasets(pattern: str = "*") -> list[str]:
    _load_adapters()
    return sorted(n for n in _ADAPTERS if fnmatch.fnmatch(n, pattern))


def build_dataset(name: str, root: str | None = None) -> ReidDataset:
    """Parse dataset ``name`` under ``root`` (the folder holding the dataset's own folder,
    or that folder itself)."""
    _load_adapters()
    if name not in _ADAPTERS:
        close = difflib.get_close_matches(name, _ADAPTERS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown dataset {name!r}{hint} Known: {', '.join(sorted(_ADAPTERS))}")
    return _ADAPTERS[name](root)


def _load_adapters() -> None:
    # Importing the adapter modules registers them.
    from . import adapters, synthetic_sets  # noqa: F401
