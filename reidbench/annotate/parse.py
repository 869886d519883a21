"""``reidbench data parse``: LIP-format human-parsing maps for a dataset, from a local
transformers semantic-segmentation model (e.g. a SegFormer fine-tuned for human parsing).

Where the maps go (the location the adapters read, ``SideCars``): for an image at
``DSET/REL`` the map is ``DSET/parsing/REL`` with the extension replaced by ``.png``,
``DSET`` being the dataset folder the adapter found. Format: SCHP's output, an 8-bit
palette PNG at the image's size whose pixel values are the 20 LIP classes
(:data:`LIP_CLASSES`) and whose palette is SCHP's (the PASCAL VOC colour map).
``DSET/parsing/reidbench_parsing.json`` records the model, the label mapping and the
counts.

The model's labels are mapped to LIP's from the names in its config (``id2label``,
matched case- and punctuation-insensitively against LIP's names and a few aliases:
``Gloves``, ``Glasses``, ``Trousers``, ``Jumpsuit``) or from ``--label-map FILE.json``,
``{"model label name or id": "LIP class name or index", ...}``, whose entries win. A
model label that neither resolves is an error listing them all (ATR's ``Belt`` and
``Bag`` have no LIP class: map them, e.g. to ``Background``, in the file).

Decisions: the logits are resized to the image with bilinear interpolation before the
argmax (as the transformers post-processing does); one image per forward pass; no
flip averaging (SCHP's test-time flip is an accuracy option, not the format). A map is
written to a temporary name and renamed, so an interrupted run never leaves a partial
map, and a map that exists is done: the command resumes by skipping them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass

from .work import WorkItem, collect_items, run_work

__all__ = ["LIP_CLASSES", "LIP_PALETTE", "PARSING_FOLDER", "ParseSpec", "add_parse_arguments", "lip_mapping",
           "parsing_path", "run_parse"]

LIP_CLASSES = ("Background", "Hat", "Hair", "Glove", "Sunglasses", "Upper-clothes", "Dress", "Coat", "Socks",
               "Pants", "Jumpsuits", "Scarf", "Skirt", "Face", "Left-arm", "Right-arm", "Left-leg", "Right-leg",
               "Left-shoe", "Right-shoe")
PARSING_FOLDER = "parsing"
PROVENANCE_FILE = "reidbench_parsing.json"


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


_LIP_BY_SLUG = {_slug(name): index for index, name in enumerate(LIP_CLASSES)}
_LIP_BY_SLUG.update({"gloves": 3, "glasses": 4, "upperclothes": 5, "trousers": 9, "jumpsuit": 10})


def _voc_palette(n: int = 256) -> list[int]:
    """The PASCAL VOC colour map (SCHP's palette): the bits of the label index spread
    over the high bits of R, G and B."""
    palette = []
    for label in range(n):
        r = g = b = 0
        value = label
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette += [r, g, b]
    return palette


LIP_PALETTE = _voc_palette()


def parsing_path(dataset_root: str, key: str) -> str:
    """The map of the image ``DSET/key``: ``DSET/parsing/key`` as ``.png``."""
    return os.path.join(dataset_root, PARSING_FOLDER, *(os.path.splitext(key)[0] + ".png").split("/"))


def _lip_index(value, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(LIP_CLASSES):
        return value
    if isinstance(value, str) and _slug(value) in _LIP_BY_SLUG:
        return _LIP_BY_SLUG[_slug(value)]
    raise ValueError(f"{where}: {value!r} is not a LIP class; expected 0..19 or one of {', '.join(LIP_CLASSES)}")


def lip_mapping(id2label: dict, label_map: str | None = None) -> tuple[int, ...]:
    """LIP class of each model label id ``0..N-1``: from the names in ``id2label``, with
    the entries of the ``label_map`` JSON file winning (module docstring)."""
    labels = {int(k): str(v) for k, v in id2label.items()}
    if sorted(labels) != list(range(len(labels))):
        raise ValueError(f"--model: config id2label ids must be 0..N-1, got {sorted(labels)}")
    mapping: dict[int, int] = {i: _LIP_BY_SLUG[_slug(name)] for i, name in labels.items() if _slug(name) in _LIP_BY_SLUG}
    if label_map is not None:
        path = os.path.abspath(os.path.expanduser(label_map))
        try:
            with open(path, encoding="utf-8") as fh:
                given = json.load(fh)
        except OSError as err:
            raise ValueError(f"--label-map {label_map!r}: cannot read it ({err.strerror})") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"--label-map {path}: not valid JSON ({err.msg})") from None
        if not isinstance(given, dict):
            raise ValueError(f"--label-map {path}: expected a JSON object {{model label: LIP class}}")
        by_name = {_slug(name): i for i, name in labels.items()}
        for key, value in given.items():
            where = f"--label-map {path}, entry {key!r}"
            if str(key).isdigit() and int(key) in labels:
                index = int(key)
            elif _slug(key) in by_name:
                index = by_name[_slug(key)]
            else:
                raise ValueError(f"{where}: the model has no label {key!r}; its labels are "
                                 f"{', '.join(f'{i} {n}' for i, n in sorted(labels.items()))}")
            mapping[index] = _lip_index(value, where)
    missing = [f"{i} {labels[i]!r}" for i in sorted(labels) if i not in mapping]
    if missing:
        raise ValueError(f"--model: {len(missing)} label(s) of the model have no LIP class: {', '.join(missing)}. "
                         f"Give --label-map FILE.json mapping each to one of {', '.join(LIP_CLASSES)} "
                         f"(e.g. {{\"{labels[int(missing[0].split()[0])]}\": \"Background\"}})")
    return tuple(mapping[i] for i in range(len(labels)))


def _device(device: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


@dataclass(frozen=True)
class ParseSpec:
    model: str
    lut: tuple[int, ...]
    dataset_root: str
    device: str = "auto"

    def build(self):
        import numpy as np
        import torch
        from PIL import Image
        from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

        device = _device(self.device)
        processor = AutoImageProcessor.from_pretrained(self.model, local_files_only=True)
        model = AutoModelForSemanticSegmentation.from_pretrained(self.model, local_files_only=True).to(device).eval()
        lut = torch.tensor(self.lut, dtype=torch.uint8, device=device)

        def process(item: WorkItem) -> dict:
            with Image.open(item.path) as im:
                image = im.convert("RGB")
            inputs = processor(images=image, return_tensors="pt").to(device)
            with torch.inference_mode():
                logits = model(**inputs).logits
                logits = torch.nn.functional.interpolate(logits.float(), size=(image.height, image.width),
                                                         mode="bilinear", align_corners=False)
                labels = lut[logits[0].argmax(0)].cpu().numpy().astype(np.uint8)
            out = parsing_path(self.dataset_root, item.key)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            png = Image.fromarray(labels, mode="L").convert("P")
            png.putpalette(LIP_PALETTE)
            tmp = f"{out}.{os.getpid()}.tmp"
            png.save(tmp, format="PNG")
            os.replace(tmp, out)
            return {"ok": True, "attempts": 1}

        return process


class _MapSink:
    """Parsing maps on disk: a map that exists is done; the worker writes the file."""

    def __init__(self, dataset_root: str, items: list[WorkItem]) -> None:
        self.done = {item.key for item in items if os.path.isfile(parsing_path(dataset_root, item.key))}

    def accept(self, result: dict) -> None:
        return None


def add_parse_arguments(parser: argparse.ArgumentParser) -> None:
    from .caption import add_common_arguments

    add_common_arguments(parser, "all")
    parser.add_argument("--model", required=True, help="local transformers semantic-segmentation model folder")
    parser.add_argument("--label-map", default=None,
                        help="JSON file {model label name or id: LIP class name or index}; wins over the config's names")


def run_parse(args: argparse.Namespace) -> int:
    from transformers import AutoConfig

    from ..datasets import build_dataset
    from .vlm import check_model_dir, model_provenance

    model = check_model_dir(args.model)
    config = AutoConfig.from_pretrained(model, local_files_only=True)
    lut = lip_mapping(config.id2label, args.label_map)
    dataset = build_dataset(args.dataset, args.root)
    items = collect_items(dataset, args.split)
    root = os.path.abspath(dataset.root)
    folder = os.path.join(root, PARSING_FOLDER)
    provenance = {"command": "reidbench data parse", "model": model_provenance(model),
                  "labels": {str(i): config.id2label[i] for i in sorted(config.id2label)},
                  "lip": {config.id2label[i]: LIP_CLASSES[c] for i, c in enumerate(lut)}}
    record_path = os.path.join(folder, PROVENANCE_FILE)
    if os.path.isfile(record_path):
        with open(record_path, encoding="utf-8") as fh:
            earlier = {k: v for k, v in json.load(fh).items() if k in provenance}
        if earlier != provenance:
            differs = sorted(k for k in provenance if earlier.get(k) != provenance[k])
            raise ValueError(f"{folder} holds maps made with another model or mapping ({', '.join(differs)} differ, "
                             f"see {record_path}); move that folder away to parse again")
    os.makedirs(folder, exist_ok=True)
    with open(record_path, "w", encoding="utf-8") as fh:  # before any map, so a resumed run is compared with it
        json.dump(provenance, fh, indent=1)
    spec = ParseSpec(model, lut, root, args.device)
    tally = run_work(items, spec, _MapSink(root, items), workers=args.workers, chunk_size=args.chunk_size,
                     desc="parse", gpus_per_worker=args.gpus_per_worker)
    present = sum(os.path.isfile(parsing_path(root, item.key)) for item in items)
    with open(record_path, "w", encoding="utf-8") as fh:
        json.dump({**provenance, "maps": present, "last_run": tally.as_dict()}, fh, indent=1)
        fh.write("\n")
    print(f"parse {dataset.name} [{args.split}] -> {folder}: {tally.ok} written, {tally.skipped} already there, "
          f"{present} of {len(items)} images have a map")
    return 0
