"""The machinery every annotation command shares: the work list over a dataset's
splits, resuming without redoing finished items, the progress bar, spreading over Ray
workers, the tally of checks and retries, and provenance.

A command supplies two things:

* a *worker spec*: a picklable object whose ``build()`` returns ``process(item) ->
  result`` (the model is loaded once per worker, inside ``build``);
* a *sink* that knows which items are already done (``done``) and records each
  result as it arrives (``accept``), so that an interrupted run loses at most the
  items in flight.

Decisions where the issues are silent:

* Items are keyed by the image path relative to the dataset folder (``/``-separated),
  the key of the texts files and of the parsing maps, and processed in sorted key order.
  An image that several splits hold is one item.
* ``--workers 1`` runs in this process without Ray. ``--workers N`` starts N Ray actors
  (each loads the model once) and hands them chunks of ``chunk_size`` items; only the
  driver writes, so there is one output file and no shards to merge. Results arrive in
  completion order, so line order differs between runs; the set of lines does not,
  because every item's output depends on that item alone (one image per generate call,
  retries seeded by the item's key). Caveat: a Ray worker computes on one thread
  (``num_cpus=1``), and sums over another thread count can differ in the last bits,
  which can flip a near-tie in greedy decoding or an argmax.
* The workers run with ``PYTHONPATH`` pointing at the ``reidbench`` being run, so they
  import the same code as the driver. The cluster ``RAY_ADDRESS`` names, or the one
  ``ray start`` made, is joined; otherwise a local Ray is started.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

__all__ = [
    "JsonlSink",
    "Tally",
    "WorkItem",
    "collect_items",
    "item_seed",
    "run_work",
    "sha256_text",
]


@dataclass(frozen=True)
class WorkItem:
    """One image to annotate: ``key`` relative to the dataset folder, ``path`` absolute."""

    key: str
    path: str


def collect_items(dataset, splits: str) -> list[WorkItem]:
    """The images of ``splits`` (comma-separated split names, or ``all`` for every image
    split; text-query splits never hold images to annotate), one item per image, sorted."""
    from ..datasets.texts import text_query_splits

    queries = text_query_splits(dataset)
    image_splits = [name for name in dataset.splits if name not in queries]
    wanted = image_splits if splits.strip() == "all" else [s.strip() for s in splits.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in image_splits]
    if not wanted or unknown:
        raise ValueError(f"--split {splits!r}: {dataset.name} has no image split "
                         f"{', '.join(repr(s) for s in unknown) or '(none given)'}; expected 'all' or a comma-separated "
                         f"list of {', '.join(image_splits)}")
    root = os.path.abspath(dataset.root)
    items: dict[str, WorkItem] = {}
    for name in wanted:
        for sample in dataset.splits[name]:
            path = os.path.abspath(sample.path)
            key = os.path.relpath(path, root).replace(os.sep, "/")
            items.setdefault(key, WorkItem(key, path))
    return [items[k] for k in sorted(items)]


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def item_seed(key: str, attempt: int) -> int:
    """A seed that depends on the item and the attempt only (not on the worker or order)."""
    return int(hashlib.sha256(f"{key}\n{attempt}".encode()).hexdigest()[:8], 16)


@dataclass
class Tally:
    """What one run did: items done, skipped (finished earlier), passed, failed; every
    attempt and every failed check by name (an item retried twice and then accepted
    counts two failures and two retries)."""

    total: int = 0
    skipped: int = 0
    ok: int = 0
    failed: int = 0
    attempts: int = 0
    retries: int = 0
    checks_failed: Counter = field(default_factory=Counter)

    def add(self, result: dict) -> None:
        self.ok += bool(result["ok"])
        self.failed += not result["ok"]
        self.attempts += int(result.get("attempts", 1))
        self.retries += int(result.get("retries", 0))
        self.checks_failed.update(result.get("checks_failed", ()))

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "skipped": self.skipped, "done": self.ok + self.failed, "ok": self.ok,
                "failed": self.failed, "attempts": self.attempts, "retries": self.retries,
                "checks_failed": dict(sorted(self.checks_failed.items()))}

    def line(self) -> str:
        checks = ", ".join(f"{k} {v}" for k, v in sorted(self.checks_failed.items())) or "none"
        return (f"{self.ok + self.failed} done ({self.ok} ok, {self.failed} failed), {self.skipped} already done "
                f"of {self.total}; {self.attempts} attempts, {self.retries} retries; failed checks: {checks}")


class Sink(Protocol):
    done: set[str]

    def accept(self, result: dict) -> None: ...


class WorkerSpec(Protocol):
    def build(self) -> Callable[[WorkItem], dict]: ...


def _read_jsonl(path: str) -> tuple[list[dict], int]:
    """The complete lines of ``path`` and the byte length they take; a last line cut short
    by an interruption is left out (see :func:`_drop_partial_line`), any other bad line is
    an error."""
    if not os.path.isfile(path):
        return [], 0
    with open(path, "rb") as fh:
        data = fh.read()
    complete = data if data.endswith(b"\n") or not data else data[: data.rfind(b"\n") + 1]
    rows = []
    for number, line in enumerate(complete.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {number}: not valid JSON ({err.msg}); this file was not written by "
                             "reidbench data caption/describe, or was edited; use another --out") from None
        if not isinstance(row, dict) or not isinstance(row.get("path"), str):
            raise ValueError(f'{path}, line {number}: expected a JSON object with a "path"; use another --out')
        rows.append(row)
    return rows, len(complete)


def _drop_partial_line(path: str, length: int) -> None:
    """Cut ``path`` to its complete lines (the cut line is redone)."""
    if os.path.isfile(path) and os.path.getsize(path) != length:
        with open(path, "r+b") as fh:
            fh.truncate(length)


class JsonlSink:
    """A texts file being written (``out``) and its companion ``out + '.failed.jsonl'``
    (items whose every attempt failed a check: their last output and the checks).

    Both are appended one line per item and flushed, so an interruption loses only the
    items in flight. ``done``: the items of both files (a failed item is not retried on
    resume unless ``retry_failed``). ``provenance``: what this run's lines carry; a file
    whose lines carry other settings (another model, prompt or generation setting) is
    refused rather than mixed into.
    """

    def __init__(self, out: str, provenance: dict, retry_failed: bool = False) -> None:
        self.out = os.path.abspath(os.path.expanduser(out))
        self.failed_path = self.out + ".failed.jsonl"
        self.provenance = provenance
        parent = os.path.dirname(self.out)
        if not os.path.isdir(parent):
            raise ValueError(f"--out {out!r}: folder {parent!r} does not exist")
        written, length = _read_jsonl(self.out)
        for number, row in enumerate(written, 1):
            theirs = {k: v for k, v in (row.get("provenance") or {}).items() if k not in _PER_ITEM}
            if theirs != provenance:
                differs = sorted(k for k in set(theirs) | set(provenance) if theirs.get(k) != provenance.get(k))
                raise ValueError(f"--out {self.out!r} holds lines written with other settings (line {number}: "
                                 f"{', '.join(differs)} differ); give another --out, or delete it to start over")
        failed, failed_length = _read_jsonl(self.failed_path)
        # Checked: nothing is written before this point.
        _drop_partial_line(self.out, length)
        _drop_partial_line(self.failed_path, failed_length)
        if retry_failed:
            failed = []
            open(self.failed_path, "w").close()
        self.done = {row["path"] for row in written} | {row["path"] for row in failed}
        self.written = len(written)

    def accept(self, result: dict) -> None:
        path, row = (self.out, result["record"]) if result["ok"] else (self.failed_path, result["failure"])
        row = {**row, "provenance": {**self.provenance, **{k: result[k] for k in _PER_ITEM if k in result}}} \
            if result["ok"] else row
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()


# Provenance keys that differ per line (not compared on resume).
_PER_ITEM = ("attempts",)


def _progress(total: int, initial: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True,
                disable=None)  # None: off when stderr is not a terminal (CI logs stay short)


def _chunks(items: Sequence[WorkItem], size: int) -> list[list[WorkItem]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def _start_ray(workers: int) -> None:
    """Join the cluster ``RAY_ADDRESS`` names or one ``ray start`` made, else start a
    local Ray. Not ``address="auto"``: that joins *any* Ray process found on the machine,
    e.g. another user's test session, whose workers import another ``reidbench``."""
    import ray

    if ray.is_initialized():
        return
    import reidbench

    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(reidbench.__file__)))
    path = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH", "")) if p)
    options = {"include_dashboard": False, "log_to_driver": False, "runtime_env": {"env_vars": {"PYTHONPATH": path}}}
    try:  # a local Ray: at least one CPU per worker, or the extra workers would never start
        ray.init(num_cpus=max(workers, os.cpu_count() or 1), **options)
    except ValueError:  # joining a cluster, whose resources are its own
        ray.init(**options)


