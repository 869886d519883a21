"""The check, before anything trains, that the training split carries what a method
declares in ``Method.requires`` (names from ``REQUIREMENTS``)."""

from __future__ import annotations

import os
from typing import Iterable

from ..datasets import Sample
from ..methods.base import REQUIREMENTS, TEXT_KINDS

__all__ = ["check_requirements", "required_text_kinds"]

MAX_NAMED = 3  # how many sample paths the error quotes


def _lacks(requirement: str, sample: Sample) -> bool:
    if requirement == "mask":
        return not sample.mask_path
    if requirement == "parsing":
        return not sample.parsing_path
    if requirement == "clothes_id":
        return sample.clothes_id is None
    return not sample.texts_of(requirement)


_HOW_TO_ADD = {
    "mask": "part masks are read from DSET/masks/REL.png beside the dataset (the synthetic sets have them)",
    "parsing": ("parsing maps are read from DSET/parsing/REL.png beside the dataset (the synthetic sets have them); "
                "make them with reidbench data parse --dataset NAME --root DIR --model MODEL_DIR"),
    "clothes_id": "use a dataset with clothes labels (PRCC, LTCC, VC-Clothes, DeepChange or a synthetic one)",
}


def check_requirements(samples: Iterable[Sample], requires: Iterable[str], method_name: str,
                       root: str | None = None, what: str = "training") -> None:
    """Raise ValueError when a training sample lacks something the method requires:
    ``mask`` / ``parsing`` (a map on disk), ``clothes_id`` (known), or a text kind (at
    least one variant). The message counts the samples lacking it and names the first
    few (relative to ``root`` when given, else by file name); every failing requirement
    gets its own line of one message. ``what`` names the samples in the message (an evaluated
    split for a method's ``eval_text_kinds``)."""
    samples = list(samples)
    problems = []
    for requirement in requires:
        if requirement not in REQUIREMENTS:
            raise ValueError(f"method {method_name!r} requires unknown {requirement!r}; expected names from "
                             f"{', '.join(REQUIREMENTS)}")
        lacking = [s.path for s in samples if _lacks(requirement, s)]
        if not lacking:
            continue
        shown = [os.path.relpath(p, root).replace(os.sep, "/") if root else os.path.basename(p)
                 for p in lacking[:MAX_NAMED]]
        first = ", ".join(shown) + (", ..." if len(lacking) > MAX_NAMED else "")
        how = _HOW_TO_ADD.get(requirement, "add them with data.texts=FILE.jsonl (README: Texts files)")
        problems.append(f"method {method_name!r} requires {requirement}: {len(lacking):,} of {len(samples):,} "
                        f"{what} samples have none (first: {first}); {how}")
    if problems:
        raise ValueError("\n".join(problems))


def required_text_kinds(requires: Iterable[str]) -> tuple[str, ...]:
    """The text kinds among a method's requirements: what its training batches carry."""
    return tuple(kind for kind in requires if kind in TEXT_KINDS)
