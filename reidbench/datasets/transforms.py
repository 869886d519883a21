"""Training / evaluation transforms applied identically to an image and its label maps.

The recipe is CLIP-ReID's released code (which ProFD, CCAF, CLIP-SCGI and SCING
follow): resize (bicubic) -> random horizontal flip -> pad 10 + random crop back to
size -> float in [0, 1] -> normalise -> random erasing (p 0.5, random normal values
per pixel, i.e. timm's ``mode='pixel'``; area 2%-33%, aspect 0.3-3.3). At test time:
resize (bilinear: the released code's ``T.Resize`` without an interpolation argument),
float, normalise. Built from ``torchvision.transforms.v2`` so one call moves the image, the
part mask and the parsing map with the same random parameters: label maps are
``tv_tensors.Mask`` (resized nearest, padded with 0 = background), photometric
ops and normalisation leave them alone.

Call a transform with a dict, e.g. ``t({"image": Image, "mask": Mask, "parsing":
ParsingMap})``; it returns the same keys. The image must be a
``tv_tensors.Image`` (uint8 CHW).

Decisions:

* **Erased pixels become background in the label maps** (``erase_masks=True``).
  The erased rectangle shows noise, not the body part; keeping its part label
  would train part attention to look at noise and would report a part as visible
  when all of it was erased. This is how occlusion augmentation treats masks in
  part-based ReID (an erased part is an occluded part), and it is exactly what the
  visibility flags of ProFD-style methods should see. ``erase_masks=False`` keeps
  the labels (erasing then touches the image only).
* **Horizontal flips swap LIP left/right labels** (Left-arm 14 <-> Right-arm 15,
  Left-leg 16 <-> 17, Left-shoe 18 <-> 19) in parsing maps, which are passed as
  :class:`ParsingMap`. ProFD part masks are horizontal bands (head, upper torso,
  lower torso, legs, feet) with no left/right classes, so they are only moved.
* **Cropping probability.** CLIP-ReID pads and random-crops every image
  (``crop_p=1``, the default); ProFD (Sec. 4.2) and SCING (Sec. 4.2) apply flipping,
  erasing and cropping "each with a probability of 50%" (``crop_p=0.5``, which their
  methods' ``DATA_RECIPE`` sets as the run config's ``data.crop_p``).
* **Normalisation.** The default statistics are OpenAI CLIP's (what its weights were
  pretrained with); CLIP-ReID's released ViT config normalises with mean = std = 0.5
  (:data:`CLIP_REID_MEAN`, :data:`CLIP_REID_STD`), which the methods built on it
  request through the run config's ``data.pixel_mean`` / ``data.pixel_std``.
* **Test-time resize** is bilinear (``eval_interpolation``), as in CLIP-ReID's
  released code, while training resizes bicubic, as it does too; ``"bicubic"`` is the
  switch (run config ``data.eval_interpolation``).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

__all__ = [
    "CLIP_MEAN",
    "CLIP_REID_MEAN",
    "CLIP_REID_STD",
    "CLIP_STD",
    "INTERPOLATIONS",
    "LIP_FLIP_PAIRS",
    "NUM_PARTS",
    "MaskAwareRandomErasing",
    "PairedHorizontalFlip",
    "ParsingMap",
    "build_eval_transform",
    "build_train_transform",
    "part_visibility",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# CLIP-ReID's configs/person/vit_clipreid.yml (INPUT.PIXEL_MEAN / PIXEL_STD).
CLIP_REID_MEAN = (0.5, 0.5, 0.5)
CLIP_REID_STD = (0.5, 0.5, 0.5)
INTERPOLATIONS = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}
NUM_PARTS = 5  # ProFD: head, upper arms+torso, lower arms+torso, legs, feet
LIP_FLIP_PAIRS = ((14, 15), (16, 17), (18, 19))  # left/right arm, leg, shoe


class ParsingMap(tv_tensors.Mask):
    """A LIP human-parsing map: moved like any mask, and its left/right labels are
    swapped by :class:`PairedHorizontalFlip` (a mirrored left arm is a right arm)."""


def _flip_lut() -> torch.Tensor:
    lut = torch.arange(256, dtype=torch.long)
    for left, right in LIP_FLIP_PAIRS:
        lut[left], lut[right] = right, left
    return lut


_LIP_FLIP_LUT = _flip_lut()


class PairedHorizontalFlip(v2.RandomHorizontalFlip):
    """``RandomHorizontalFlip`` that also swaps left/right classes of :class:`ParsingMap` inputs."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        out = super().transform(inpt, params)
        if isinstance(inpt, ParsingMap):
            swapped = _LIP_FLIP_LUT[out.as_subclass(torch.Tensor).long()].to(out.dtype)
            out = tv_tensors.wrap(swapped, like=inpt)
        return out


