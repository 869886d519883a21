"""Shared pieces of the dataset adapters: finding the dataset folder, listing and
parsing image files, the side-car files, and the errors that say what was expected where.

Every adapter parses ids from a file's *basename* (or from the dataset's own
sub-folders below the dataset folder), never from the full path: a root such as
``/data/exp2_c3/`` or ``/home/me/reid_code/`` must not change a label (torchreid's
``re.search(r'([-\\d]+)_c(\\d)', full_path)`` is exactly that bug).
"""

from __future__ import annotations

import errno
import json
import os
import re
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

from ..records import DatasetLayoutError, Sample, merge_texts
from ..texts import parse_text_fields

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
MAX_LISTED = 5  # how many offending names an error message quotes


@dataclass(frozen=True)
class Layout:
    """One accepted on-disk layout of a dataset.

    ``folder_names`` are the names the dataset folder goes by below a root (the
    official archive name first, then torchreid-style nestings); ``required`` are
    paths relative to the dataset folder that must exist; ``diagram`` is printed in
    errors so that the user sees the whole expected tree.
    """

    dataset: str
    folder_names: tuple[str, ...]
    required: tuple[str, ...]
    diagram: str
    variant: str = ""


def _listing(folder: str, limit: int = 12) -> str:
    try:
        entries = sorted(os.listdir(folder))
    except OSError:
        return "(unreadable)"
    if not entries:
        return "(empty)"
    shown = ", ".join(e + ("/" if os.path.isdir(os.path.join(folder, e)) else "") for e in entries[:limit])
    return shown + (f", ... ({len(entries)} entries)" if len(entries) > limit else "")


def _expected(layouts: Sequence[Layout]) -> str:
    text = "\n".join(layout.diagram.rstrip() for layout in layouts)
    names = " or ".join(f"{layout.folder_names[0]}/" for layout in layouts)
    return f"Expected layout (ROOT may also be the {names} folder itself):\n{text}"


def locate(layouts: Sequence[Layout], root: str | None) -> tuple[Layout, str]:
    """Find the dataset folder under ``root`` (torchreid convention: the folder that
    holds the dataset's folder) or accept ``root`` as the dataset folder itself.

    Returns the matching layout and the absolute dataset folder. Raises a
    DatasetLayoutError naming the missing folder when a candidate is incomplete.
    """
    dataset = layouts[0].dataset
    if root is None or str(root).strip() == "":
        raise DatasetLayoutError(f"{dataset}: no root folder given.\n{_expected(layouts)}")
    root = os.path.abspath(os.path.expanduser(str(root)))
    if not os.path.isdir(root):
        raise DatasetLayoutError(f"{dataset}: root folder {root!r} does not exist.\n{_expected(layouts)}")
    best: tuple[int, str, Layout] | None = None
    for layout in layouts:
        for candidate in [os.path.join(root, name) for name in layout.folder_names] + [root]:
            if not os.path.isdir(candidate):
                continue
            present = sum(os.path.exists(os.path.join(candidate, rel)) for rel in layout.required)
            if present == len(layout.required):
                return layout, os.path.normpath(candidate)
            if present and (best is None or present > best[0]):
                best = (present, candidate, layout)
    if best is not None:
        _, candidate, layout = best
        missing = [rel for rel in layout.required if not os.path.exists(os.path.join(candidate, rel))]
        what = ", ".join(repr(m) for m in missing)
        raise DatasetLayoutError(
            f"{dataset}: missing {what} under {os.path.normpath(candidate)!r} "
            f"(it holds: {_listing(candidate)}).\n{_expected([layout])}"
        )
    looked = ", ".join(repr(os.path.join(root, n)) for layout in layouts for n in layout.folder_names)
    raise DatasetLayoutError(
        f"{dataset}: no dataset folder found: looked for {looked} and for the dataset's own "
        f"sub-folders in {root!r} itself ({root!r} holds: {_listing(root)}).\n{_expected(layouts)}"
    )


def _entry_is(entry: os.DirEntry, kind: str) -> bool:
    """``entry.is_file()`` / ``is_dir()``, with a broken-loop symbolic link (ELOOP) or an
    unreadable entry named as a layout error instead of an OSError from deep inside."""
    try:
        return entry.is_file() if kind == "file" else entry.is_dir()
    except OSError as err:
        raise DatasetLayoutError(_os_problem(entry.path, err)) from None


def _os_problem(path: str, err: OSError) -> str:
    if err.errno == errno.ELOOP:
        return (f"{path} is a symbolic link loop ({err.strerror}); expected an image file, a folder or a link "
                "to one: remove or fix the link")
    return f"{path} cannot be read ({err.strerror or err}); expected a readable file or folder"


def _scandir(folder: str) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return list(it)
    except OSError as err:
        raise DatasetLayoutError(_os_problem(folder, err)) from None


def list_images(folder: str) -> list[str]:
    """Image file names in ``folder`` (sorted; other files such as Market's Thumbs.db are skipped)."""
    return sorted(e.name for e in _scandir(folder)
                  if e.name.lower().endswith(IMAGE_EXTENSIONS) and _entry_is(e, "file")
                  or _is_loop(e))


def _is_loop(entry: os.DirEntry) -> bool:
    # A link that loops is reported whatever its name (it may be a folder link that loops).
    if entry.is_symlink():
        _entry_is(entry, "file")
    return False


def list_subfolders(folder: str) -> list[str]:
    return sorted(e.name for e in _scandir(folder) if _entry_is(e, "dir"))


