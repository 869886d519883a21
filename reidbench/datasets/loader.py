"""Datasets, collation and DataLoaders that turn :class:`Sample` records into the batch
dicts documented in ``reidbench/methods/base.py``.

Batch keys (image loaders): ``image [B,3,H,W] float`` (normalised), ``pid``, ``camid``,
``clothes_id`` (-1 when unknown), ``index`` (position in the split) ``[B] long``;
``mask [B,H,W] long`` part labels 0..5 and ``parsing [B,H,W] long`` LIP labels (zeros
where the dataset has none); ``visible [B,5] bool`` (part k+1 has at least one pixel
after augmentation). Two extra keys say whether the zeros are real: ``has_mask [B] bool``,
``has_parsing [B] bool`` (a method must not read "no mask on disk" as "every part
occluded"). Texts: a loader built with ``text_kinds`` (the training loader and the
``begin_stage`` pass over the training split, given the text kinds the method requires)
adds ``batch[kind]: list[str]`` for each of those kinds (``caption``, ``id_description``,
``clothes_description``) and no other text; a sample without a variant of a requested
kind is an error when the loader is built, never an empty string. Test and validation
image loaders carry no text: a method must not read captions at test time.
Text loader keys (text-to-image queries): ``caption: list[str]``, ``pid``, ``camid``,
``index`` ``[B] long``.

Determinism. Each draw of the training sampler carries a key ``(index, epoch, draw)``
(``draw`` = its position in the epoch's global plan), and the dataset seeds torch's
default generator from ``(seed, epoch, draw, index)`` for that one sample inside
``torch.random.fork_rng`` (the caller's RNG state is restored). Augmentation is
therefore a pure function of (seed, epoch), whatever ``num_workers`` is and whichever
worker gets the sample, and an index drawn twice in an epoch (K-sampling with
replacement) gets two different augmentations. The epoch travels inside the key, so
persistent workers never see a stale epoch. Texts follow the same rule: when a sample
has several variants of a kind (all styles pooled, each equally likely), the one a draw
gets is picked from ``(seed, epoch, draw, index, kind)``, so the K draws of one image in
an epoch can read different descriptions, and a rerun reads the same ones. Plain
integer keys (the ``begin_stage`` pass) use ``draw = index``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from .records import TEXT_KINDS, Sample
from .sampler import PKSampler
from .transforms import (
    CLIP_MEAN,
    CLIP_STD,
    NUM_PARTS,
    ParsingMap,
    build_eval_transform,
    build_train_transform,
    part_visibility,
)

__all__ = [
    "DrawKey",
    "ReidImageDataset",
    "ReidTextDataset",
    "TrainLoader",
    "build_eval_loader",
    "build_text_loader",
    "build_train_loader",
    "collate_reid",
]

NUM_LIP_CLASSES = 20
_TEXT_STREAM = 0x54455854  # keeps text choice independent of augmentation seeds
_AUGMENT_STREAM = 0x41554721


class DrawKey(NamedTuple):
    """What the training batch sampler hands the dataset for one draw."""

    index: int
    epoch: int
    draw: int


def _seed_from(*values: int) -> int:
    state = np.random.SeedSequence([int(v) for v in values]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _read_label_map(path: str, size_wh: tuple[int, int], max_label: int, what: str) -> torch.Tensor:
    """A uint8 ``[H,W]`` label map at the image's size (nearest resize if it differs)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(f"{what} {path}: expected a single-channel label PNG, got PIL mode {im.mode!r}")
            if im.size != size_wh:
                im = im.resize(size_wh, Image.NEAREST)
            arr = np.asarray(im)
    except OSError as err:
        raise OSError(f"cannot read {what} {path}: {err}") from err
    top = int(arr.max()) if arr.size else 0
    if top > max_label:
        raise ValueError(f"{what} {path}: labels must be 0..{max_label}, found {top}")
    return torch.from_numpy(arr.astype(np.uint8))


