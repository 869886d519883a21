"""One parameter-group builder: per-prefix lr multipliers and weight decays reach the plain
optimizer, DDP and DeepSpeed (ZeRO 1/2/3) alike, and ``set_lr`` scales each group from its own base."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from reidbench.harness.optim import build_optimizer, lr_factor, param_groups, set_lr, set_trainable
from reidbench.harness.run_config import build_run_config
from reidbench.methods import DataSpec, Method, Stage

# Warm-up over 4 epochs: epochs 1 and 3 have different lr factors (0.325 and 0.775).
STAGE = Stage(name="train", epochs=6, lr=1e-3, optimizer="adam", weight_decay=5e-4, warmup_epochs=4,
              param_groups=(("head.", 10.0), ("backbone.norm.", 1.0, 0.0), ("backbone.extra", 0.5, 1e-2)),
              no_decay_1d=True)
EPOCHS = (1, 3)


class TinyMethod(Method):
    """Backbone (linear, norm, a vector), head and a 0-d temperature: every kind of group."""

    name = "tiny_groups"

    def __init__(self) -> None:
        torch.manual_seed(0)
        backbone = nn.Module()
        backbone.proj = nn.Linear(6, 8)
        backbone.norm = nn.LayerNorm(8)
        backbone.extra = nn.Parameter(torch.randn(3, 8))
        super().__init__(None, backbone, DataSpec(num_classes=3))
        self.head = nn.Linear(8, 3)
        self.scale = nn.Parameter(torch.tensor(2.0))

    def training_step(self, batch: dict, stage: Stage) -> dict[str, torch.Tensor]:
        bb = self.backbone
        x = bb.norm(bb.proj(batch["image"])) + bb.extra.sum(0)
        logits = self.head(x) * self.scale
        return {"id": nn.functional.cross_entropy(logits, batch["pid"])}


def batch() -> dict:
    g = torch.Generator().manual_seed(1)
    return {"image": torch.randn(8, 6, generator=g), "pid": torch.arange(8) % 3}


def group_settings(optimizer) -> list[list[float]]:
    return [[g["lr"], g["base_lr"], g["weight_decay"]] for g in optimizer.param_groups]


def test_groups_from_prefixes_decays_and_the_1d_rule():
    method = TinyMethod()
    set_trainable(method, STAGE)
    groups = param_groups(method, STAGE)
    names = {id(p): n for n, p in method.named_parameters()}
    got = {tuple(sorted(names[id(p)] for p in g["params"])): (g["lr"], g["base_lr"], g["weight_decay"])
           for g in groups}
    assert got == {
        ("backbone.proj.weight",): (1e-3, 1e-3, 5e-4),
        ("backbone.norm.bias", "backbone.norm.weight", "backbone.proj.bias", "scale"): (1e-3, 1e-3, 0.0),
        ("backbone.extra",): (5e-4, 5e-4, 1e-2),
        ("head.weight",): (1e-2, 1e-2, 5e-4),
        ("head.bias",): (1e-2, 1e-2, 0.0),
    }


def test_two_tuple_entries_keep_the_stage_decay_and_frozen_parameters_stay_out():
    stage = Stage(name="s", epochs=1, lr=0.1, trainable=("head.",), weight_decay=1e-4, param_groups=(("head.", 3.0),))
    method = TinyMethod()
    set_trainable(method, stage)
    groups = param_groups(method, stage)
    assert [(len(g["params"]), g["lr"], g["weight_decay"]) for g in groups] == [(2, pytest.approx(0.3), 1e-4)]


@pytest.mark.parametrize("entry", [("head.",), ("head.", -1.0), ("head.", 2.0, float("nan")), (3, 1.0)])
def test_bad_group_entry_is_refused_naming_it(entry):
    stage = Stage(name="s", epochs=1, lr=0.1, param_groups=(entry,))
    with pytest.raises(ValueError, match=r"stage 's': param_groups entry"):
        param_groups(TinyMethod(), stage)


def test_set_lr_scales_every_group_from_its_own_base():
    method = TinyMethod()
    optimizer = build_optimizer(method, STAGE)
    factor = lr_factor(STAGE, 1, STAGE.epochs)
    set_lr(optimizer, factor)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(
        [g["base_lr"] * factor for g in optimizer.param_groups])
    assert len({g["lr"] for g in optimizer.param_groups}) == 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _strategy_worker(rank: int, port: int, out: str) -> None:
    """One of two gloo ranks: for DDP and DeepSpeed ZeRO 1/2/3 built by the harness's own
    ``wrap_for_training``, record each group's settings after ``set_lr`` and one step at
    every epoch of ``EPOCHS``."""
    import torch.distributed as dist

    from reidbench.harness.trainer import WorkerEnv, wrap_for_training

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    env = WorkerEnv(rank=rank, world_size=2)
    results = {}
    runs = [("ddp", ["dist.strategy=ddp"])] + [
        (f"zero{z}", ["dist.strategy=deepspeed", f"dist.zero_stage={z}", "dist.zero3_persistence=0"]) for z in (1, 2, 3)]
    for name, overrides in runs:
        cfg = build_run_config(overrides=["dist.workers=2", "data.p=2", "data.k=4", "optim.amp=false",
                                          *overrides])
        method = TinyMethod()
        set_trainable(method, STAGE)
        module, optimizer, engine = wrap_for_training(method, STAGE, cfg, env)
        settings = []
        for epoch in EPOCHS:
            set_lr(optimizer, lr_factor(STAGE, epoch, STAGE.epochs))
            loss = module(batch(), STAGE)["id"]
            if engine is not None:
                engine.backward(loss)
                engine.step()
            else:
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
            settings.append(group_settings(optimizer))
        results[name] = settings
        if engine is not None:
            engine.destroy()
    if rank == 0:
        with open(out, "w") as f:
            json.dump(results, f)
    dist.destroy_process_group()


@pytest.mark.slow
def test_plain_ddp_and_deepspeed_hold_the_same_groups_at_every_epoch(tmp_path):
    """Two gloo ranks on CPU run the harness's own DDP and DeepSpeed (ZeRO 1, 2, 3) wrapping;
    after ``set_lr`` and a step at two warm-up epochs, every strategy's optimizer has the
    plain optimizer's groups: the same lr, base lr and weight decay, in the same order."""
    method = TinyMethod()
    set_trainable(method, STAGE)
    optimizer = build_optimizer(method, STAGE)
    expected = []
    for epoch in EPOCHS:
        set_lr(optimizer, lr_factor(STAGE, epoch, STAGE.epochs))
        expected.append(group_settings(optimizer))
    assert expected[0] != expected[1] and len(expected[0]) == 5

    out = tmp_path / "groups.json"
    mp.start_processes(_strategy_worker, args=(_free_port(), str(out)), nprocs=2, start_method="spawn")
    got = json.loads(out.read_text())
    assert set(got) == {"ddp", "zero1", "zero2", "zero3"}
    for name, settings in got.items():
        assert [len(epoch) for epoch in settings] == [5, 5], name
        assert flat(settings) == pytest.approx(flat(expected)), name


def flat(settings: list[list[list[float]]]) -> list[float]:
    return [v for epoch in settings for group in epoch for v in group]
