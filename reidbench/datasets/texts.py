"""Texts files beside a dataset (``data.texts=FILE.jsonl[,FILE2.jsonl]``).

A texts file holds one JSON object per line, one line per image, in the schema of the
synthetic generator's ``reidbench_meta.jsonl`` (the same key names)::

    {"path": "bounding_box_train/0002_c1s1_000451_03.jpg",
     "caption": "A man in a red shirt and black trousers.",
     "id_descriptions": {"terse": "A tall young man with short black hair.",
                         "detailed": ["...", "..."]},
     "clothes_descriptions": {"terse": "Red shirt, black trousers."},
     "provenance": {"model": "...", "prompt_sha256": "..."}}

``path`` is relative to the dataset folder (``ReidDataset.root``), ``/``-separated.
``caption`` is a string or a list of strings (style ``""``); the descriptions map a style
to a string or a list of strings (several phrasings of one style). ``provenance`` is a
free-form object, checked to be one and otherwise not used. Every other key, an empty
string, an empty list or object, or a path that names no image of the dataset is an
error naming the file and line.

Merge rule (a decision the issue left open): a kind present on a line *replaces* every
variant of that kind the image had (from the dataset or an earlier line or file); kinds
absent from the line are kept. Lines apply in file order and files in the order given,
so later ones win. Replacing rather than appending lets a file correct a dataset's
texts, and a model's descriptions never mix with the generator's in one draw. The
dataset folder is never written: the merged texts live only in the loaded samples.

The texts apply to every split that holds the image (train, query, gallery,
test_images, ...), never to a text-to-image query split (``*_texts``), whose one
caption *is* the query.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import replace
from typing import Any, Sequence

from .records import ReidDataset, Sample, merge_texts

__all__ = [
    "FILE_KEYS",
    "apply_texts_files",
    "parse_text_fields",
    "read_texts_file",
    "text_query_splits",
]

# Texts file / meta file key of each kind (the meta file's names, plural where a style
# map is expected).
FILE_KEYS = {"caption": "caption", "id_description": "id_descriptions", "clothes_description": "clothes_descriptions"}
_ALLOWED_KEYS = ("path", *FILE_KEYS.values(), "provenance")


def _strings(value: Any, where: str, what: str) -> tuple[str, ...]:
    """A non-empty string or non-empty list of non-empty strings, as a tuple (stripped)."""
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise ValueError(f"{where}: {what} must be a non-empty string or a non-empty list of non-empty strings, "
                         f"got {json.dumps(value)[:80]}")
    return tuple(v.strip() for v in items)


def parse_text_fields(record: dict, where: str) -> dict[str, tuple[tuple[str, str, str], ...]]:
    """The text kinds present in one meta/texts record, as ``Sample.texts`` triples per kind.

    ``where`` prefixes every error (``file, line N``). Keys other than the text keys are
    not looked at here."""
    out: dict[str, tuple[tuple[str, str, str], ...]] = {}
    for kind, key in FILE_KEYS.items():
        if key not in record:
            continue
        value = record[key]
        if kind == "caption":
            out[kind] = tuple((kind, "", text) for text in _strings(value, where, f'"{key}"'))
            continue
        if not isinstance(value, dict) or not value:
            raise ValueError(f'{where}: "{key}" must be a non-empty object {{style: text or [texts]}}, '
                             f"got {json.dumps(value)[:80]}")
        entries = []
        for style, texts in value.items():
            entries += [(kind, str(style), text) for text in _strings(texts, where, f'"{key}"["{style}"]')]
        out[kind] = tuple(entries)
    return out


def _relative(path: Any, where: str) -> str:
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f'{where}: "path" must be a non-empty string (the image path relative to the dataset '
                         f"folder), got {json.dumps(path)}")
    rel = path.strip().replace("\\", "/")
    if rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        raise ValueError(f'{where}: "path" must be relative to the dataset folder, got absolute {path!r}')
    return posixpath.normpath(rel)


def read_texts_file(path: str, known: set[str] | None = None) -> list[tuple[str, dict]]:
    """The lines of one texts file as ``(relative image path, {kind: triples})`` in order.

    ``known``: the relative image paths of the dataset; a line naming another path is an
    error. Every error is a ValueError naming the file and line and what was expected."""
    if not os.path.isfile(path):
        where = "" if os.path.isabs(path) else f" (a relative path is read from {os.getcwd()!r}; give an absolute one)"
        raise ValueError(f"data.texts: {path!r} is not a file{where}")
    rows: list[tuple[str, dict]] = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not valid JSON ({err.msg}); expected one JSON object per line") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
            unknown = [k for k in record if k not in _ALLOWED_KEYS]
            if unknown:
                raise ValueError(f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)}; expected "
                                 f"{', '.join(repr(k) for k in _ALLOWED_KEYS)}")
            if "path" not in record:
                raise ValueError(f'{where}: missing "path" (the image path relative to the dataset folder)')
            rel = _relative(record["path"], where)
            if known is not None and rel not in known:
                example = f" (e.g. {min(known)!r})" if known else ""
                raise ValueError(f'{where}: "path" {rel!r} is not an image of the dataset; expected a path relative '
                                 f"to the dataset folder{example}")
            if "provenance" in record and not isinstance(record["provenance"], dict):
                raise ValueError(f'{where}: "provenance" must be a JSON object (model, prompt hash, ...), got '
                                 f"{type(record['provenance']).__name__}")
            fields = parse_text_fields(record, where)
            if not fields:
                raise ValueError(f"{where}: no texts; expected at least one of "
                                 f"{', '.join(repr(k) for k in FILE_KEYS.values())}")
            rows.append((rel, fields))
    return rows


def text_query_splits(dataset: ReidDataset) -> set[str]:
    """Splits whose samples are text queries: the query side of a ``t2i`` evaluation and
    any ``*_texts`` split (``val_texts`` has no evaluation of its own)."""
    return {e.query for e in dataset.evaluations if e.protocol == "t2i"} | {
        name for name in dataset.splits if name.endswith("_texts")
    }


def _rel(sample: Sample, root: str) -> str:
    prefix = root.rstrip(os.sep) + os.sep
    if sample.path.startswith(prefix):  # the adapters' paths; relpath is 10x slower
        return sample.path[len(prefix):].replace(os.sep, "/")
    return os.path.relpath(sample.path, root).replace(os.sep, "/")


def apply_texts_files(dataset: ReidDataset, files: str | Sequence[str] | None) -> ReidDataset:
    """``dataset`` with the texts of ``files`` (a comma-separated string or a list) merged
    over its own (module docstring: merge rule). Every file is read and checked before
    any sample changes; ``dataset`` itself is not modified."""
    if files is None:
        return dataset
    names = [f.strip() for f in files.split(",")] if isinstance(files, str) else [str(f).strip() for f in files]
    names = [n for n in names if n]
    if not names:
        return dataset
    queries = text_query_splits(dataset)
    image_splits = [name for name in dataset.splits if name not in queries]
    known = {_rel(s, dataset.root) for name in image_splits for s in dataset.splits[name]}
    merged: dict[str, dict[str, tuple]] = {}
    for name in names:
        for rel, fields in read_texts_file(os.path.expanduser(name), known):
            merged.setdefault(rel, {}).update(fields)

    def merge(sample: Sample) -> Sample:
        return merge_texts(sample, merged.get(_rel(sample, dataset.root), {}))

    splits = {name: samples if name in queries else [merge(s) for s in samples]
              for name, samples in dataset.splits.items()}
    return replace(dataset, splits=splits)
