"""``reidbench data check``: parse a dataset, count what is there beside the published
counts, and optionally decode every image to find unreadable files.

Exit codes of ``run_data_check``: 0 fine (count differences from the published numbers
are reported, not failures: synthetic and partial copies differ by design), 1 when
images do not decode, 2 on a layout problem or an unknown dataset name.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from .records import SUMMARY_TEXT_KEYS, DatasetLayoutError, ReidDataset
from .registry import build_dataset

COUNT_KEYS = ("images", "ids", "cameras", "clothes", *SUMMARY_TEXT_KEYS.values())


def _decode(path: str) -> str | None:
    """None when the file decodes fully; otherwise the reason. ``Image.verify`` alone
    misses truncated JPEGs, so the pixels are loaded."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
    except Exception as err:  # any decoder failure makes the image unusable
        return f"{type(err).__name__}: {err}"
    return None


def quick_image_problem(path: str) -> str | None:
    """What is wrong with an image file, in the cheap checks a run makes before training
    (None when it passes): missing, unreadable, zero bytes, a header PIL cannot parse, or a
    JPEG / PNG whose end marker is missing (truncated). About 0.05-0.16 ms of CPU a file (headers and the
    last kilobyte only, no pixel decoding); ``reidbench data check --verify-images``
    decodes every pixel."""
    from PIL import Image, UnidentifiedImageError

    try:
        size = os.path.getsize(path)
        if size == 0:
            return "zero-byte file"
        with open(path, "rb") as fh:
            fh.seek(max(0, size - 1024))
            tail = fh.read()
        with Image.open(path) as image:
            fmt = image.format
            width, height = image.size
    except FileNotFoundError:
        return "missing"
    except PermissionError as err:
        return f"not readable ({err.strerror})"
    except UnidentifiedImageError:
        return "not an image PIL can read"
    except OSError as err:
        return f"{type(err).__name__}: {err}"
    if fmt == "JPEG" and b"\xff\xd9" not in tail:
        return "truncated JPEG (no end-of-image marker)"
    if fmt == "PNG" and b"IEND" not in tail:
        return "truncated PNG (no IEND chunk)"
    if width <= 0 or height <= 0:
        return f"empty image ({width}x{height})"
    return None


