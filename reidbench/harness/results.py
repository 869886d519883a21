"""Result files under ``results/``: a CSV whose first line is the command that wrote it."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


def write_results_csv(frame, path: str | Path, argv: list[str] | None = None) -> Path:
    """Write the pandas ``frame`` to ``path`` after a ``# command: python ...`` line (the running
    script and ``argv``, default ``sys.argv[1:]``); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = sys.argv[1:] if argv is None else argv
    with path.open("w") as fh:
        fh.write(f"# command: python {shlex.join([_script(sys.argv[0]), *args])}\n")
        frame.to_csv(fh, index=False)
    return path


def report(frame, out: str | Path | None = None) -> None:
    """Print ``frame`` and, when ``out`` is given, write it with :func:`write_results_csv`:
    how every analysis script ends."""
    print(frame.to_string(index=False))
    if out:
        print(f"wrote {write_results_csv(frame, out)}")


def _script(path: str) -> str:
    """The script as the repository names it (``scripts/x.py``), wherever it was started from."""
    p = Path(path).resolve()
    return f"{p.parent.name}/{p.name}" if p.parent.name in ("scripts", "bench", "sweeps") else path
