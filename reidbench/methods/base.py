"""The method interface (docs/design.md, "Contracts") and the method registry.

A method is a ``torch.nn.Module`` with a typed config dataclass. It never opens
files, parses configs, logs or talks to Ray: the harness hands it a backbone,
batches and stages, and reads back named loss terms and embeddings.

Batch dict keys the harness provides (tensors unless noted):
  image [B,3,H,W] float, normalised; pid [B] long (train: 0..N-1); camid [B] long;
  clothes_id [B] long (-1 unknown); index [B] long (position in the split);
  mask [B,H,W] long part labels 0..5 (0 background) when the dataset has masks;
  parsing [B,H,W] long LIP labels when present; visible [B,5] bool part visibility;
  has_mask, has_parsing [B] bool (False: that sample's map is zeros because the
  dataset has none, not because every part is occluded);
  in training batches and the ``begin_stage`` pass only: one ``list[str]`` per text
  kind the method requires (``batch["caption"]``, ``batch["id_description"]``,
  ``batch["clothes_description"]``; see ``TEXT_KINDS``), one variant per sample,
  picked per draw (``reidbench/datasets/loader.py``). Test and validation image
  batches carry no text.
``embed_text`` gets text-to-image query batches: ``caption: list[str]`` (one query
each), pid, camid, index.
Label maps (mask, parsing, visible) are read only for methods that require
``mask`` or ``parsing``; for the others they are zeros with ``has_mask`` False
(reading and augmenting them cost a third of the loader's time).

What a method needs from the data is declared once, in ``requires`` (names from
``REQUIREMENTS``); the harness checks the training split has it before step 1.

``training_step`` returns named loss terms, summed with the stage's weights. Values
to log without adding them to the loss (learned loss weights, gate means) go in a
nested dict under the key ``LOGGED``; they must be detached or are detached.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..datasets.records import TEXT_KINDS  # defined beside Sample, which carries the texts


REQUIREMENTS = ("mask", "parsing", "clothes_id", *TEXT_KINDS)
LOGGED = "logged"  # training_step key whose dict of values is logged, never summed into the loss


@dataclass(frozen=True)
class DataSpec:
    """What a method is built with, read from the training split after the
    validation identities are held out: identities (``num_classes``, pids 0..N-1),
    cameras (camids 0..C-1), clothes ids (relabelled 0..K-1 like pids; 0 when the
    dataset has none) and the dataset's task (``image`` or ``text``)."""

    num_classes: int
    num_cameras: int = 0
    num_clothes: int = 0
    task: str = "image"


@dataclass(frozen=True)
class Stage:
    """One training stage. The harness runs a method's stages in order and
    checkpoints between them.

    ``trainable`` lists parameter-name prefixes (of the method module) that train in
    this stage; every other parameter is frozen. ``("",)`` trains everything.
    ``param_groups`` maps a prefix to an lr multiplier, and optionally a weight decay of
    its own: ``(prefix, lr_mult)`` or ``(prefix, lr_mult, weight_decay)`` (e.g. new
    modules at 10x); the first matching prefix wins, the rest train at ``lr`` with
    ``weight_decay``. ``no_decay_1d`` exempts every parameter with at most one dimension
    (biases, norm scales, CLIP's logit scale) from weight decay, as CLIP and timm do.
    The harness turns these into the same optimizer groups for a single process, DDP
    and DeepSpeed (``harness.optim.param_groups``).
    """

    name: str
    epochs: int
    lr: float
    trainable: tuple[str, ...] = ("",)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "steps", "constant"] = "cosine"
    warmup_epochs: int = 0
    warmup_factor: float = 0.1
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    param_groups: tuple[tuple[str, float] | tuple[str, float, float], ...] = ()
    no_decay_1d: bool = False
    loss_weights: tuple[tuple[str, float], ...] = ()  # weight per loss-term name; unnamed terms weigh 1
    batches_per_epoch: int | None = None  # None: one pass of the sampler
    # Epochs the lr schedule runs ahead of the 0-based epoch counter: 1 is a scheduler stepped at the
    # start of each epoch (CLIP-ReID's WarmupMultiStepLR and its stage-1 cosine), whose epoch e trains at
    # the schedule's value for e + 1, so warm-up ends and milestones land one epoch earlier.
    schedule_offset: int = 0


