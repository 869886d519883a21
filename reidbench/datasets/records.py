"""The records every dataset adapter yields (docs/design.md, "Contracts")."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sample:
    """One image (or, in a text-to-image ``test_texts`` split, one caption).

    ``pid`` is relabelled 0..N-1 on the training split only; query/gallery keep
    the dataset's own ids so that distractors (Market pid 0) stay negatives.
    ``mask_path`` points at a part-label map (0 background, 1..5 ProFD parts);
    ``parsing_path`` at a 20-class LIP-style human-parsing map.
    """

    path: str
    pid: int
    camid: int
    clothes_id: int | None = None
    captions: tuple[str, ...] = ()
    mask_path: str | None = None
    occluded: bool | None = None
    parsing_path: str | None = None


@dataclass(frozen=True)
class EvalSplit:
    """How one test protocol of a dataset is evaluated.

    ``protocol`` is one of the evaluation engine's protocols: ``standard``,
    ``cc``, ``same_clothes`` (image ReID) or ``t2i`` (text-to-image).
    """

    name: str
    query: str
    gallery: str
    protocol: str


@dataclass
class ReidDataset:
    """A parsed benchmark: named splits of samples plus how to evaluate them."""

    name: str
    root: str
    task: str  # "image" or "text"
    splits: dict[str, list[Sample]]
    evaluations: list[EvalSplit]
    official: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: str = ""

    def __post_init__(self) -> None:
        if self.task not in ("image", "text"):
            raise ValueError(f"dataset {self.name}: task must be 'image' or 'text', got {self.task!r}")
        for ev in self.evaluations:
            for split in (ev.query, ev.gallery):
                if split not in self.splits:
                    raise ValueError(f"dataset {self.name}: evaluation {ev.name!r} names unknown split {split!r}")

    @property
    def num_train_pids(self) -> int:
        return len({s.pid for s in self.splits.get("train", [])})

    def summary(self) -> dict[str, dict[str, int]]:
        """Per split: images, ids, cameras, and clothes / captions where present."""
        out: dict[str, dict[str, int]] = {}
        for split, samples in self.splits.items():
            row = {
                "images": len({s.path for s in samples}),
                "ids": len({s.pid for s in samples}),
                "cameras": len({s.camid for s in samples}),
            }
            if any(s.clothes_id is not None for s in samples):
                row["clothes"] = len({(s.pid, s.clothes_id) for s in samples if s.clothes_id is not None})
            n_captions = sum(len(s.captions) for s in samples)
            if n_captions:
                row["captions"] = n_captions
            out[split] = row
        return out


class DatasetLayoutError(ValueError):
    """The files on disk are not in the layout the adapter expects; the message says what, where."""


def relabel(samples: list[Sample]) -> list[Sample]:
    """Map training pids (and clothes ids) to 0..N-1 in sorted order of the original ids."""
    from dataclasses import replace

    pid_map = {p: i for i, p in enumerate(sorted({s.pid for s in samples}))}
    clothes = sorted({(s.pid, s.clothes_id) for s in samples if s.clothes_id is not None})
    clothes_map = {c: i for i, c in enumerate(clothes)}
    return [
        replace(
            s,
            pid=pid_map[s.pid],
            clothes_id=None if s.clothes_id is None else clothes_map[(s.pid, s.clothes_id)],
        )
        for s in samples
    ]


def basename(path: str) -> str:
    """File name without folders: ids are parsed from this, never from the full path."""
    return os.path.basename(path)
