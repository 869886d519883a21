"""One registry of dataset adapters: ``list_datasets()`` / ``build_dataset(name, root)``."""

from __future__ import annotations

import difflib
import fnmatch
from typing import Callable

from .records import ReidDataset

Adapter = Callable[[str], ReidDataset]
_ADAPTERS: dict[str, Adapter] = {}
_TASKS: dict[str, str] = {}
TASKS = ("image", "text")


def register_dataset(name: str, task: str = "image") -> Callable[[Adapter], Adapter]:
    """Register an adapter under ``name``. ``task`` ("image" or "text") is declared here so a
    run can refuse a method that cannot handle it before the dataset is read or generated;
    ``build_dataset`` checks the adapter's dataset says the same."""
    if task not in TASKS:
        raise ValueError(f"dataset {name!r}: task must be one of {TASKS}, got {task!r}")

    def decorate(fn: Adapter) -> Adapter:
        if name in _ADAPTERS:
            raise ValueError(f"dataset {name!r} registered twice")
        _ADAPTERS[name] = fn
        _TASKS[name] = task
        return fn

    return decorate


def list_datasets(pattern: str = "*") -> list[str]:
    _load_adapters()
    return sorted(n for n in _ADAPTERS if fnmatch.fnmatch(n, pattern))


def build_dataset(name: str, root: str | None = None) -> ReidDataset:
    """Parse dataset ``name`` under ``root`` (the folder holding the dataset's own folder,
    or that folder itself)."""
    _require(name)
    dataset = _ADAPTERS[name](root)
    if dataset.task != _TASKS[name]:
        raise ValueError(f"dataset {name!r} is registered as a {_TASKS[name]} ReID benchmark but its adapter "
                         f"returned a {dataset.task} one; fix its register_dataset(..., task=...)")
    return dataset


def dataset_task(name: str) -> str:
    """The task ("image" or "text") of registered dataset ``name``, without reading or generating it."""
    _require(name)
    return _TASKS[name]


def _require(name: str) -> None:
    _load_adapters()
    if name not in _ADAPTERS:
        close = difflib.get_close_matches(name, _ADAPTERS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown dataset {name!r}{hint} Known: {', '.join(sorted(_ADAPTERS))}")


def _load_adapters() -> None:
    # Importing the adapter modules registers them.
    from . import adapters, synthetic_sets  # noqa: F401
