"""Every registered method on the chosen datasets, seeds 0/1/2.

    python sweeps/benchmark.py --smoke
    ray submit cluster.yaml sweeps/benchmark.py -- --datasets market1501,occluded_duke --root /data --preset paper
"""

import sys

from reidbench.harness.tune import Trial, sweep_main
from reidbench.methods import get_method, list_methods


def trials(args) -> list[Trial]:
    # The default datasets are image ReID benchmarks: text-to-image methods join with --datasets of their task.
    return [Trial(method) for method in list_methods() if "image" in get_method(method).tasks]


if __name__ == "__main__":
    sys.exit(sweep_main(trials, ["synthetic_market", "synthetic_occluded"], __doc__.splitlines()[0], "benchmark"))
