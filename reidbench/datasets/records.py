"""The records every dataset adapter yields (docs/design.md, "Contracts")."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

# The named texts a sample can carry (one name per concept: batch keys, requirement
# names and ``Sample.texts_of`` all use these).
TEXT_KINDS = ("caption", "id_description", "clothes_description")


@dataclass(frozen=True)
class Sample:
    """One image (or, in a text-to-image ``test_texts`` split, one caption).

    ``pid`` is relabelled 0..N-1 on the training split only; query/gallery keep
    the dataset's own ids so that distractors (Market pid 0) stay negatives.
    ``mask_path`` points at a part-label map (0 background, 1..5 ProFD parts);
    ``parsing_path`` at a 20-class LIP-style human-parsing map.

    ``texts`` holds the sample's named texts as ``(kind, style, text)`` triples, kind
    one of ``TEXT_KINDS``: every variant of every kind, in the order the dataset (or a
    texts file) gave them. ``style`` names how a variant was written: ``""`` for a
    dataset's own captions, ``"terse"`` / ``"detailed"`` / ``"list"`` for the synthetic
    generator's descriptions, or whatever a texts file says. A tuple keeps the record
    hashable; read it through :meth:`texts_of`.
    """

    path: str
    pid: int
    camid: int
    clothes_id: int | None = None
    texts: tuple[tuple[str, str, str], ...] = ()
    mask_path: str | None = None
    occluded: bool | None = None
    parsing_path: str | None = None

    def __post_init__(self) -> None:
        for entry in self.texts:
            if len(entry) != 3 or entry[0] not in TEXT_KINDS or not all(isinstance(x, str) for x in entry):
                raise ValueError(
                    f"Sample {self.path}: texts must be (kind, style, text) string triples with kind in "
                    f"{TEXT_KINDS}, got {entry!r}"
                )
            if not entry[2].strip():
                raise ValueError(f"Sample {self.path}: empty {entry[0]} text (style {entry[1]!r})")

    def texts_of(self, kind: str) -> tuple[str, ...]:
        """Every variant of ``kind`` (all styles), in order; ``()`` when the sample has none."""
        if kind not in TEXT_KINDS:
            raise ValueError(f"unknown text kind {kind!r}; expected one of {', '.join(TEXT_KINDS)}")
        return tuple(text for k, _, text in self.texts if k == kind)


def merge_texts(sample: Sample, fields: dict[str, tuple[tuple[str, str, str], ...]]) -> Sample:
    """``sample`` with every variant of each kind in ``fields`` replaced by that kind's
    ``(kind, style, text)`` triples; the kinds ``fields`` lacks are kept as they are."""
    from dataclasses import replace

    if not fields:
        return sample
    kept = tuple(e for e in sample.texts if e[0] not in fields)
    return replace(sample, texts=kept + tuple(e for entries in fields.values() for e in entries))


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


# The summary's (and ``reidbench data check``'s) name for each kind's count.
SUMMARY_TEXT_KEYS = {"caption": "captions", "id_description": "id_descriptions",
                     "clothes_description": "clothes_descriptions"}


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
        """Per split: images, ids, cameras, and clothes / captions / descriptions where present
        (text counts are variants: a train image with two captions counts two)."""
        out: dict[str, dict[str, int]] = {}
        for split, samples in self.splits.items():
            row = {
                "images": len({s.path for s in samples}),
                "ids": len({s.pid for s in samples}),
                "cameras": len({s.camid for s in samples}),
            }
            if any(s.clothes_id is not None for s in samples):
                row["clothes"] = len({(s.pid, s.clothes_id) for s in samples if s.clothes_id is not None})
            for kind, key in SUMMARY_TEXT_KEYS.items():
                count = sum(len(s.texts_of(kind)) for s in samples)
                if count:
                    row[key] = count
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