class Method(nn.Module):
    """Base class; subclasses set ``name`` and ``config_cls`` and register with ``@register_method``."""

    name: ClassVar[str] = ""
    config_cls: ClassVar[type] = object
    tasks: ClassVar[tuple[str, ...]] = ("image",)  # dataset tasks it handles: "image" and/or "text"
    requires: ClassVar[tuple[str, ...]] = ()  # what it reads from the data, names from REQUIREMENTS
    PRESETS: ClassVar[dict[str, dict]] = {}  # preset name -> config overrides ("tiny" for CPU; "paper")
    # Run-config ``data.*`` values of the paper's data recipe (augmentation, pixel normalisation),
    # e.g. {"crop_p": 0.5}; every preset starts from them and the user's values win.
    DATA_RECIPE: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: Any, backbone: nn.Module, spec: DataSpec) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.spec = spec

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def num_cameras(self) -> int:
        return self.spec.num_cameras

    @classmethod
    def reads_label_maps(cls) -> bool:
        """Whether the loader must read part masks / parsing maps for this method."""
        return bool({"mask", "parsing"} & set(cls.requires))

    # -- training --------------------------------------------------------
    def stages(self) -> list[Stage]:
        raise NotImplementedError(f"{type(self).__name__} must define stages()")

    def begin_stage(self, stage: Stage, train_batches: Callable[[], Iterable[dict]]) -> None:
        """Hook before a stage starts. ``train_batches()`` iterates the training split
        once without augmentation (eval transforms), for methods that precompute
        features (CLIP-ReID caches image features for stage 1 and identity text
        features for stage 2). Whether to run in eval mode / under ``torch.no_grad``
        is the method's choice."""

    def training_step(self, batch: dict, stage: Stage) -> dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must define training_step()")

    # -- inference -------------------------------------------------------
    def eval_text_kinds(self) -> tuple[str, ...]:
        """Text kinds (from ``TEXT_KINDS``) this method reads from *image* batches at
        evaluation: texts a deployment has for every gallery image (e.g. BDAM's identity
        descriptions, generated offline). Default none: a method must not read annotation
        at test time that it does not declare here. The harness checks the evaluated
        image splits carry them before training, and its evaluation loaders then yield
        ``batch[kind]`` for exactly these kinds. An instance method: it may depend on the
        config."""
        return ()

    def embed_image(self, batch: dict) -> torch.Tensor | dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must define embed_image()")

    def embed_text(self, batch: dict) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no text embedding")

    def distance(self, query: Any, gallery: Any) -> torch.Tensor:
        """Query x gallery distances, smaller is closer. Default: cosine distance."""
        return 1.0 - F.normalize(query, dim=-1) @ F.normalize(gallery, dim=-1).T


_METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _METHODS:
        raise ValueError(f"method {cls.name!r} registered twice")
    if not dataclasses.is_dataclass(cls.config_cls):
        raise TypeError(f"method {cls.name!r}: config_cls must be a dataclass")
    unknown = sorted(set(cls.requires) - set(REQUIREMENTS))
    if unknown:
        raise ValueError(f"method {cls.name!r} requires unknown data {unknown}; known: {', '.join(REQUIREMENTS)}")
    _METHODS[cls.name] = cls
    return cls


def list_methods(pattern: str = "*") -> list[str]:
    _load_methods()
    return sorted(n for n in _METHODS if fnmatch.fnmatch(n, pattern))


def get_method(name: str) -> type[Method]:
    _load_methods()
    if name not in _METHODS:
        close = difflib.get_close_matches(name, _METHODS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown method {name!r}{hint} Known: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def _load_methods() -> None:
    from . import zoo  # noqa: F401  (importing registers every method)


__all__ = ["LOGGED", "REQUIREMENTS", "TEXT_KINDS", "DataSpec", "Method", "Stage", "get_method", "list_methods",
           "register_method"]