def unparsable_error(dataset: str, where: str, bad: Sequence[str], expected: str) -> DatasetLayoutError:
    shown = ", ".join(repr(b) for b in bad[:MAX_LISTED])
    more = f" and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
    return DatasetLayoutError(
        f"{dataset}: {len(bad)} name(s) in {where!r} do not match the expected pattern {expected}: {shown}{more}"
    )


def parse_folder(dataset: str, folder: str, pattern: re.Pattern[str], expected: str) -> list[tuple[str, re.Match[str]]]:
    """Match every image file name in ``folder`` against ``pattern`` (a full match of the
    basename). Returns ``(absolute path, match)``; any name that does not match is an error
    listing the first few and the pattern."""
    parsed, bad = [], []
    for name in list_images(folder):
        match = pattern.fullmatch(name)
        if match is None:
            bad.append(name)
        else:
            parsed.append((os.path.join(folder, name), match))
    if bad:
        raise unparsable_error(dataset, folder, bad, expected)
    return parsed


def require_nonempty(dataset: str, split: str, samples: Sequence[Sample], where: str, example: str) -> None:
    if not samples:
        raise DatasetLayoutError(
            f"{dataset}: split {split!r} is empty: no images found in {where!r} (expected files like {example})"
        )


def require_files(dataset: str, paths: Iterable[str], listed_in: str) -> None:
    """Files named by a list or an annotation file must exist; name the first few that do not."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:MAX_LISTED])
        more = f" and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
        raise DatasetLayoutError(f"{dataset}: {len(missing)} image(s) listed in {listed_in!r} are missing: {shown}{more}")


def read_side_car_meta(dataset_dir: str) -> dict[str, dict]:
    """``DSET/reidbench_meta.jsonl`` as ``{relative image path: record}`` ({} when absent).

    The records carry more than a Sample holds (``attributes``, ...); consumers that
    need those look them up here by ``os.path.relpath(sample.path, dataset.root)``.
    """
    path = os.path.join(dataset_dir, "reidbench_meta.jsonl")
    if not os.path.isfile(path):
        return {}
    out: dict[str, dict] = {}
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                out[str(record["path"]).replace("\\", "/")] = record
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise DatasetLayoutError(
                    f"{path}, line {number}: expected one JSON object with a \"path\" key per line ({err})"
                ) from None
    return out


def _index(folder: str) -> set[str]:
    found: set[str] = set()
    if not os.path.isdir(folder):
        return found
    def fail(err: OSError) -> None:
        raise DatasetLayoutError(_os_problem(err.filename or folder, err))

    for dirpath, _, files in os.walk(folder, onerror=fail):
        rel_dir = os.path.relpath(dirpath, folder)
        for name in files:
            found.add(name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/"))
    return found


class SideCars:
    """Masks, parsing maps and ``reidbench_meta.jsonl`` beside a dataset (written by the
    synthetic generator; real data usually has none, and then nothing changes).

    For an image at ``DSET/REL``: ``DSET/masks/REL`` and ``DSET/parsing/REL`` with the
    extension replaced by ``.png``. Values the layout itself defines win over the meta
    file (PRCC's clothes ids, Occluded-REID's occluded flag). Texts: the identity and
    clothing descriptions (``id_descriptions`` / ``clothes_descriptions``, every style)
    are always attached; the meta ``caption`` only to samples without captions of their
    own and only when ``captions`` is True (text-to-image sets keep their annotations,
    and their meta ``captions`` key, a copy of those, is not read).
    """

    def __init__(self, dataset_dir: str, captions: bool = True) -> None:
        self.dataset_dir = dataset_dir
        self.meta = read_side_car_meta(dataset_dir)
        self.masks = _index(os.path.join(dataset_dir, "masks"))
        self.parsing = _index(os.path.join(dataset_dir, "parsing"))
        self.captions = captions

    def attach(self, samples: Sequence[Sample]) -> list[Sample]:
        if not (self.meta or self.masks or self.parsing):
            return list(samples)
        return [self._attach(s) for s in samples]

    def _attach(self, sample: Sample) -> Sample:
        rel = os.path.relpath(sample.path, self.dataset_dir).replace(os.sep, "/")
        png = os.path.splitext(rel)[0] + ".png"
        changes: dict = {}
        if png in self.masks:
            changes["mask_path"] = os.path.join(self.dataset_dir, "masks", png)
        if png in self.parsing:
            changes["parsing_path"] = os.path.join(self.dataset_dir, "parsing", png)
        record = self.meta.get(rel)
        if record is not None:
            if sample.clothes_id is None and record.get("clothes_id") is not None:
                changes["clothes_id"] = int(record["clothes_id"])
            if sample.occluded is None and record.get("occluded") is not None:
                changes["occluded"] = bool(record["occluded"])
            where = f"{os.path.join(self.dataset_dir, 'reidbench_meta.jsonl')} ({rel})"
            try:
                fields = parse_text_fields(record, where)
            except ValueError as err:
                raise DatasetLayoutError(str(err)) from None
            if not self.captions or sample.texts_of("caption"):
                fields.pop("caption", None)
            sample = merge_texts(sample, fields)
        return replace(sample, **changes) if changes else sample


def load_json(dataset: str, path: str) -> object:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as err:
        raise DatasetLayoutError(f"{dataset}: {path!r} is not valid JSON ({err})") from None


__all__ = [
    "IMAGE_EXTENSIONS",
    "Layout",
    "SideCars",
    "list_images",
    "list_subfolders",
    "load_json",
    "locate",
    "parse_folder",
    "read_side_car_meta",
    "require_files",
    "require_nonempty",
    "unparsable_error",
]