@contextmanager
def _one_thread():
    """Per-sample ops on one small image are slower when torch splits them over its
    intra-op pool (measured here: a 3x128x64 pad took 0.5 ms on 2 threads vs 0.01 ms
    on 1, worse on a loaded machine). DataLoader workers already run on one thread;
    this covers ``num_workers=0``, where the main process's pool size is borrowed for
    the duration of one sample and restored."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class ReidImageDataset(Dataset):
    """Images (plus part masks and parsing maps when the samples point at them) as dicts.

    ``transform``: a ``torchvision.transforms.v2`` callable taking and returning a dict
    ``{"image": tv_tensors.Image uint8, "mask": Mask, "parsing": ParsingMap}`` (label keys
    only when present), e.g. :func:`build_train_transform`. ``with_masks=False`` skips
    reading label maps (their keys are then zeros with ``has_mask`` False).
    ``text_kinds``: the text kinds each item carries (module docstring); every sample
    must have at least one variant of each, else ValueError naming the first few.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[dict[str, Any]], dict[str, Any]],
        with_masks: bool = True,
        seed: int = 0,
        text_kinds: Sequence[str] = (),
    ) -> None:
        if seed < 0:
            raise ValueError(f"ReidImageDataset: seed must be >= 0, got {seed}")
        unknown = [k for k in text_kinds if k not in TEXT_KINDS]
        if unknown:
            raise ValueError(f"ReidImageDataset: unknown text kind(s) {unknown}; expected names from {TEXT_KINDS}")
        self.samples = list(samples)
        self.text_kinds = tuple(dict.fromkeys(text_kinds))
        for kind in self.text_kinds:
            lacking = [s.path for s in self.samples if not s.texts_of(kind)]
            if lacking:
                raise ValueError(
                    f"ReidImageDataset: {len(lacking)} of {len(self.samples)} samples have no {kind} "
                    f"(first: {', '.join(lacking[:3])}); a loader asked for {kind} texts needs one per sample"
                )
        self.transform = transform
        self.with_masks = with_masks
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for plain integer keys (evaluation / ``begin_stage`` passes)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def text_for(self, kind: str, index: int, epoch: int, draw: int) -> str:
        """The variant of ``kind`` that draw ``draw`` of sample ``index`` reads in ``epoch``
        (``__init__`` made sure there is one)."""
        variants = self.samples[index].texts_of(kind)
        if len(variants) == 1:
            return variants[0]
        rng = np.random.default_rng([self.seed, epoch, draw, index, _TEXT_STREAM, TEXT_KINDS.index(kind)])
        return variants[int(rng.integers(len(variants)))]

    def _load(self, sample: Sample) -> dict[str, Any]:
        try:
            with Image.open(sample.path) as im:
                rgb = im.convert("RGB")
        except OSError as err:
            raise OSError(f"cannot read image {sample.path}: {err}") from err
        inputs: dict[str, Any] = {"image": tv_tensors.Image(TF.pil_to_tensor(rgb))}
        if self.with_masks and sample.mask_path:
            inputs["mask"] = tv_tensors.Mask(_read_label_map(sample.mask_path, rgb.size, NUM_PARTS, "part mask"))
        if self.with_masks and sample.parsing_path:
            inputs["parsing"] = ParsingMap(
                _read_label_map(sample.parsing_path, rgb.size, NUM_LIP_CLASSES - 1, "parsing map")
            )
        return inputs

    def __getitem__(self, key: int | DrawKey) -> dict[str, Any]:
        if isinstance(key, DrawKey):
            index, epoch, draw = int(key.index), int(key.epoch), int(key.draw)
        else:
            index, epoch, draw = int(key), self.epoch, int(key)
        with _one_thread():
            return self._item(index, epoch, draw)

    def _item(self, index: int, epoch: int, draw: int) -> dict[str, Any]:
        sample = self.samples[index]
        inputs = self._load(sample)
        with torch.random.fork_rng(devices=[]):
            # Only the CPU generator: torch.manual_seed would also reseed CUDA generators
            # that fork_rng(devices=[]) does not restore.
            torch.default_generator.manual_seed(_seed_from(self.seed, epoch, draw, index, _AUGMENT_STREAM))
            out = self.transform(inputs)
        image = out["image"].as_subclass(torch.Tensor)
        h, w = image.shape[-2:]
        has_mask = "mask" in out
        has_parsing = "parsing" in out
        mask = out["mask"].as_subclass(torch.Tensor) if has_mask else torch.zeros(h, w, dtype=torch.uint8)
        parsing = out["parsing"].as_subclass(torch.Tensor) if has_parsing else torch.zeros(h, w, dtype=torch.uint8)
        item = {
            "image": image,
            "pid": int(sample.pid),
            "camid": int(sample.camid),
            "clothes_id": -1 if sample.clothes_id is None else int(sample.clothes_id),
            "index": index,
            "mask": mask,
            "parsing": parsing,
            "visible": part_visibility(mask),
            "has_mask": has_mask,
            "has_parsing": has_parsing,
        }
        for kind in self.text_kinds:
            item[kind] = self.text_for(kind, index, epoch, draw)
        return item


class ReidTextDataset(Dataset):
    """A text-to-image ``test_texts`` split: one caption per sample (one query each)."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = list(samples)
        for i, s in enumerate(self.samples):
            if len(s.texts_of("caption")) != 1:
                raise ValueError(
                    f"ReidTextDataset: sample {i} ({s.path}) has {len(s.texts_of('caption'))} captions; a test_texts "
                    "split must hold one Sample per caption (each caption is its own query)"
                )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.samples[index]
        return {"caption": s.texts_of("caption")[0], "pid": int(s.pid), "camid": int(s.camid), "index": int(index)}


def collate_reid(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, make ``[B]`` tensors of ints (long) and bools, keep strings as lists;
    label maps become long as the method contract says."""
    if not items:
        raise ValueError("collate_reid: empty batch")
    batch: dict[str, Any] = {}
    for key, first in items[0].items():
        values = [item[key] for item in items]
        if isinstance(first, torch.Tensor):
            stacked = torch.stack(values)
            batch[key] = stacked.long() if key in ("mask", "parsing") else stacked
        elif isinstance(first, str):
            batch[key] = values
        elif isinstance(first, bool):
            batch[key] = torch.tensor(values, dtype=torch.bool)
        elif isinstance(first, int):
            batch[key] = torch.tensor(values, dtype=torch.long)
        else:
            raise TypeError(f"collate_reid: key {key!r} has unsupported type {type(first).__name__}")
    return batch