def check_images(splits: dict[str, list], root: str | None = None, workers: int | None = None) -> None:
    """One pass over every image of ``splits`` ({name: samples}) with :func:`quick_image_problem`;
    raise DatasetLayoutError listing every bad file at once (the first 20), with its split."""
    first_split: dict[str, str] = {}
    for name, samples in splits.items():
        for s in samples:
            first_split.setdefault(s.path, name)
    ordered = sorted(first_split)
    if not ordered:
        return
    workers = workers or min(8, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems = list(pool.map(quick_image_problem, ordered, chunksize=256))
    bad = [(p, e) for p, e in zip(ordered, problems) if e is not None]
    if not bad:
        return

    def rel(path: str) -> str:
        return os.path.relpath(path, root) if root else path

    lines = [f"  {rel(p)} ({first_split[p]}): {e}" for p, e in bad[:20]]
    more = [f"  ... and {len(bad) - 20} more"] if len(bad) > 20 else []
    raise DatasetLayoutError(
        f"{len(bad)} of {len(ordered)} image(s) this run would read cannot be used"
        f"{f' (under {root})' if root else ''}:\n" + "\n".join(lines + more)
        + "\nExpected readable, complete JPEG/PNG files; replace or remove them (reidbench data check "
        "--verify-images decodes every pixel)")


def find_unreadable(dataset: ReidDataset, workers: int | None = None) -> list[dict[str, str]]:
    """Decode every image of every split (and its mask / parsing side-cars) with PIL, in
    threads (PIL releases the GIL while decoding). Returns ``[{"path", "error"}]``."""
    paths: set[str] = set()
    for samples in dataset.splits.values():
        for s in samples:
            paths.add(s.path)
            paths.update(p for p in (s.mask_path, s.parsing_path) if p)
    ordered = sorted(paths)
    workers = workers or min(16, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        errors = list(pool.map(_decode, ordered, chunksize=64))
    return [{"path": p, "error": e} for p, e in zip(ordered, errors) if e is not None]


def check_dataset(name: str, root: str, verify_images: bool = False, workers: int | None = None) -> dict:
    """Parse ``name`` under ``root`` and report per-split counts beside the official ones.

    Raises DatasetLayoutError (layout problems) and KeyError (unknown name) unchanged.
    """
    dataset = build_dataset(name, root)
    unreadable = find_unreadable(dataset, workers) if verify_images else []
    return {
        "dataset": dataset.name,
        "root": dataset.root,
        "task": dataset.task,
        "splits": dataset.summary(),
        "official": dataset.official,
        "evaluations": [
            {"name": e.name, "query": e.query, "gallery": e.gallery, "protocol": e.protocol} for e in dataset.evaluations
        ],
        "verified": bool(verify_images),
        "unreadable": unreadable,
        "notes": dataset.notes,
    }


def _cell(found: int | None, official: int | None) -> tuple[str, bool]:
    text = "-" if found is None else f"{found:,}"
    if official is None:
        return text, False
    differs = found != official
    return f"{text} ({official:,}){' !' if differs else ''}", differs


def format_check(report: dict) -> str:
    """A table of per-split counts; published counts in parentheses, ``!`` where they differ."""
    splits, official = report["splits"], report.get("official", {})
    keys = [k for k in COUNT_KEYS if any(k in row for row in splits.values()) or any(k in row for row in official.values())]
    rows, any_diff = [], False
    for split in list(splits) + [s for s in official if s not in splits]:
        found, published = splits.get(split, {}), official.get(split, {})
        cells = []
        for key in keys:
            text, differs = _cell(found.get(key), published.get(key))
            any_diff |= differs
            cells.append(text)
        rows.append([split if split in splits else f"{split} (missing)"] + cells)
    header = ["split"] + keys
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    lines = [f"{report['dataset']} ({report.get('task', 'image')}) at {report.get('root', '?')}", fmt(header)]
    lines.append("  ".join("-" * w for w in widths))
    lines += [fmt(r) for r in rows]
    if official:
        lines.append("(n) = published count" + ("; ! = differs from it" if any_diff else "; all match"))
    else:
        lines.append("no published counts for this dataset")
    if report.get("evaluations"):
        lines.append("evaluations: " + ", ".join(f"{e['name']} ({e['query']} vs {e['gallery']}, {e['protocol']})" for e in report["evaluations"]))
    if report.get("notes"):
        lines.append("notes: " + report["notes"])
    if report.get("verified"):
        bad = report.get("unreadable", [])
        if bad:
            lines.append(f"{len(bad)} unreadable image(s):")
            lines += [f"  {u['path']}: {u['error']}" for u in bad]
        else:
            lines.append("every image decodes")
    return "\n".join(lines)


def add_data_check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="registered dataset name (e.g. market1501, prcc, cuhk_pedes)")
    parser.add_argument("--root", required=True, help="folder holding the dataset's folder, or that folder itself")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--verify-images", action="store_true", help="decode every image and list unreadable ones")
    parser.add_argument("--workers", type=int, default=None, help="decoding threads for --verify-images")


def run_data_check(args: argparse.Namespace) -> int:
    try:
        report = check_dataset(args.dataset, args.root, verify_images=args.verify_images, workers=getattr(args, "workers", None))
    except DatasetLayoutError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyError as err:  # unknown dataset name; the message lists the known ones
        print(f"error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_check(report))
    if report["unreadable"]:
        if args.json:
            print(f"error: {len(report['unreadable'])} unreadable image(s)", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reidbench data check", description=__doc__.splitlines()[0])
    add_data_check_arguments(parser)
    return run_data_check(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