class MaskAwareRandomErasing(v2.RandomErasing):
    """``RandomErasing`` that erases the image only and, with ``erase_masks``, sets the
    erased rectangle to background (0) in every ``Mask`` input (see module docstring)."""

    def __init__(self, *args: Any, erase_masks: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.erase_masks = erase_masks

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            if not self.erase_masks or params["v"] is None:
                return inpt
            i, j, h, w = params["i"], params["j"], params["h"], params["w"]
            out = inpt.as_subclass(torch.Tensor).clone()
            out[..., i : i + h, j : j + w] = 0
            return tv_tensors.wrap(out, like=inpt)
        return super().transform(inpt, params)


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) < 1 for s in size):
        raise ValueError(f"transform size must be (height, width) with positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def _check_probability(name: str, p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"transform {name} must be a probability in [0, 1], got {p!r}")
    return float(p)


def _to_normalised(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def build_train_transform(
    size: Sequence[int] = (256, 128),
    flip_p: float = 0.5,
    pad: int = 10,
    erase_p: float = 0.5,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    *,
    crop_p: float = 1.0,
    erase_masks: bool = True,
    erase_scale: tuple[float, float] = (0.02, 0.33),
    erase_ratio: tuple[float, float] = (0.3, 3.3),
) -> v2.Compose:
    """CLIP-ReID's training augmentation, applied jointly to image and label maps.

    ``pad=0`` or ``crop_p=0`` disables pad+crop, ``flip_p=0`` the flip, ``erase_p=0``
    the erasing. Randomness comes from torch's default generator (the loader seeds
    it per sample, so augmentation does not depend on the number of workers)."""
    h, w = _check_size(size)
    for name, p in (("flip_p", flip_p), ("crop_p", crop_p), ("erase_p", erase_p)):
        _check_probability(name, p)
    steps: list[v2.Transform] = [v2.Resize((h, w), interpolation=v2.InterpolationMode.BICUBIC, antialias=True)]
    if flip_p > 0:
        steps.append(PairedHorizontalFlip(p=flip_p))
    if pad > 0 and crop_p > 0:
        pad_crop: list[v2.Transform] = [v2.Pad(pad, fill=0), v2.RandomCrop((h, w))]
        if crop_p >= 1:
            steps.extend(pad_crop)
        else:
            steps.append(v2.RandomApply(pad_crop, p=crop_p))
    steps.extend(_to_normalised(mean, std))
    if erase_p > 0:
        erasing = MaskAwareRandomErasing(
            p=erase_p, scale=erase_scale, ratio=erase_ratio, value="random", erase_masks=erase_masks
        )
        steps.append(erasing)
    return v2.Compose(steps)


def build_eval_transform(
    size: Sequence[int] = (256, 128),
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    interpolation: str = "bilinear",
) -> v2.Compose:
    """Resize (``interpolation`` for the image: bilinear as CLIP-ReID's released test
    transform, or bicubic; nearest for label maps), scale to [0, 1], normalise."""
    h, w = _check_size(size)
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"eval interpolation must be one of {sorted(INTERPOLATIONS)}, got {interpolation!r}")
    return v2.Compose(
        [v2.Resize((h, w), interpolation=INTERPOLATIONS[interpolation], antialias=True), *_to_normalised(mean, std)]
    )


def part_visibility(mask: torch.Tensor, num_parts: int = NUM_PARTS) -> torch.Tensor:
    """``[..., num_parts]`` bool: part ``k`` (label ``k+1``) has at least one pixel in ``mask [..., H, W]``."""
    lead = mask.shape[:-2]
    rows = mask.reshape(-1, mask.shape[-2] * mask.shape[-1]).long().clamp(0, num_parts + 1)
    # One bincount over (row, label) pairs; labels above num_parts land in a spare bin.
    bins = num_parts + 2
    offsets = torch.arange(rows.shape[0], device=mask.device)[:, None] * bins
    counts = torch.bincount((rows + offsets).flatten(), minlength=rows.shape[0] * bins).view(-1, bins)
    return (counts[:, 1 : num_parts + 1] > 0).reshape(*lead, num_parts)
