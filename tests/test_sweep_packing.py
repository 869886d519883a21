"""Sweeps that fill a GPU (issue 20): fractional ``--gpus-per-trial`` packs several Tune
trials on one GPU; bad values are refused before Ray starts."""

from __future__ import annotations

import pytest

from reidbench.harness import tune


def test_fractional_and_whole_gpus_per_trial_are_accepted_and_others_refused():
    assert tune.check_gpus_per_trial(0.25) == 0.25
    assert tune.check_gpus_per_trial(2) == 2.0 and tune.check_gpus_per_trial(0) == 0.0
    assert tune.check_gpus_per_trial(None) is None
    for bad in (1.5, -0.5):
        with pytest.raises(ValueError, match="fraction below 1"):
            tune.check_gpus_per_trial(bad)


def test_bad_gpus_per_trial_stops_the_sweep_before_ray_starts(monkeypatch, capsys):
    def no_ray(*args, **kwargs):
        raise AssertionError("the sweep must stop before connecting to Ray")

    monkeypatch.setattr(tune, "run_sweep", no_ray)
    code = tune.sweep_main(lambda args: [tune.Trial("profd")], ["synthetic_occluded"], "test", "packing-test",
                           argv=["--smoke", "--gpus-per-trial", "1.5"])
    assert code == 2 and "--gpus-per-trial must be 0, a fraction below 1" in capsys.readouterr().err


def test_packed_trials_share_the_cpus_between_their_loader_workers():
    assert tune.packed_loader_workers(["a=1"], cpus_per_trial=4, gpus_per_trial=0.25) == ["a=1", "data.num_workers=3"]
    assert tune.packed_loader_workers(["data.num_workers=0"], 4, 0.25) == ["data.num_workers=0"]  # the user's wins
    assert tune.packed_loader_workers(["a=1"], 4, 1.0) == ["a=1"]  # one trial per GPU: the trainer decides
    assert tune.packed_loader_workers([], 1, 0.5) == ["data.num_workers=0"]
