"""``reidbench demo``'s plan: every registered method on the synthetic benchmarks of its
task, cloth-changing methods on the cloth-changing benchmark only, under its ``cc`` protocol."""

from __future__ import annotations

from reidbench.harness.demo import BENCHMARKS, CLOTH_CHANGING, HEADLINE, demo_plan
from reidbench.methods import get_method, list_methods


def test_every_registered_method_is_in_the_demo_on_the_benchmarks_of_its_task():
    plan = demo_plan()
    assert len(set(plan)) == len(plan)
    for name in list_methods():
        cls = get_method(name)
        expected = {b for task in cls.tasks for b in BENCHMARKS[task]
                    if "clothes_id" not in cls.requires or b in CLOTH_CHANGING}
        assert {b for m, b in plan if m == name} == expected, name
        assert expected, f"{name} has no demo benchmark"


def test_ccaf_runs_on_the_cloth_changing_benchmark_under_cc_and_clip_scgi_on_every_image_benchmark():
    plan = demo_plan()
    assert [b for m, b in plan if m == "ccaf"] == ["synthetic_cc"]
    assert HEADLINE["synthetic_cc"] == "cc"
    assert [b for m, b in plan if m == "clip_scgi"] == list(BENCHMARKS["image"])
    assert demo_plan("clip_*") == [(m, b) for m, b in plan if m.startswith("clip_")]
