"""``reidbench demo``'s plan: every registered method once per task on a benchmark that every
method of the task can run on (the image methods on synthetic_cc, scored under cc and
same_clothes), and with ``--all-benchmarks`` on every benchmark of its task, a method that
requires clothes ids only where identities change clothes."""

from __future__ import annotations

from reidbench.harness.demo import BENCHMARKS, CLOTH_CHANGING, DEMO_BENCHMARKS, PROTOCOLS, demo_plan, format_table
from reidbench.methods import get_method, list_methods


def expected_benchmarks(name: str, benchmarks: dict) -> set[str]:
    cls = get_method(name)
    return {b for task in cls.tasks for b in benchmarks[task]
            if "clothes_id" not in cls.requires or b in CLOTH_CHANGING}


def test_every_registered_method_runs_once_per_task_by_default_and_everywhere_with_all_benchmarks():
    for all_benchmarks, benchmarks in ((False, DEMO_BENCHMARKS), (True, BENCHMARKS)):
        plan = demo_plan(all_benchmarks=all_benchmarks)
        assert len(set(plan)) == len(plan)
        for name in list_methods():
            got = {b for m, b in plan if m == name}
            assert got == expected_benchmarks(name, benchmarks) and got, (name, all_benchmarks)
    for name in list_methods():
        assert len([b for m, b in demo_plan() if m == name]) == len(get_method(name).tasks)


def test_ccaf_runs_on_synthetic_cc_under_cc_and_clip_scgi_beside_it():
    assert [b for m, b in demo_plan() if m in ("ccaf", "clip_scgi")] == ["synthetic_cc", "synthetic_cc"]
    assert [b for m, b in demo_plan(all_benchmarks=True) if m == "ccaf"] == ["synthetic_cc"]
    assert [b for m, b in demo_plan(all_benchmarks=True) if m == "clip_scgi"] == list(BENCHMARKS["image"])
    assert PROTOCOLS["synthetic_cc"][0] == "cc"  # the headline, first in the table
    assert demo_plan("clip_*") == [(m, b) for m, b in demo_plan() if m.startswith("clip_")]


def test_the_table_has_a_row_per_protocol():
    table = format_table([("ccaf", "synthetic_cc", "cc", 40.0, 30.5, 10.25),
                          ("ccaf", "synthetic_cc", "same_clothes", 90.0, 80.0, 70.0)])
    lines = table.splitlines()
    assert "protocol" in lines[0] and len(lines) == 4
    assert "| ccaf         | synthetic_cc         | cc           |   40.0 |   30.5 |   10.2 |" == lines[2]
