"""Device choice: dist.use_gpu / optim.amp defaults, clear errors, and torch.compile plumbing."""

import pytest
import torch

from reidbench.harness.run_config import build_run_config
from reidbench.harness.trainer import WorkerEnv, local_device, settle_device, wrap_for_training

def test_use_gpu_unset_takes_cuda_when_present_and_true_without_cuda_is_a_clear_error():
    assert local_device(False) == torch.device("cpu")
    if torch.cuda.is_available():
        assert local_device(None).type == "cuda" and local_device(True).type == "cuda"
        return
    assert local_device(None) == torch.device("cpu")
    with pytest.raises(RuntimeError, match=r"dist.use_gpu=true, but torch sees no CUDA device"):
        local_device(True)


def test_amp_unset_means_on_exactly_on_gpu_and_an_explicit_choice_stands():
    cfg = build_run_config(overrides=["preset=tiny"])
    assert cfg.dist.use_gpu is None and cfg.optim.amp is None
    on_cpu, on_gpu = settle_device(cfg, False), settle_device(cfg, True)
    assert (on_cpu.dist.use_gpu, on_cpu.optim.amp) == (False, False)
    assert (on_gpu.dist.use_gpu, on_gpu.optim.amp) == (True, True)
    forced = build_run_config(overrides=["preset=tiny", "optim.amp=false"])
    assert settle_device(forced, True).optim.amp is False


def test_compile_is_refused_under_deepspeed_and_values_parse_from_the_command_line():
    cfg = build_run_config(overrides=["preset=tiny", "optim.compile=reduce-overhead", "dist.workers=2",
                                      "dist.strategy=deepspeed"])
    with pytest.raises(ValueError, match="optim.compile=reduce-overhead is not applied under dist.strategy=deepspeed"):
        wrap_for_training(None, None, cfg, WorkerEnv(world_size=2))
    # "eager" (the default), not "off": YAML would read off as false.
    assert build_run_config(overrides=["optim.compile=eager"]).optim.compile == "eager"