class _Actor:
    """A Ray worker: builds the spec's process function once, then runs chunks."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.process = spec.build()

    def run(self, chunk: list[WorkItem]) -> list[dict]:
        return [self.process(item) for item in chunk]


def run_work(items: Sequence[WorkItem], spec: WorkerSpec, sink: Sink, *, workers: int = 1, chunk_size: int = 8,
             desc: str = "", gpus_per_worker: float = 0.0, tally: Tally | None = None) -> Tally:
    """Process every item the sink has not done, in ``workers`` workers, recording each
    result through ``sink.accept`` as it arrives. Returns the tally of this run."""
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if chunk_size < 1:
        raise ValueError(f"--chunk-size must be at least 1, got {chunk_size}")
    tally = tally or Tally()
    todo = [item for item in items if item.key not in sink.done]
    tally.total, tally.skipped = len(items), len(items) - len(todo)
    if not todo:
        return tally
    bar = _progress(len(items), tally.skipped, desc)

    def record(result: dict) -> None:
        sink.accept(result)
        tally.add(result)
        bar.update(1)

    try:
        if workers == 1:
            process = spec.build()
            for item in todo:
                record(process(item))
        else:
            _run_ray(todo, spec, record, workers, chunk_size, gpus_per_worker)
    finally:
        bar.close()
    return tally


def _run_ray(todo: Sequence[WorkItem], spec: WorkerSpec, record: Callable[[dict], None], workers: int,
             chunk_size: int, gpus_per_worker: float) -> None:
    import ray

    _start_ray(workers)
    chunks = _chunks(todo, chunk_size)
    actor_cls = ray.remote(num_cpus=1, num_gpus=gpus_per_worker)(_Actor)
    actors = [actor_cls.remote(spec) for _ in range(min(workers, len(chunks)))]
    pending: dict[Any, Any] = {}
    queue = iter(chunks)
    try:
        for actor in actors:
            chunk = next(queue, None)
            if chunk is not None:
                pending[actor.run.remote(chunk)] = actor
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            actor = pending.pop(ready[0])
            for result in ray.get(ready[0]):
                record(result)
            chunk = next(queue, None)
            if chunk is not None:
                pending[actor.run.remote(chunk)] = actor
    finally:
        for actor in actors:
            ray.kill(actor)
