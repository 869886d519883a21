"""The run configuration: what ``reidbench train`` reads from YAML and ``key=value`` overrides.

``params`` holds the method's own hyperparameters and ablation switches; they are
validated against the method's config dataclass (a misspelt key names the closest
one), after the method's preset values, so ``params.n_ctx=8`` overrides a preset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from ..config import ConfigError, flatten, from_dict, load_config, merge, nest, parse_overrides, read_yaml, to_dict
from ..datasets.synthetic_sets import DEFAULT_DIFFICULTY

# Names that become folders and MLflow tags (method, dataset, tracking.ablation / experiment /
# sweep): letters, digits, spaces and _ - . , = + @ % : [ ] ( ), not starting with a dot or a
# space (so never "." or ".."), at most 200 characters. Quotes, slashes and backslashes are
# refused: a name must not leave --output-dir or break an MLflow filter.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_\-,=+@%:\[\]()][A-Za-z0-9_\-.,=+@%:\[\]() ]{0,199}")
NAME_RULE = ("letters, digits, spaces and _ - . , = + @ % : [ ] ( ), not starting with '.' or a space, "
             "at most 200 characters")


def check_name(key: str, value: str, allow_empty: bool = False) -> None:
    """Refuse a name that could leave its folder or break an MLflow filter (see NAME_PATTERN)."""
    if allow_empty and value == "":
        return
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value) or value.endswith(" "):
        raise ConfigError(f"config key {key!r}: {value!r} is not a valid name; names become folders under "
                          f"--output-dir and MLflow tags, so they may use only {NAME_RULE}")


@dataclass
class SyntheticConfig:
    """How the ``synthetic_*`` benchmarks are generated when no ``data.root`` is given
    (each setting is its own cached copy)."""

    ids: int = 150
    seed: int = 0
    mask_noise: float = 0.0  # 0 = exact part masks; the ProFD robustness sweep raises it
    difficulty: float = DEFAULT_DIFFICULTY  # 0 .. 1 nuisance factors (see synthetic_sets.DEFAULT_DIFFICULTY)


@dataclass
class DataConfig:
    dataset: str = "synthetic_market"
    root: str | None = None  # None: the synthetic benchmark, generated and cached on first use
    image_size: tuple[int, int] | None = None  # None: the backbone preset's input size
    p: int = 16  # identities per batch
    k: int = 4  # images per identity
    num_workers: int | None = None  # DataLoader workers; None: trainer.loader_workers decides
    eval_batch_size: int = 128
    # > 0: validate on the official val split where the dataset has one, else hold out this
    # fraction of the training identities; 0: no validation, keep the last epoch (validation.py)
    val_fraction: float = 0.1
    # Texts files merged over the dataset's own texts, "a.jsonl" or "a.jsonl,b.jsonl" (later win;
    # reidbench.datasets.texts has the schema and merge rule). The dataset folder is never written.
    texts: str | None = None
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    # Augmentation and normalisation (datasets/transforms.py). A method's DATA_RECIPE sets its
    # paper's values under the user's: CLIP-ReID's mean = std = 0.5, ProFD's and SCING's crop_p 0.5.
    crop_p: float = 1.0  # probability of pad-10 + random crop
    pixel_mean: tuple[float, float, float] | None = None  # None: the backbone's (what its weights expect)
    pixel_std: tuple[float, float, float] | None = None
    eval_interpolation: Literal["bilinear", "bicubic"] = "bilinear"  # test-time resize (CLIP-ReID's: bilinear)

    def __post_init__(self) -> None:
        if not 0.0 <= self.crop_p <= 1.0:
            raise ValueError(f"data.crop_p must be a probability in [0, 1], got {self.crop_p}")
        if (self.pixel_mean is None) != (self.pixel_std is None):
            raise ValueError("data.pixel_mean and data.pixel_std go together: set both, or both to null for the "
                             f"backbone's own statistics (got pixel_mean={self.pixel_mean}, pixel_std={self.pixel_std})")
        if self.pixel_std is not None and min(self.pixel_std) <= 0:
            raise ValueError(f"data.pixel_std must be positive, got {self.pixel_std}")
        for key in ("p", "k", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'data.{key}': expected a positive integer, got {getattr(self, key)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"config key 'data.val_fraction': expected a fraction in [0, 1), got {self.val_fraction}")


@dataclass
class BackboneConfig:
    kind: str = "clip"  # a registered backbone kind (reidbench.backbones.list_backbones())
    preset: str = "tiny"
    pretrained: str | None = "synthetic"  # None: random init; "synthetic": cached tiny CLIP; else a local HF dir
    sie: bool = False  # CLIP-ReID's side-information (camera) embedding


@dataclass
class OptimConfig:
    # bf16 autocast; None: on with CUDA (2.3-2.5x the fp32 steps at vit-b16 on an H100), off on
    # CPU (where it made steps 3-7x slower).
    amp: bool | None = None
    # torch.compile of the training step (README, Performance): "reduce-overhead" (CUDA graphs)
    # doubled eager bf16 vit-b16 steps on an H100; 40-90 s to compile per stage. Not under DeepSpeed.
    compile: Literal["eager", "default", "reduce-overhead", "max-autotune"] = "eager"
    grad_accum: int = 1
    grad_clip: float | None = None
    epochs_scale: float = 1.0  # multiply every stage's epochs, warmup and lr milestones (see trainer.scale_schedule)

    def __post_init__(self) -> None:
        if not self.epochs_scale > 0:
            raise ConfigError(f"config key 'optim.epochs_scale': expected a number > 0 (the fraction of each stage's "
                              f"epochs to train), got {self.epochs_scale}")
        if self.grad_accum < 1:
            raise ConfigError(f"config key 'optim.grad_accum': expected an integer >= 1, got {self.grad_accum}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"config key 'optim.grad_clip': expected a number > 0 or null, got {self.grad_clip}")


@dataclass
class DistConfig:
    workers: int = 1
    strategy: Literal["ddp", "deepspeed"] = "ddp"
    zero_stage: Literal[1, 2, 3] = 2
    # ZeRO-3: parameters of at most this many elements stay whole on every rank instead of being
    # partitioned (DeepSpeed's stage3_param_persistence_threshold; 0-d ones always stay whole).
    zero3_persistence: int = 100_000
    # None: CUDA where there is one (an in-process run: this process sees a device; a Ray
    # worker group: the Ray cluster has GPUs). true without a device is an error.
    use_gpu: bool | None = None

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"config key 'dist.workers' (--workers): expected an integer >= 1, got {self.workers}")
        if self.zero3_persistence < 0:
            raise ValueError(f"dist.zero3_persistence must be >= 0 (elements), got {self.zero3_persistence}")


@dataclass
class TrackingConfig:
    tracking_uri: str | None = None  # None: sqlite:///<output_dir>/mlflow.db
    experiment: str = "reidbench-default"
    sweep: str = ""
    ablation: str = "default"

    def __post_init__(self) -> None:
        check_name("tracking.experiment", self.experiment)
        check_name("tracking.ablation", self.ablation)
        check_name("tracking.sweep", self.sweep, allow_empty=True)


@dataclass
class EvalConfig:
    """Test-time options of the final test evaluation (model selection on the
    validation split always uses plain features and distances)."""

    flip: bool = False  # average each image's embedding with its mirror's (evaluate.flip_average)
    rerank: bool = False  # k-reciprocal re-ranking (rerank.k_reciprocal_rerank) of image-to-image protocols
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    # Test mAP/R1 over this many equal-count bins of the queries' visible body fraction, on
    # benchmarks that record it (the synthetic ones); 0: none (evaluate.visibility_curve).
    visibility_bins: int = 4


@dataclass
class RunConfig:
    method: str = "clip_reid"
    preset: Literal["tiny", "paper"] = "tiny"
    seed: int = 0
    output_dir: str = "runs"
    params: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        check_name("method", self.method)
        check_name("data.dataset", self.data.dataset)
        if self.seed < 0:
            raise ConfigError(f"config key 'seed': expected an integer >= 0, got {self.seed}")
        if not str(self.output_dir).strip():
            raise ConfigError("config key 'output_dir' (--output-dir): expected a folder, got an empty string")
        if self.data.p % self.dist.workers:
            raise ConfigError(f"data.p={self.data.p} identities per batch must divide evenly over {self.dist.workers} "
                              f"workers (--workers / dist.workers): each rank takes data.p / workers identities; "
                              f"use a data.p that is a multiple of {self.dist.workers}")

    @property
    def run_name(self) -> str:
        """``method/ablation/dataset/seed`` (docs/design.md, "Tracking conventions")."""
        return f"{self.method}/{self.tracking.ablation}/{self.data.dataset}/{self.seed}"


# Run-level presets: the harness part of a preset (backbone, input, batch). The
# method part (epochs, lrs) comes from the method module's ``PRESETS``, its data recipe
# (augmentation, normalisation) from its ``DATA_RECIPE``. ``paper`` keeps the last epoch
# (data.val_fraction=0): the papers train on every identity and report the last epoch.
RUN_PRESETS: dict[str, dict] = {
    "tiny": {"backbone": {"preset": "tiny", "pretrained": "synthetic"}, "data": {"p": 8, "k": 4}},
    "paper": {"backbone": {"preset": "vit-b16", "pretrained": None}, "data": {"p": 16, "k": 4, "val_fraction": 0.0}},
}

PAPER_NEEDS_WEIGHTS = (
    "--preset paper builds CLIP ViT-B/16 and the papers fine-tune OpenAI's pretrained weights, but "
    "backbone.pretrained is not set: pass backbone.pretrained=DIR (a local Hugging Face CLIP folder; README, "
    "Using it, says how to write one), or backbone.pretrained=null to train from random weights on purpose"
)


def build_run_config(files=(), overrides=(), base: dict | None = None, values: dict | None = None) -> RunConfig:
    """YAML files, then ``values`` (typed, by dotted key: command-line flags, never parsed as
    YAML), then ``key=value`` overrides, on top of the preset they name (``preset=paper``) and
    the method's ``DATA_RECIPE``. ``preset=paper`` without ``backbone.pretrained`` in any of
    them is refused (:data:`PAPER_NEEDS_WEIGHTS`); an explicit ``backbone.pretrained=null``
    asks for random weights."""
    probe = load_config(RunConfig, files, overrides, base, values)
    given = merge(dict(base or {}), _user_values(files, overrides, values))
    if probe.preset == "paper" and "pretrained" not in (given.get("backbone") or {}):
        raise ConfigError(PAPER_NEEDS_WEIGHTS)
    preset_values = merge(RUN_PRESETS[probe.preset], {"data": method_data_recipe(probe.method)})
    return load_config(RunConfig, files, overrides, merge(preset_values, base or {}), values)


def _user_values(files, overrides, values: dict | None = None) -> dict:
    data: dict = {}
    for f in files:
        data = merge(data, read_yaml(f))
    return merge(merge(data, nest(values or {})), parse_overrides(overrides))


def method_data_recipe(method: str) -> dict:
    """``data.*`` values of ``method``'s paper recipe (its class's ``DATA_RECIPE``); none for
    an unregistered name, which the run refuses later with the list of methods."""
    from ..methods import get_method

    try:
        cls = get_method(method)
    except (KeyError, ValueError):
        return {}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in getattr(cls, "DATA_RECIPE", {}).items()}


def method_config(cfg: RunConfig) -> Any:
    """The method's typed config: its preset values, then ``cfg.params``."""
    from ..methods import get_method

    cls = get_method(cfg.method)
    presets = getattr(cls, "PRESETS", {})
    values = merge(presets.get(cfg.preset, {}), cfg.params)
    resolved = from_dict(cls.config_cls, values, prefix="params.")
    # Epoch counts are generic enough to check here: a negative one would train nothing (or one
    # epoch after scaling) and still end FINISHED.
    for key, value in flatten(to_dict(resolved)).items():
        if key.split(".")[-1].endswith("epochs") and isinstance(value, (int, float)) and not isinstance(value, bool) \
                and value < 0:
            raise ConfigError(f"config key 'params.{key}': expected a number of epochs >= 0, got {value}")
    return resolved


def resolved_dict(cfg: RunConfig) -> dict:
    """The whole run config with the method's params fully resolved (what is logged and checkpointed)."""
    out = to_dict(cfg)
    out["params"] = to_dict(method_config(cfg))
    return out
