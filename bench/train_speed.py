"""Training-step throughput of every image method, on whatever device is there.

    python3 bench/train_speed.py                       # vit-b16, 256x128, P16 x K4, paper presets
    python3 bench/train_speed.py --preset tiny --p 8   # the CPU-sized model
    python3 bench/train_speed.py --methods profd --amp on --steps 30

Each method is built with random weights (``build_clip(preset, pretrained=None)``)
and its ``paper`` (or ``--method-preset``) config, 702 identities (Occluded-Duke).
Every stage the method defines is timed on its own: ``begin_stage`` runs first over
a virtual training split, K images of every identity (CLIP-ReID caches image and text
features, ProFD fills its memory banks), then ``--warmup`` untimed and ``--steps`` timed optimizer steps through the
harness's own step (``trainer._StepModule``, the stage's optimizer and trainable
set, bf16 autocast when AMP is on). Batches are random images, identities drawn
P x K, random part masks and parsing maps, so data loading is not counted: the
figures are the model's ceiling, not a run's. Columns: milliseconds per step,
images per second, peak device memory (CUDA) and the step's losses, finite or not.

``sync`` compares reading the losses back every step (``float(loss)``, one host
sync per term, as ``trainer.run_epoch`` does) with not reading them at all: the
difference is what per-step logging costs on an accelerator (on an H100 it was
within run-to-run noise, a few percent).
"""

from __future__ import annotations

import argparse
import math
import time

from reidbench.methods import TEXT_KINDS, DataSpec
import torch


def batch_of(indices: torch.Tensor, per_id: int, image_size: tuple[int, int], device: torch.device,
             generator: torch.Generator) -> dict:
    """A batch of the virtual training split where image ``i`` shows identity ``i // per_id``."""
    from reidbench.datasets.transforms import NUM_PARTS, part_visibility

    n = len(indices)
    h, w = image_size
    pids = indices // per_id
    mask = torch.randint(0, NUM_PARTS + 1, (n, h, w), generator=generator)
    batch = {
        "image": torch.randn(n, 3, h, w, generator=generator),
        "pid": pids,
        "camid": indices % 6,
        "clothes_id": pids.clone(),
        "index": indices,
        "mask": mask,
        "parsing": torch.randint(0, 20, (n, h, w), generator=generator),
        "visible": part_visibility(mask),
        "has_mask": torch.ones(n, dtype=torch.bool),
        "has_parsing": torch.ones(n, dtype=torch.bool),
        # Every text kind a method may require (the loaders carry only the required ones).
        **{kind: [f"{kind.replace('_', ' ')}: a person in a red shirt and blue trousers"] * n for kind in TEXT_KINDS},
    }
    return {key: v.to(device) if isinstance(v, torch.Tensor) else v for key, v in batch.items()}


def time_stage(method, stage, batches: list[dict], clean: list[dict], steps: int, warmup: int, amp: bool,
               sync: bool, device: torch.device) -> tuple[float, dict[str, float]]:
    from reidbench.harness.optim import build_optimizer, set_trainable
    from reidbench.harness.trainer import _StepModule

    set_trainable(method, stage)
    method.begin_stage(stage, lambda: iter(clean))
    module = _StepModule(method).train()
    optimizer = build_optimizer(method, stage)
    losses: dict[str, float] = {}

    def step(batch: dict) -> dict[str, torch.Tensor]:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            terms = module(batch, stage)
        loss = sum(terms.values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if sync:
            for name, value in terms.items():
                losses[name] = float(value.detach())
        return terms

    for i in range(warmup):
        step(batches[i % len(batches)])
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(steps):
        terms = step(batches[i % len(batches)])
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / steps
    if not sync:
        losses = {name: float(value.detach()) for name, value in terms.items()}
    return seconds, losses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="baseline,clip_reid,profd,scing")
    parser.add_argument("--preset", default="vit-b16", help="backbone preset (vit-b16, tiny, ...)")
    parser.add_argument("--method-preset", default="paper", help="the methods' config preset")
    parser.add_argument("--classes", type=int, default=702)
    parser.add_argument("--p", type=int, default=16)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--amp", choices=["on", "off", "both"], default="both")
    parser.add_argument("--sync", choices=["on", "off", "both"], default="on")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    from reidbench.backbones import build_clip
    from reidbench.config import from_dict
    from reidbench.methods import get_method

    device = torch.device(args.device)
    image_size = (args.height, args.width)
    choices = {"on": [True], "off": [False], "both": [False, True]}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"{name}; backbone {args.preset} at {args.height}x{args.width}, P{args.p} x K{args.k} = "
          f"{args.p * args.k} images a step, {args.classes} identities, random weights; torch {torch.__version__}")
    header = f"{'method':<10} {'stage':<14} {'amp':<4} {'sync':<4} {'ms/step':>8} {'img/s':>8} {'peak GiB':>8}  losses"
    print(header)
    print("-" * len(header))
    generator = torch.Generator().manual_seed(0)
    per_id = args.k
    batches = []  # P identities x K images, as the PK sampler draws them
    for _ in range(4):
        pids = torch.randperm(args.classes, generator=generator)[:args.p]
        batches.append(batch_of((pids[:, None] * per_id + torch.arange(args.k)).flatten(), per_id, image_size, device,
                                generator))
    # begin_stage's one clean pass over the whole virtual split (CLIP-ReID caches every
    # image's features and every identity's text features, ProFD fills its banks).
    per_batch = args.p * args.k
    everything = torch.arange(args.classes * per_id)
    clean = [batch_of(chunk, per_id, image_size, device, generator) for chunk in everything.split(per_batch)]
    failures = 0
    for method_name in args.methods.split(","):
        cls = get_method(method_name)
        config = from_dict(cls.config_cls, cls.PRESETS.get(args.method_preset, {}))
        torch.manual_seed(0)
        backbone = build_clip(args.preset, pretrained=None, image_size=image_size)
        method = cls(config, backbone, DataSpec(args.classes, 6)).to(device)
        for stage in method.stages():
            for amp in choices[args.amp]:
                for sync in choices[args.sync]:
                    seconds, losses = time_stage(method, stage, batches, clean, args.steps, args.warmup, amp, sync,
                                                 device)
                    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
                    finite = all(math.isfinite(v) for v in losses.values())
                    failures += not finite
                    shown = ", ".join(f"{k} {v:.3g}" for k, v in losses.items())
                    on_off = f"{'on' if amp else 'off':<4} {'on' if sync else 'off':<4}"
                    print(f"{method_name:<10} {stage.name:<14} {on_off} {seconds * 1e3:>8.1f} "
                          f"{per_batch / seconds:>8.0f} {peak:>8.2f}  "
                          f"{'' if finite else 'NON-FINITE '}{shown}", flush=True)
        del method, backbone
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