class _KeyedBatches:
    """Wraps a :class:`PKSampler`: same batches, each index tagged with its epoch and draw."""

    def __init__(self, sampler: PKSampler) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        size, epoch = self.sampler.batch_size, self.sampler.epoch
        for number, batch in self.sampler.iter_positions():
            yield [DrawKey(index, epoch, number * size + j) for j, index in enumerate(batch)]


class TrainLoader(DataLoader):
    """DataLoader over a :class:`PKSampler` with epoch and checkpoint controls.

    ``set_epoch(epoch, start_batch=0)`` before each epoch; ``state_dict(batches_done)`` /
    ``load_state_dict`` delegate to the sampler (see :class:`PKSampler`)."""

    def __init__(self, dataset: ReidImageDataset, pk_sampler: PKSampler, **kwargs: Any) -> None:
        super().__init__(dataset, batch_sampler=_KeyedBatches(pk_sampler), collate_fn=collate_reid, **kwargs)
        self.pk_sampler = pk_sampler

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.pk_sampler.set_epoch(epoch, start_batch)
        self.dataset.set_epoch(epoch)

    def state_dict(self, batches_done: int | None = None) -> dict[str, Any]:
        return self.pk_sampler.state_dict(batches_done)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pk_sampler.load_state_dict(state)
        self.dataset.set_epoch(self.pk_sampler.epoch)


def _loader_kwargs(num_workers: int, seed: int, pin_memory: bool, persistent_workers: bool) -> dict[str, Any]:
    # A dedicated generator: otherwise each iter(loader) draws its base seed from the
    # global torch RNG and shifts the training run's own random stream.
    kwargs: dict[str, Any] = {
        "num_workers": num_workers,
        "pin_memory": pin_memory,
        "generator": torch.Generator().manual_seed(seed),
    }
    if num_workers > 0:
        kwargs["persistent_workers"] = persistent_workers
    return kwargs


def build_train_loader(
    samples: Sequence[Sample],
    size: Sequence[int],
    p: int,
    k: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    *,
    flip_p: float = 0.5,
    pad: int = 10,
    erase_p: float = 0.5,
    crop_p: float = 1.0,
    erase_masks: bool = True,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    with_masks: bool = True,
    drop_last: bool = True,
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    pin_memory: bool = False,
    persistent_workers: bool = False,
    text_kinds: Sequence[str] = (),
) -> TrainLoader:
    """P x K batches of augmented training images for this rank, with a ``list[str]``
    per kind in ``text_kinds`` (the method's required text kinds).

    ``transform`` replaces the default augmentation (whose knobs are then unused)."""
    if transform is None:
        transform = build_train_transform(
            size, flip_p=flip_p, pad=pad, erase_p=erase_p, mean=mean, std=std, crop_p=crop_p, erase_masks=erase_masks
        )
    dataset = ReidImageDataset(samples, transform, with_masks=with_masks, seed=seed, text_kinds=text_kinds)
    sampler = PKSampler([s.pid for s in samples], p, k, seed, rank=rank, world_size=world_size, drop_last=drop_last)
    return TrainLoader(dataset, sampler, **_loader_kwargs(num_workers, seed, pin_memory, persistent_workers))


def build_eval_loader(
    samples: Sequence[Sample],
    size: Sequence[int],
    batch_size: int,
    num_workers: int = 0,
    *,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    with_masks: bool = False,
    pin_memory: bool = False,
    text_kinds: Sequence[str] = (),
    interpolation: str = "bilinear",
) -> DataLoader:
    """Unaugmented images in split order (``index`` = position), no batch dropped.

    ``with_masks`` and ``text_kinds`` default to none: the papers use masks and texts to
    supervise training only, and a test-time pass should not read annotation a deployed
    model would not have. Pass them for a training-split pass that needs them
    (``begin_stage``)."""
    dataset = ReidImageDataset(samples, build_eval_transform(size, mean=mean, std=std, interpolation=interpolation),
                               with_masks=with_masks,
                               text_kinds=text_kinds)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        collate_fn=collate_reid,
        **_loader_kwargs(num_workers, 0, pin_memory, False),
    )


def build_text_loader(samples: Sequence[Sample], batch_size: int, num_workers: int = 0) -> DataLoader:
    """Captions of a text-to-image ``test_texts`` split, in order, with their pids
    (``batch["caption"]``).
    Tokenisation is the method's (its backbone owns the tokenizer)."""
    return DataLoader(
        ReidTextDataset(samples),
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        collate_fn=collate_reid,
        **_loader_kwargs(num_workers, 0, False, False),
    )
