"""What defines a pretrained tiny CLIP, and the ``reidbench pretrain`` arguments.

Kept free of torch so that building the CLI parser (``reidbench --help``) does not
import it; the pretraining itself is :mod:`reidbench.backbones.pretrain`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class PretrainConfig:
    """What defines a pretrained tiny CLIP (every field is in the cache key)."""

    preset: str = "tiny"
    n_images: int = 20000
    seed: int = 0
    image_size: tuple[int, int] = (128, 64)
    batch_size: int = 32
    steps: int | None = 2000  # optimizer steps (see results/pretrain_quality.txt for the time on 2 idle CPU cores) ...
    minutes: float | None = None  # ... or a wall-clock training budget (exactly one of the two)
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_fraction: float = 0.05
    hflip: bool = True
    dedupe_captions: bool = True
    short_caption_fraction: float = 0.5  # share of draws that are short attribute phrases (0: the generator's only)
    attribute_anchor_weight: float = 25.0  # attribute anchors shared by both towers (0: plain CLIP loss)
    # Rendering difficulty of the pretraining and held-out images: the embedded default's
    # (reidbench.datasets.synthetic_sets.DEFAULT_DIFFICULTY), i.e. the images the methods see.
    difficulty: float = 0.0
    heldout_images: int = 1000  # evaluation images from another seed (other identities)
    heldout_seed: int = 100_003

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.minutes is None):
            raise ValueError(f"PretrainConfig needs exactly one budget, steps or minutes (got steps={self.steps}, "
                             f"minutes={self.minutes})")
        if self.steps is not None and self.steps <= 0:
            raise ValueError(f"steps must be positive, got {self.steps}")
        if self.minutes is not None and self.minutes <= 0:
            raise ValueError(f"minutes must be positive, got {self.minutes}")
        if not 0.0 <= self.short_caption_fraction <= 1.0:
            raise ValueError(f"short_caption_fraction must be in [0, 1], got {self.short_caption_fraction}")
        if self.attribute_anchor_weight < 0:
            raise ValueError(f"attribute_anchor_weight must be >= 0, got {self.attribute_anchor_weight}")
        if self.attribute_anchor_weight > 0 and self.short_caption_fraction == 0:
            raise ValueError("attribute_anchor_weight > 0 needs short_caption_fraction > 0 (anchors classify short captions)")
        if not 0.0 <= self.difficulty <= 1.0:
            raise ValueError(f"difficulty must be in [0, 1], got {self.difficulty}")
        if self.batch_size < 2 or self.n_images < self.batch_size:
            raise ValueError(f"need 2 <= batch_size <= n_images, got batch_size={self.batch_size}, n_images={self.n_images}")

    def budget(self) -> str:
        return f"{self.minutes:g} min" if self.minutes is not None else f"{self.steps} steps"


def add_pretrain_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    defaults = PretrainConfig()
    parser.add_argument("--preset", default="tiny", choices=["tiny"],
                        help="which CLIP to pretrain (synthetic pretraining exists for 'tiny')")
    parser.add_argument("--force", action="store_true", help="pretrain again even if the cache holds this config")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=None,
                        help=f"optimizer steps (default {defaults.steps}, about 8 minutes of first use on 2 idle CPU cores)")
    budget.add_argument("--minutes", type=float, default=None,
                        help="a wall-clock training budget instead of --steps (faster machines then train longer)")
    parser.add_argument("--images", type=int, default=defaults.n_images, help="synthetic image-caption pairs")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--cache-dir", default=None, help="cache root (default $REIDBENCH_CACHE or ~/.cache/reidbench)")
    return parser


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    return PretrainConfig(
        preset=args.preset,
        n_images=args.images,
        seed=args.seed,
        batch_size=args.batch_size,
        steps=None if args.minutes is not None else (args.steps if args.steps is not None else PretrainConfig.steps),
        minutes=args.minutes,
    )
