"""Synthetic ReID benchmarks written in the real datasets' on-disk layouts.

``synthesize(out, flavor=...)`` renders person-like figures (see
``reidbench.datasets.render``) whose factors are all known and writes them
exactly as the community layouts the real adapters read:

* ``market``   -> ``OUT/market/Market-1501-v15.09.15/{bounding_box_train,query,bounding_box_test}/``,
  names ``0002_c1s1_000451_03.jpg``; gallery also holds distractors (pid ``0000``)
  and junk detections (pid ``-1``) as Market does.
* ``occluded`` -> ``OUT/occluded/Occluded_Duke/{bounding_box_train,query,bounding_box_test}/``,
  Duke names ``0001_c2_f0046182.jpg`` (8 cameras); every query is occluded,
  the gallery mostly holistic, training mixed.
* ``cc``       -> ``OUT/cc/prcc/rgb/{train,val}/<pid:03d>/{A,B,C}_cropped_rgb<NNN>.jpg`` and
  ``rgb/test/{A,B,C}/<pid:03d>/cropped_rgb<NNN>.jpg``; cameras A and B show one
  outfit, camera C another (cloth change).
* ``pedes``    -> ``OUT/pedes/CUHK-PEDES/imgs/{train_query,test_query}/p<pid:05d>_s<n:06d>.jpg`` +
  ``reid_raw.json``.

Beside every image (REL = its path relative to the dataset folder DSET, e.g.
``query/0101_c1s1_001203_02.jpg``; for CUHK-PEDES ``imgs/...``):
``DSET/masks/REL`` with ``.png`` (uint8 ProFD parts: 0 background, 1 head,
2 upper arms and torso, 3 lower arms and torso, 4 legs, 5 feet),
``DSET/parsing/REL`` with ``.png`` (uint8 LIP labels 0..19; classes 3 Glove,
6 Dress, 8 Socks, 10 Jumpsuits, 11 Scarf never occur; the neck is Face) and
one line of ``DSET/reidbench_meta.jsonl``::

    {"path": REL, "pid": as in the name (Market 0 / -1 included),
     "camid": the layout's camera, 1-based (Market/Duke c-number; PRCC A/B/C = 1/2/3;
              CUHK-PEDES: the rendering camera, absent from the layout),
     "clothes_id": outfit id, global within the flavor (a uniform's id is shared by
                   its wearers; Market distractors 1000000+; junk -1),
     "occluded": an occluder hides >= 8 % of the body,
     "split": train | query | gallery (Market, Duke) | train | val | test (PRCC, PEDES),
     "attributes": every known factor (identity, outfit, view, camera, occluder,
                   visible_fraction, uniform, outfit_slot, ...),
     "caption": CLIP-SCGI template caption,
     "id_descriptions" / "clothes_descriptions": {"terse", "detailed", "list"},
     "captions": the two CUHK-PEDES captions (pedes only)}

The world, per flavor and seed:

* identities (body proportions, skin, hair colour/length, head shape/size,
  glasses, gait) are drawn from one random stream per identity and outfits
  from another, so identity and clothing are independent by construction;
* every identity owns three outfits (primary + two alternates); with
  probability ``0.1 + 0.4 * difficulty`` its primary outfit is a *uniform*
  shared with about three other identities, so colour alone cannot identify;
* in ``market``/``occluded`` each (identity, camera) pair wears an alternate
  outfit with probability ``0.3 * difficulty`` (same-day clothes changes
  between cameras); ``pedes`` draws that per image; ``cc`` is PRCC's design;
* cameras have their own illumination, colour cast, blur, resolution, noise,
  JPEG quality, scale and background scene (magnitudes scale with
  ``difficulty``); poses have view (front/back/side), walking phase, shifts;
* occluders (a low obstacle, a pole/wall from the side, another pedestrian)
  hide part of the body, and hidden pixels are background in both masks.

Determinism: every image is a function of (seed, flavor, image index) only;
worker processes get disjoint chunks, so the bytes do not depend on
``workers``. Identity namespaces: benchmark identities of flavor f live in
namespace f, Market distractors and junk in their own, occluding passers-by
in another, and ``pretraining_pairs`` in a namespace no benchmark uses.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
from PIL import Image

from . import render as R

GENERATOR_VERSION = 1
FLAVORS = ("market", "occluded", "cc", "pedes")
DATASET_DIRS = {"market": "Market-1501-v15.09.15", "occluded": "Occluded_Duke", "cc": "prcc", "pedes": "CUHK-PEDES"}
DEFAULT_IMAGES_PER_ID = {"market": 12, "occluded": 12, "cc": 12, "pedes": 4}
MIN_IMAGES_PER_ID = {"market": 4, "occluded": 4, "cc": 3, "pedes": 1}
MIN_IDS = {"market": 2, "occluded": 2, "cc": 3, "pedes": 3}
NUM_CAMERAS = {"market": 6, "occluded": 8, "cc": 3, "pedes": 10, "pretrain": 24}
META_FILE = "reidbench_meta.jsonl"
COMPLETE_FILE = ".complete"

# Random streams: (seed, STREAM, namespace, index) keys one generator (see ``_rng``).
_S_IDENTITY, _S_OUTFIT, _S_WARDROBE, _S_CAMERA, _S_IMAGE, _S_NOISE, _S_PLAN, _S_OCC = range(1, 9)
_FLAVOR_NS = {"market": 1, "occluded": 2, "cc": 3, "pedes": 4}
_DISTRACTOR_NS_OFFSET = 20  # Market pid 0 / -1 people: 20 + flavor namespace
_PASSERBY_NS_OFFSET = 40  # occluding pedestrians: 40 + flavor namespace
_PRETRAIN_NS = 90
OUTFITS_PER_ID = 3
_DISTRACTOR_CLOTHES_OFFSET = 1_000_000

#: Everything a prompt or a probe needs to name the known factors.
ATTRIBUTE_VOCAB: dict = {
    "upper_colour": list(R.UPPER_COLOURS),
    "lower_colour": list(R.LOWER_COLOURS),
    "shoes_colour": list(R.SHOES_COLOURS),
    "hat": ["none"] + list(R.UPPER_COLOURS),
    "bag": list(R.BAGS),
    "bag_colour": ["none"] + list(R.BAG_COLOURS),
    "upper_type": list(R.UPPER_TYPES),
    "upper_pattern": list(R.UPPER_PATTERNS),
    "lower_type": list(R.LOWER_TYPES),
    "lower_pattern": list(R.LOWER_PATTERNS),
    "gender": list(R.GENDERS),
    "age": list(R.AGES),
    "build": list(R.BUILDS),
    "height": list(R.HEIGHTS),
    "skin_tone": list(R.SKIN_RGB),
    "hair_colour": list(R.HAIR_RGB),
    "hair_length": list(R.HAIR_LENGTHS),
    "head_shape": list(R.HEAD_SHAPES),
    "head_size": list(R.HEAD_SIZES),
    "glasses": [False, True],
    "view": list(R.VIEWS),
    "colour_rgb": {k: tuple(int(round(255 * c)) for c in v) for k, v in R.COLOUR_RGB.items()},
    # Zero-shot prompts whose words all occur in the generated captions.
    "prompt_templates": {
        "upper_colour": "a person in a {} top",
        "lower_colour": "a person wearing {} on the bottom",
        "shoes_colour": "a person wearing {} shoes",
        "hair_colour": "a person with {} hair",
        "gender": "a {} is wearing",
        "upper_type": "a person wearing a {}",
        "lower_type": "a person wearing {}",
    },
}


def _rng(seed: int, stream: int, namespace: int, index: int = 0) -> np.random.Generator:
    """The random stream of one (seed, stream, namespace, index) key.

    Philox is counter-based: the key selects the generator, the index is the
    top word of its 256-bit counter, so streams of different indices are
    2^192 blocks apart (disjoint) and each costs half of a SeedSequence-
    seeded PCG64 to set up, which matters at thousands of images a second.
    """
    return np.random.Generator(np.random.Philox(counter=[0, 0, 0, int(index)], key=_key(seed, stream, namespace)))


def _key(seed: int, stream: int, namespace: int) -> list[int]:
    """The Philox key of a (seed, stream, namespace): two 64-bit words."""
    return [int(seed), (int(stream) << 32) | int(namespace)]


def _rekey(rng: np.random.Generator, seed: int, stream: int, namespace: int, index: int = 0) -> np.random.Generator:
    """Turn ``rng`` (from ``_rng``, its remaining draws no longer wanted) into ``_rng(seed, stream,
    namespace, index)`` in place: setting a Philox state costs a quarter of building a generator."""
    rng.bit_generator.state = {
        "bit_generator": "Philox",
        "state": {"counter": np.array([0, 0, 0, index], dtype=np.uint64),
                  "key": np.array(_key(seed, stream, namespace), dtype=np.uint64)},
        "buffer": np.zeros(4, dtype=np.uint64), "buffer_pos": 4, "has_uint32": 0, "uinteger": 0}
    return rng


# --------------------------------------------------------------------------- the world


@dataclass(frozen=True)
class WorldConfig:
    seed: int
    difficulty: float
    height: int
    width: int
    mask_noise: float = 0.0


class World:
    """Lazily drawn, cached factors; every draw is keyed, so any process gets the same values."""

    def __init__(self, cfg: WorldConfig):
        self.cfg = cfg
        self._identity: dict = {}
        self._outfit: dict = {}
        self._camera: dict = {}
        self._background: dict = {}
        self._text: dict = {}
        self._attrs: dict = {}

    def identity(self, ns: int, k: int) -> R.Identity:
        key = (ns, k)
        if key not in self._identity:
            self._identity[key] = R.sample_identity(_rng(self.cfg.seed, _S_IDENTITY, ns, k))
        return self._identity[key]

    def outfit(self, ns: int, o: int) -> R.Outfit:
        key = (ns, o)
        if key not in self._outfit:
            self._outfit[key] = R.sample_outfit(_rng(self.cfg.seed, _S_OUTFIT, ns, o))
        return self._outfit[key]

    def camera(self, ns: int, c: int) -> R.Camera:
        key = (ns, c)
        if key not in self._camera:
            self._camera[key] = R.sample_camera(_rng(self.cfg.seed, _S_CAMERA, ns, c), self.cfg.difficulty)
        return self._camera[key]

    def texts(self, ns: int, k: int, ons: int, o: int) -> tuple:
        """All caption/description variants of (identity, outfit); images pick among them."""
        key = (ns, k, ons, o)
        t = self._text.get(key)
        if t is None:
            i, outfit = self.identity(ns, k), self.outfit(ons, o)
            ids = self._text.get(("id", ns, k)) or id_description_variants(i)
            clothes = self._text.get(("clothes", ons, o)) or clothes_description_variants(outfit)
            self._text[("id", ns, k)], self._text[("clothes", ons, o)] = ids, clothes
            t = self._text[key] = (scgi_caption_variants(i, outfit), ids, clothes, pedes_caption_variants(i, outfit))
        return t

    def attributes(self, ns: int, k: int, ons: int, o: int) -> dict:
        key = (ns, k, ons, o)
        a = self._attrs.get(key)
        if a is None:
            a = self._attrs[key] = {**self.identity(ns, k).attributes(), **self.outfit(ons, o).attributes()}
        return a

    def camera_attributes(self, ns: int, c: int) -> dict:
        key = ("camera", ns, c)
        a = self._attrs.get(key)
        if a is None:
            a = self._attrs[key] = self.camera(ns, c).attributes()
        return a

    def background(self, ns: int, c: int) -> np.ndarray:
        key = (ns, c)
        if key not in self._background:
            self._background[key] = R.camera_background(self.camera(ns, c), self.cfg.height, self.cfg.width,
                                                        self.cfg.difficulty)
        return self._background[key]


def uniform_fraction(difficulty: float) -> float:
    """Share of identities whose primary outfit is a uniform shared with others."""
    return 0.1 + 0.4 * difficulty


def wardrobe(seed: int, ns: int, k: int, n_ids: int, difficulty: float) -> tuple[list[int], bool]:
    """Outfit ids of identity k: [primary, alternate 1, alternate 2], and whether the primary is a uniform.

    Drawn from the wardrobe stream, which never sees the identity's factors:
    outfits are independent of identity. Uniforms are outfit ids
    0..U-1 with U = max(2, round(n_ids * uniform_fraction / 4)) (about four
    wearers each); personal outfits follow at U + 3 (k - 1) + j.
    """
    n_uniforms = num_uniforms(n_ids, difficulty)
    rng = _rng(seed, _S_WARDROBE, ns, k)
    personal = [n_uniforms + OUTFITS_PER_ID * (k - 1) + j for j in range(OUTFITS_PER_ID)]
    if rng.random() < uniform_fraction(difficulty):
        return [int(rng.integers(n_uniforms))] + personal[1:], True
    return personal, False


def num_uniforms(n_ids: int, difficulty: float) -> int:
    return max(2, int(round(n_ids * uniform_fraction(difficulty) / 4)))


# --------------------------------------------------------------------------- text


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def upper_phrase(o: R.Outfit, article: bool = True) -> str:
    c1, c2, t = o.upper_colour, o.upper_colour2, o.upper_type
    phrase = {
        "plain": f"{c1} {t}",
        "striped": f"{c1} and {c2} striped {t}",
        "checked": f"{c1} and {c2} checked {t}",
        "two-tone": f"{c1} and {c2} two-tone {t}",
    }[o.upper_pattern]
    return _a(phrase) if article else phrase


def lower_phrase(o: R.Outfit, article: bool = True) -> str:
    c1, c2, t = o.lower_colour, o.lower_colour2, o.lower_type
    phrase = {"plain": f"{c1} {t}", "striped": f"{c1} {t} with {c2} stripes",
              "checked": f"{c1} and {c2} checked {t}"}[o.lower_pattern]
    return _a(phrase) if (article and t == "skirt") else phrase


def _hair(i: R.Identity) -> str:
    return f"{i.hair_length} {i.hair_colour} hair"


def _pron(i: R.Identity) -> tuple[str, str]:
    return ("he", "his") if i.gender == "man" else ("she", "her")


def _gait(i: R.Identity) -> tuple[str, str]:
    stride = "short" if i.stride < 0.27 else ("long" if i.stride > 0.38 else "medium")
    swing = "barely swings" if i.arm_swing < 0.18 else ("widely swings" if i.arm_swing > 0.33 else "gently swings")
    return stride, swing


def scgi_caption_variants(i: R.Identity, o: R.Outfit) -> list[str]:
    """CLIP-SCGI's LLaVA template, filled the way LLaVA fills it, in its 8 wording variants.

    The variants are LLaVA's small wording drift: age synonym x how "carrying"
    is phrased x how glasses are phrased.

    Template (CLIP-SCGI, Sec. III-A): "A [age] [gender] is wearing [upper
    clothes]. [gender] is wearing [upper clothes] and [lower clothes]. The
    [gender] is wearing [shoes] and carrying a [others]. The [gender] has
    [hair length] [and whether wear glasses]." Shortened towards the 45-word limit
    the instruction sets (the worst case is 46 words).
    """
    he, _ = _pron(i)
    ages = {"young": ("young", "young"), "middle-aged": ("middle-aged", "middle-aged"),
            "elderly": ("elderly", "old")}[i.age]
    g = i.gender
    up, lo = upper_phrase(o), lower_phrase(o)
    if o.bag == "none":
        carries = ("is not carrying anything", "carrying nothing")
    else:
        carries = tuple(prefix + _a(f"{o.bag_colour} {o.bag}") for prefix in ("carrying ", "is carrying "))
    hair = _hair(i) + (f" under {_a(o.hat)} cap" if o.hat != "none" else "")
    if i.glasses:
        glasses_options = ("and is wearing glasses", "and wears glasses")
    else:
        glasses_options = ("and is not wearing glasses", "and does not wear glasses")

    def fill(age: str, carry: str, glasses: str, second_upper: str, hair_part: str) -> str:
        return (f"{_a(age).capitalize()} {g} is wearing {up}. {he.capitalize()} is wearing {second_upper} and {lo}. "
                f"The {g} is wearing {o.shoes_colour} shoes and {carry}. The {g} has {hair_part} {glasses}.")

    variants = []
    for age in ages:
        for carry in carries:
            for glasses in glasses_options:
                # Over the instruction's 45 words, shorten like a compliant captioner:
                # refer back to the top, then drop the cap.
                for second_upper, hair_part in ((up, hair), (f"the {o.upper_type}", hair),
                                                (f"the {o.upper_type}", _hair(i))):
                    caption = fill(age, carry, glasses, second_upper, hair_part)
                    if len(caption.split()) <= 45:
                        break
                variants.append(caption)
    return variants


def _pick(options: list[str], rng: np.random.Generator) -> str:
    return options[int(rng.random() * len(options))]  # a third of rng.integers' cost


def scgi_caption(i: R.Identity, o: R.Outfit, rng: np.random.Generator) -> str:
    """One CLIP-SCGI template caption (see ``scgi_caption_variants``)."""
    return _pick(scgi_caption_variants(i, o), rng)


def id_description_variants(i: R.Identity) -> dict[str, list[str]]:
    """Identity only (biometric traits, no clothing), in BDAM's three writing styles.

    Each style has three phrasings so a text encoder sees wording variety
    within a style; the styles differ in length and punctuation (a short
    phrase, several full sentences, key-value lists).
    """
    he, his = _pron(i)
    stride, swing = _gait(i)
    g, hair = i.gender, _hair(i)
    height = {"short": "short", "average": "average-height", "tall": "tall"}[i.height]
    glasses = " with glasses" if i.glasses else ""
    terse = [
        f"{_a(i.build).capitalize()} {i.age} {g} with {hair}{glasses}.",
        f"{i.age.capitalize()} {g}, {i.build}, {hair}" + (", glasses." if i.glasses else "."),
        f"{height.capitalize()} {i.build} {g} with {i.hair_colour} hair.",
    ]
    eyewear = f"{he.capitalize()} wears glasses." if i.glasses else f"{he.capitalize()} wears no glasses."
    detailed = [
        f"The person is {_a(i.age)} {g} of {i.build} build and {i.height} stature. {he.capitalize()} has "
        f"{i.skin_tone} skin, a {i.head_size} {i.head_shape} head and {hair}. {eyewear} "
        f"{he.capitalize()} walks with a {stride} stride and {swing} {his} arms.",
        f"This {i.age} {g} looks {height} and {i.build}, with a {i.skin_tone} skin tone. {his.capitalize()} "
        f"head is {i.head_shape} and {i.head_size}, framed by {hair}. {eyewear} "
        f"When walking, {he} takes {stride} steps and {swing} {his} arms.",
        f"{_a(i.build).capitalize()}, {height} {g} who appears {i.age}. Notable features: {i.skin_tone} skin, "
        f"{hair} and a {i.head_shape}, {i.head_size} head. {eyewear} The gait shows a {stride} stride.",
    ]
    yn = "yes" if i.glasses else "no"
    lists = [
        f"gender: {g}; age: {i.age}; build: {i.build}; height: {i.height}; skin: {i.skin_tone}; "
        f"hair: {i.hair_length}, {i.hair_colour}; head: {i.head_shape}, {i.head_size}; glasses: {yn}",
        f"Gender={g} | Age={i.age} | Build={i.build} | Height={i.height} | Skin={i.skin_tone} | "
        f"Hair={i.hair_length} {i.hair_colour} | Head={i.head_shape} {i.head_size} | Glasses={yn}",
        f"[{g}] [{i.age}] [{i.build} build] [{i.height}] [{i.skin_tone} skin] [{hair}] "
        f"[{i.head_shape} head] [glasses: {yn}]",
    ]
    return {"terse": terse, "detailed": detailed, "list": lists}


def _pick_styles(variants: dict[str, list[str]], rng: np.random.Generator) -> dict[str, str]:
    return {style: _pick(variants[style], rng) for style in ("terse", "detailed", "list")}


def id_descriptions(i: R.Identity, rng: np.random.Generator) -> dict[str, str]:
    """One identity description per style (see ``id_description_variants``)."""
    return _pick_styles(id_description_variants(i), rng)


def clothes_description_variants(o: R.Outfit) -> dict[str, list[str]]:
    """Clothing only (apparel, colours, patterns, accessories), in the same three styles."""
    up, lo = upper_phrase(o), lower_phrase(o)
    up_bare, lo_bare = upper_phrase(o, article=False), lower_phrase(o, article=False)
    shoes = f"{o.shoes_colour} shoes"
    bag = "no bag" if o.bag == "none" else _a(f"{o.bag_colour} {o.bag}")
    sleeves = "short sleeves" if o.upper_type == "t-shirt" else "long sleeves"
    length = {"trousers": "long", "shorts": "short", "skirt": "knee-length"}[o.lower_type]
    lo_sized = _a(f"{length} {lo_bare}") if o.lower_type == "skirt" else f"{length} {lo_bare}"
    hat_sentence = f" {_a(o.hat).capitalize()} cap is worn." if o.hat != "none" else ""
    bag_sentence = (" No bag is carried." if o.bag == "none" else
                    f" {_a(o.bag_colour + ' ' + o.bag).capitalize()} is carried"
                    + (" on the back." if o.bag == "backpack" else " in one hand."))
    terse = [
        f"{up_bare.capitalize()}, {lo_bare}, {shoes}.",
        f"{up.capitalize()} with {lo}.",
        f"Wears {up} and {lo}" + (f", carries {bag}." if o.bag != "none" else "."),
    ]
    detailed = [
        f"The person is dressed in {up} with {sleeves}, paired with {lo_sized}. "
        f"On the feet are {shoes}.{bag_sentence}{hat_sentence}",
        f"The outfit consists of {up} that has {sleeves} and {lo} of {length} cut, completed by "
        f"{shoes}.{bag_sentence}{hat_sentence}",
        f"For clothing, the top is {up} with {sleeves}; the bottom is {lo}. The shoes are "
        f"{o.shoes_colour}.{bag_sentence}{hat_sentence}",
    ]
    hat = "none" if o.hat == "none" else f"{o.hat} cap"
    bag_item = "none" if o.bag == "none" else f"{o.bag_colour} {o.bag}"
    lists = [
        f"top: {o.upper_colour} {o.upper_type} ({o.upper_pattern}); bottom: {o.lower_colour} {o.lower_type} "
        f"({o.lower_pattern}); shoes: {o.shoes_colour}; bag: {bag_item}; hat: {hat}",
        f"Top={up_bare} | Bottom={lo_bare} | Shoes={o.shoes_colour} | Bag={bag_item} | Hat={hat}",
        f"[{up_bare}] [{lo_bare}] [{shoes}] [bag: {bag_item}] [hat: {hat}]",
    ]
    return {"terse": terse, "detailed": detailed, "list": lists}


def clothes_descriptions(o: R.Outfit, rng: np.random.Generator) -> dict[str, str]:
    """One clothing description per style (see ``clothes_description_variants``)."""
    return _pick_styles(clothes_description_variants(o), rng)


def pedes_caption_variants(i: R.Identity, o: R.Outfit) -> list[str]:
    """CUHK-PEDES-like sentences in three annotator styles."""
    he, his = _pron(i)
    g, hair = i.gender, _hair(i)
    up, lo = upper_phrase(o), lower_phrase(o)
    bag = "nothing" if o.bag == "none" else _a(f"{o.bag_colour} {o.bag}")
    glasses = " and glasses" if i.glasses else ""
    styles = [
        f"{_a(i.age).capitalize()} {g} with {hair} wearing {up}, {lo} and {o.shoes_colour} shoes. {he.capitalize()} is "
        f"carrying {bag}.",
        f"The {g} has {hair}{glasses} and is wearing {up} with {lo}. {his.capitalize()} shoes are "
        f"{o.shoes_colour}" + (f" and {he} carries {bag}." if o.bag != "none" else "."),
        f"This {i.build} {g} wears {up} over {lo} and {o.shoes_colour} shoes; {he} has {hair}{glasses}.",
    ]
    return styles


def _pick_two(styles: list[str], rng: np.random.Generator) -> list[str]:
    first = int(rng.integers(3))
    second = (first + 1 + int(rng.integers(2))) % 3
    return [styles[first], styles[second]]


def pedes_captions(i: R.Identity, o: R.Outfit, rng: np.random.Generator) -> list[str]:
    """Two captions per image, in two of the three annotator styles (CUHK-PEDES has two per image)."""
    return _pick_two(pedes_caption_variants(i, o), rng)


_TOKEN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def processed_tokens(caption: str) -> list[str]:
    """CUHK-PEDES ``processed_tokens``: lower-cased words without punctuation (hyphenated words kept)."""
    return _TOKEN.findall(caption.lower())


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class ImageSpec:
    """One image to render: where it goes and which factors it shows."""

    index: int
    rel: str  # path relative to the dataset folder
    pid: int  # as in the file name / JSON
    camid: int  # as the layout encodes it, 1-based
    ns: int  # identity namespace
    k: int  # identity index in the namespace
    outfit_ns: int
    outfit: int  # global clothes id within outfit_ns
    outfit_slot: int  # 0 primary, 1/2 alternates, -1 distractor/junk
    uniform: bool
    camera: int  # render camera index (0-based) in the flavor's camera namespace
    p_occluded: float
    kind: str = "person"  # "person" or "junk"
    split: str = ""


def _split_ids(n: int, fractions: Iterable[float]) -> list[list[int]]:
    """Consecutive pid ranges 1..n split by ``fractions`` (each part at least one id)."""
    fractions = list(fractions)
    if n < len(fractions):
        raise ValueError(f"{n} identities cannot be split into {len(fractions)} non-empty parts")
    rest = n - len(fractions)  # one id each first, the rest by fraction, remainders to the largest parts
    sizes = [1 + int(rest * f) for f in fractions]
    for j in sorted(range(len(fractions)), key=lambda j: -fractions[j])[: n - sum(sizes)]:
        sizes[j] += 1
    out, start = [], 1
    for s in sizes:
        out.append(list(range(start, start + s)))
        start += s
    return out


def _spread_cameras(rng, n_images: int, cams: list[int]) -> list[int]:
    """Assign images to cameras round-robin over a shuffled camera list (each camera >= 1 image)."""
    order = [cams[j] for j in rng.permutation(len(cams))]
    return [order[j % len(order)] for j in range(n_images)]


class _Planner:
    def __init__(self, flavor: str, seed: int, n_ids: int, images_per_id: int, difficulty: float):
        self.flavor, self.seed, self.n_ids, self.ipi, self.d = flavor, seed, n_ids, images_per_id, difficulty
        self.ns = _FLAVOR_NS[flavor]
        self.rng = _rng(seed, _S_PLAN, self.ns)
        self.specs: list[ImageSpec] = []
        self.p_change = 0.3 * difficulty
        self._wardrobes: dict[int, tuple[list[int], bool]] = {}

    def wardrobe(self, k: int) -> tuple[list[int], bool]:
        w = self._wardrobes.get(k)
        if w is None:
            w = self._wardrobes[k] = wardrobe(self.seed, self.ns, k, self.n_ids, self.d)
        return w

    def outfit_for(self, k: int, slot: int | None = None) -> tuple[int, int, bool]:
        """(outfit id, slot, uniform); slot None draws primary vs an alternate with p_change."""
        outfits, uni = self.wardrobe(k)
        if slot is None:
            slot = 0 if self.rng.random() >= self.p_change else 1 + int(self.rng.random() * (OUTFITS_PER_ID - 1))
        return outfits[slot], slot, uni and slot == 0

    def add(self, **kw) -> ImageSpec:
        kw.setdefault("ns", self.ns)
        kw.setdefault("outfit_ns", self.ns)
        spec = ImageSpec(index=len(self.specs), **kw)
        self.specs.append(spec)
        return spec


def _market_like(pl: _Planner, duke: bool) -> list[ImageSpec]:
    """Market-1501 / Occluded-Duke: disjoint train/test identities, query and gallery per camera."""
    n_cams = NUM_CAMERAS[pl.flavor]
    rng = pl.rng
    train_ids, test_ids = _split_ids(pl.n_ids, (0.5, 0.5))
    occ = {"train": 0.2 * pl.d, "query": 0.2 * pl.d, "gallery": 0.2 * pl.d}
    if duke:  # Occluded-Duke: all queries occluded, gallery mostly holistic, training mixed
        occ = {"train": 0.3, "query": 1.0, "gallery": 0.1}
    folders = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}

    def name(pid: int, cam: int, idx: int) -> str:
        if duke:
            return f"{pid:04d}_c{cam}_f{idx + 1:07d}.jpg"
        pid_s = "-1" if pid == -1 else f"{pid:04d}"
        sequence, box = rng.random(2).tolist()
        return f"{pid_s}_c{cam}s{1 + int(6 * sequence)}_{idx + 1:06d}_{1 + int(3 * box):02d}.jpg"

    def person_images(k: int, split: str):
        max_cams = min(n_cams, pl.ipi // 2) if split == "test" else n_cams
        n_c = int(rng.integers(2, max(max_cams, 2) + 1))
        cams = sorted(int(c) for c in rng.choice(n_cams, size=n_c, replace=False))
        per_cam_outfit = {c: pl.outfit_for(k) for c in cams}
        return _spread_cameras(rng, pl.ipi, cams), per_cam_outfit

    for k in train_ids:
        cam_list, outfits = person_images(k, "train")
        for c in cam_list:
            o, slot, uni = outfits[c]
            pl.add(rel=f"{folders['train']}/" + name(k, c + 1, len(pl.specs)), pid=k, camid=c + 1, k=k, outfit=o,
                   outfit_slot=slot, uniform=uni, camera=c, p_occluded=occ["train"], split="train")
    gallery_only = set(int(k) for k in rng.choice(test_ids, size=len(test_ids) // 4, replace=False)) if duke else set()
    for k in test_ids:
        cam_list, outfits = person_images(k, "test")
        seen: set[int] = set()
        for c in cam_list:
            o, slot, uni = outfits[c]
            is_query = c not in seen and k not in gallery_only
            seen.add(c)
            split = "query" if is_query else "gallery"
            pl.add(rel=f"{folders[split]}/" + name(k, c + 1, len(pl.specs)), pid=k, camid=c + 1, k=k, outfit=o,
                   outfit_slot=slot, uniform=uni, camera=c, p_occluded=occ[split], split=split)
    if not duke:  # Market's distractors (pid 0) and junk detections (pid -1), each a stranger
        n_test = len(test_ids)
        dns = _DISTRACTOR_NS_OFFSET + pl.ns
        for j in range(max(2, n_test // 5) + max(2, n_test // 10)):
            junk = j >= max(2, n_test // 5)
            c = int(rng.integers(n_cams))
            pid = -1 if junk else 0
            pl.add(rel=f"{folders['gallery']}/" + name(pid, c + 1, len(pl.specs)), pid=pid, camid=c + 1, ns=dns,
                   k=j, outfit_ns=dns, outfit=j, outfit_slot=-1, uniform=False, camera=c,
                   p_occluded=occ["gallery"], kind="junk" if junk else "person", split="gallery")
    return pl.specs


def _prcc(pl: _Planner) -> list[ImageSpec]:
    """PRCC: A and B in the primary outfit, C in an alternate; test A = gallery, B/C = queries."""
    train_ids, val_ids, test_ids = _split_ids(pl.n_ids, (0.6, 0.1, 0.3))
    p_occ = 0.1 * pl.d
    for split, ids in (("train", train_ids), ("val", val_ids), ("test", test_ids)):
        for k in ids:
            counts = [pl.ipi // 3 + (1 if j < pl.ipi % 3 else 0) for j in range(3)]
            number = 0
            for c, letter in enumerate("ABC"):
                o, slot, uni = pl.outfit_for(k, 0 if letter in "AB" else 1)
                for _ in range(counts[c]):
                    number += 1
                    if split == "test":
                        rel = f"rgb/test/{letter}/{k:03d}/cropped_rgb{number:03d}.jpg"
                    else:
                        rel = f"rgb/{split}/{k:03d}/{letter}_cropped_rgb{number:03d}.jpg"
                    pl.add(rel=rel, pid=k, camid=c + 1, k=k, outfit=o, outfit_slot=slot, uniform=uni, camera=c,
                           p_occluded=p_occ, split=split)
    return pl.specs


# Identity shares of the pedes train / val / test splits. CUHK-PEDES splits 80/10/10, but its
# test split holds 1,000 identities; 10 % of the embedded default's 150 is 15, on which the
# pretrained tiny CLIP's zero-shot text-to-image retrieval scored 99.4 mAP and nothing could be
# told apart. So the test split is 40 % (60 identities, 240 images, 480 captions at 150 ids).
PEDES_SPLIT = (0.5, 0.1, 0.4)


def _pedes(pl: _Planner) -> list[ImageSpec]:
    """CUHK-PEDES: ids split train/val/test by ``PEDES_SPLIT``, several images per id from random cameras."""
    rng = pl.rng
    n_cams = NUM_CAMERAS["pedes"]
    p_occ = 0.1 * pl.d
    for split, ids in zip(("train", "val", "test"), _split_ids(pl.n_ids, PEDES_SPLIT)):
        sub = "train_query" if split == "train" else "test_query"
        for k in ids:
            for _ in range(pl.ipi):
                c = int(rng.integers(n_cams))
                o, slot, uni = pl.outfit_for(k)
                rel = f"imgs/{sub}/p{k:05d}_s{len(pl.specs) + 1:06d}.jpg"
                pl.add(rel=rel, pid=k, camid=c + 1, k=k, outfit=o, outfit_slot=slot, uniform=uni, camera=c,
                       p_occluded=p_occ, split=split)
    return pl.specs


def plan(flavor: str, n_ids: int, images_per_id: int, seed: int, difficulty: float) -> list[ImageSpec]:
    """Every image of one flavor, in writing order (deterministic for the arguments)."""
    if flavor not in FLAVORS:
        raise ValueError(f"unknown flavor {flavor!r}; expected one of {FLAVORS} or 'all'")
    if n_ids < MIN_IDS[flavor]:
        raise ValueError(f"flavor {flavor!r} needs at least {MIN_IDS[flavor]} identities, got ids={n_ids}")
    if images_per_id < MIN_IMAGES_PER_ID[flavor]:
        raise ValueError(f"flavor {flavor!r} needs images_per_id >= {MIN_IMAGES_PER_ID[flavor]} "
                         f"(query and gallery in different cameras), got {images_per_id}")
    limit = {"market": 9999, "occluded": 9999, "cc": 999, "pedes": 99999}[flavor]
    if n_ids > limit:
        raise ValueError(f"flavor {flavor!r} file names hold at most {limit} identities, got ids={n_ids}")
    pl = _Planner(flavor, seed, n_ids, images_per_id, difficulty)
    if flavor == "market":
        return _market_like(pl, duke=False)
    if flavor == "occluded":
        return _market_like(pl, duke=True)
    if flavor == "cc":
        return _prcc(pl)
    return _pedes(pl)


# --------------------------------------------------------------------------- rendering one image

_WORLDS: dict[WorldConfig, World] = {}


def _world(cfg: WorldConfig) -> World:
    w = _WORLDS.get(cfg)
    if w is None:
        _WORLDS.clear()  # one configuration at a time per process
        w = _WORLDS[cfg] = World(cfg)
    return w


_OCCLUDER_P = (0.45, 0.3, 0.25)  # lower, side, person


def render_spec(world: World, flavor_ns: int, spec: ImageSpec, rng: np.random.Generator
                ) -> tuple[R.Rendered, dict]:
    """Render one planned image from its own stream ``rng``; returns the rendering and its known factors."""
    cfg = world.cfg
    ident = world.identity(spec.ns, spec.k)
    outfit = world.outfit(spec.outfit_ns, spec.outfit)
    cam = world.camera(flavor_ns, spec.camera)
    pose = R.sample_pose(rng, cfg.difficulty, cfg.height, cfg.width)
    occluder, other = None, None
    if spec.kind != "junk" and rng.random() < spec.p_occluded:
        occluder = R._choice(rng, R.OCCLUDERS, p=_OCCLUDER_P)
        if occluder == "person":
            ons = _PASSERBY_NS_OFFSET + flavor_ns
            orng = _rng(cfg.seed, _S_OCC, ons, spec.index)
            o_ident, o_outfit = R.sample_identity(orng), R.sample_outfit(orng)
            o_pose = R.sample_pose(orng, cfg.difficulty, cfg.height, cfg.width)
            other = (o_ident, o_outfit, o_pose, R.figure_colours(o_ident, o_outfit, orng, cfg.difficulty))
    res = R.render(cfg.height, cfg.width, ident, outfit, pose, cam, world.background(flavor_ns, spec.camera), rng,
                   cfg.difficulty, occluder=occluder, other=other, junk=spec.kind == "junk")
    attrs = {**world.attributes(spec.ns, spec.k, spec.outfit_ns, spec.outfit), "view": pose.view,
             "walking_phase": round(pose.phase, 4), "camera": spec.camera, "camera_factors": world.camera_attributes(
                 flavor_ns, spec.camera), "occluder": res.info["occluder"],
             "visible_fraction": res.info["visible_fraction"], "uniform": spec.uniform,
             "outfit_slot": spec.outfit_slot, "junk": spec.kind == "junk"}
    return res, attrs


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))


_PNG_END = _png_chunk(b"IEND", b"")


@functools.lru_cache(maxsize=16)
def _png_header(h: int, w: int) -> bytes:
    """PNG signature and IHDR of an 8-bit grayscale h x w image."""
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))


def png_bytes(labels: np.ndarray) -> bytes:
    """A label map as an 8-bit grayscale PNG (filter None, zlib level 1).

    Four times faster than PIL's PNG encoder on 128x64 maps, and any PNG
    reader (PIL, torchvision, OpenCV) decodes it to the same array.
    """
    h, w = labels.shape
    raw = np.empty((h, w + 1), dtype=np.uint8)
    raw[:, 0] = 0  # each row starts with its filter type, 0 (None)
    raw[:, 1:] = labels
    return _png_header(h, w) + _png_chunk(b"IDAT", zlib.compress(raw, 1)) + _PNG_END


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    """Baseline JPEG of an RGB or RGBX image at ``quality`` (4:2:0, no optimisation): the bytes
    ``image.save(fp, "JPEG", quality=quality)`` writes, from PIL's encoder directly, which skips 40 %
    of ``save``'s time."""
    return image.tobytes("jpeg", "RGB", quality)


def _render_chunk(job: tuple) -> list[tuple[str, str, int, dict | None]]:
    """Worker: render, write image + masks; return (meta JSON line, split, pid, CUHK-PEDES entry) per image."""
    cfg, flavor_ns, dset, specs, pedes = job
    world = _world(cfg)
    records = []
    rng = _rng(cfg.seed, _S_IMAGE, flavor_ns)
    for spec in specs:
        _rekey(rng, cfg.seed, _S_IMAGE, flavor_ns, spec.index)  # the image's stream: render, then text
        res, attrs = render_spec(world, flavor_ns, spec, rng)
        cam = world.camera(flavor_ns, spec.camera)
        part, lip = res.part, res.lip
        if cfg.mask_noise > 0:
            part, lip = R.corrupt_masks(part, lip, cfg.mask_noise, _rng(cfg.seed, _S_NOISE, flavor_ns, spec.index))
        stem = os.path.splitext(spec.rel)[0] + ".png"
        _write(os.path.join(dset, spec.rel), _jpeg_bytes(res.image, cam.jpeg_quality))
        _write(os.path.join(dset, "masks", stem), png_bytes(part))
        _write(os.path.join(dset, "parsing", stem), png_bytes(lip))
        scgi, id_text, clothes_text, pedes_styles = world.texts(spec.ns, spec.k, spec.outfit_ns, spec.outfit)
        occluded = res.info["occluder"] != "none"
        clothes = -1 if spec.kind == "junk" else (
            spec.outfit + (_DISTRACTOR_CLOTHES_OFFSET if spec.outfit_slot == -1 else 0))
        rec = {"path": spec.rel, "pid": spec.pid, "camid": spec.camid, "clothes_id": clothes,
               "occluded": occluded, "split": spec.split, "attributes": attrs,
               "caption": _pick(scgi, rng),
               "id_descriptions": _pick_styles(id_text, rng),
               "clothes_descriptions": _pick_styles(clothes_text, rng)}
        raw = None
        if pedes:  # the CUHK-PEDES entry, built here so the parent only concatenates
            rec["captions"] = _pick_two(pedes_styles, rng)
            raw = {"split": spec.split, "captions": rec["captions"], "file_path": spec.rel[len("imgs/"):],
                   "processed_tokens": [processed_tokens(c) for c in rec["captions"]], "id": spec.pid}
        split = "junk" if spec.kind == "junk" else spec.split
        records.append((json.dumps(rec, separators=(",", ":")), split, spec.pid, raw))
    return records


def _pool_context():
    """fork where it is safe, spawn elsewhere.

    fork starts workers instantly (they inherit the imported modules). It is safe only from a
    single-threaded process: a lock another thread holds at the fork stays locked in the
    child forever. A Ray Tune trial (run in a thread of an actor that has several) hung that
    way in the pool's teardown, so any other Python thread alive means spawn, which costs
    each worker ~0.3 s to import this torch-free module."""
    single = threading.current_thread() is threading.main_thread() and threading.active_count() == 1
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if single and "fork" in methods else "spawn")


def _run_jobs(jobs: list[tuple], workers: int) -> Iterable[list[dict]]:
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield _render_chunk(job)
        return
    with _pool(min(workers, len(jobs))) as pool:
        yield from pool.imap(_render_chunk, jobs)


def _pool(processes: int):
    """A worker pool. The renderer's compiled kernels are loaded here first: forked workers inherit
    them, where each would otherwise spend about a second importing numba and loading them."""
    R.kernels()
    return _pool_context().Pool(processes=processes)


def _chunks(seq: list, size: int) -> list[list]:
    return [seq[i:i + size] for i in range(0, len(seq), size)]


# --------------------------------------------------------------------------- writing a flavor


def _params(flavor: str, n_ids: int, ipi: int, seed: int, mask_noise: float, difficulty: float,
            image_size: tuple[int, int]) -> dict:
    return {"generator": "reidbench.datasets.synthetic", "version": GENERATOR_VERSION,
            "source": source_fingerprint(), "flavor": flavor,
            "ids": n_ids, "images_per_id": ipi, "seed": seed, "mask_noise": mask_noise, "difficulty": difficulty,
            "image_size": list(image_size)}


def _read_complete(folder: Path) -> dict | None:
    try:
        return json.loads((folder / COMPLETE_FILE).read_text())
    except (OSError, ValueError):
        return None


def _write_flavor(out: Path, flavor: str, n_ids: int, ipi: int, seed: int, mask_noise: float, difficulty: float,
                  image_size: tuple[int, int], workers: int) -> Path:
    final = out / flavor
    dset_name = DATASET_DIRS[flavor]
    params = _params(flavor, n_ids, ipi, seed, mask_noise, difficulty, image_size)
    done = _read_complete(final)
    if done is not None and done.get("params") == params:
        return final / dset_name
    if final.exists() and done is None:
        raise FileExistsError(f"{final} exists but has no {COMPLETE_FILE} marker written by the synthetic "
                              f"generator; refusing to overwrite it (choose another --out)")
    partial = out / f".{flavor}.partial"
    if partial.exists():  # an interrupted earlier run
        shutil.rmtree(partial)
    dset = partial / dset_name
    specs = plan(flavor, n_ids, ipi, seed, difficulty)
    for d in sorted({os.path.dirname(s.rel) for s in specs}):
        for root in ("", "masks", "parsing"):
            os.makedirs(os.path.join(dset, root, d), exist_ok=True)
    cfg = WorldConfig(seed=seed, difficulty=float(difficulty), height=image_size[0], width=image_size[1],
                      mask_noise=float(mask_noise))
    ns = _FLAVOR_NS[flavor]
    pedes = flavor == "pedes"
    jobs = [(cfg, ns, str(dset), chunk, pedes) for chunk in _chunks(specs, 48)]
    images: dict[str, int] = {}
    pids: dict[str, set] = {}
    raw = []
    with open(dset / META_FILE, "w") as meta:
        for chunk_records in _run_jobs(jobs, workers):
            for line, split, pid, entry in chunk_records:
                meta.write(line + "\n")
                images[split] = images.get(split, 0) + 1
                pids.setdefault(split, set()).add(pid)
                if entry is not None:
                    raw.append(entry)
    # per split as the adapters count them; Market's pid -1 images (dropped by adapters) under "junk"
    counts = {split: {"images": n, "ids": len(pids[split])} for split, n in images.items()}
    if pedes:
        (dset / "reid_raw.json").write_text(json.dumps(raw))
    (partial / COMPLETE_FILE).write_text(json.dumps({"params": params, "counts": counts}, indent=1, sort_keys=True))
    if final.exists():
        old = out / f".{flavor}.old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(partial, final)
        shutil.rmtree(old)
    else:
        os.replace(partial, final)
    return final / dset_name


def _per_flavor(value, flavor: str, default: Mapping[str, int] | None, name: str) -> int:
    if value is None:
        if default is None:
            raise ValueError(f"{name} is required")
        return default[flavor]
    if isinstance(value, Mapping):
        if flavor not in value:
            if default is not None:
                return default[flavor]
            raise ValueError(f"{name} has no entry for flavor {flavor!r}")
        value = value[flavor]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int (or a mapping flavor -> int), got {value!r}")
    return int(value)


def synthesize(out: str | os.PathLike, flavor: str | Iterable[str] = "all", ids: int | Mapping[str, int] = 200,
               seed: int = 0, mask_noise: float = 0.0, difficulty: float = 0.5,
               image_size: tuple[int, int] = (128, 64), workers: int = 2,
               images_per_id: int | Mapping[str, int] | None = None) -> dict[str, str]:
    """Write synthetic benchmarks; return {flavor: dataset folder} (the folder to give the adapter).

    ``ids``: identities per flavor (int, or a mapping flavor -> int). Market and
    Occluded-Duke split them half train / half test (a quarter of Duke's test
    ids appear only in the gallery); PRCC 60/10/30 train/val/test; CUHK-PEDES
    50/10/40 (``PEDES_SPLIT``). ``images_per_id`` defaults to {market: 12, occluded: 12, cc: 12,
    pedes: 4}. ``mask_noise`` in [0, 1]: expected fraction of each part
    mask's foreground pixels given a wrong label (``render.corrupt_masks``);
    images do not depend on it. ``difficulty`` in [0, 1] scales every
    nuisance factor (illumination, blur, resolution, noise, clutter, pose
    jitter, occluder size, uniform share, outfit changes).

    A flavor folder is built under ``OUT/.<flavor>.partial`` and renamed into
    place with a ``.complete`` marker holding the parameters: a later call
    with the same parameters returns at once, an interrupted or differently
    parameterised one is rebuilt.
    """
    flavors = list(FLAVORS) if flavor == "all" else ([flavor] if isinstance(flavor, str) else list(flavor))
    for f in flavors:
        if f not in FLAVORS:
            raise ValueError(f"unknown flavor {f!r}; expected one of {', '.join(FLAVORS)} or 'all'")
    if not 0.0 <= float(difficulty) <= 1.0:
        raise ValueError(f"difficulty must lie in [0, 1], got {difficulty}")
    if not 0.0 <= float(mask_noise) <= 1.0:
        raise ValueError(f"mask_noise must lie in [0, 1], got {mask_noise}")
    h, w = (int(image_size[0]), int(image_size[1]))
    if h < 32 or w < 16:
        raise ValueError(f"image_size must be at least (32, 16) (height, width), got {image_size}")
    if int(seed) < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = {}
    for f in flavors:
        n = _per_flavor(ids, f, None, "ids")
        ipi = _per_flavor(images_per_id, f, DEFAULT_IMAGES_PER_ID, "images_per_id")
        result[f] = str(_write_flavor(out, f, n, ipi, int(seed), float(mask_noise), float(difficulty), (h, w),
                                      int(workers)))
    return result


# --------------------------------------------------------------------------- pretraining pairs


def pretraining_caption(texts: tuple, rng: np.random.Generator) -> str:
    """One pretraining caption from ``World.texts``' variants of an (identity, outfit):
    2/6 SCGI template, 1/6 CUHK-PEDES style, 1/6 per description style, where a
    description caption is an identity description followed by a clothing one.

    Both detailed descriptions together run to 99 tokens, past the 77-token CLIP
    context (the clothing, the visible part, was cut off), so the detailed style
    pairs a detailed description with a terse one, the identity or the clothing
    detailed with equal probability: every caption fits the context.
    """
    scgi, ids, clothes, pedes_styles = texts
    style = int(rng.integers(6))
    if style <= 1:
        return _pick(scgi, rng)
    if style == 2:
        return _pick(pedes_styles, rng)
    s = ("terse", "detailed", "list")[style - 3]
    if s == "detailed":
        detailed_id = rng.random() < 0.5
        return (_pick(ids["detailed" if detailed_id else "terse"], rng) + " "
                + _pick(clothes["terse" if detailed_id else "detailed"], rng))
    return _pick(ids[s], rng) + " " + _pick(clothes[s], rng)


def _pretrain_chunk(job: tuple) -> tuple[np.ndarray, list[str], list[dict]]:
    cfg, n_ids, indices = job
    world = _world(cfg)
    images, captions, attributes = [], [], []
    plan_rng, rng = _rng(cfg.seed, _S_PLAN, _PRETRAIN_NS), _rng(cfg.seed, _S_IMAGE, _PRETRAIN_NS)
    for i in indices:
        _rekey(plan_rng, cfg.seed, _S_PLAN, _PRETRAIN_NS, i)
        k = 1 + int(plan_rng.integers(n_ids))
        outfits, uni = wardrobe(cfg.seed, _PRETRAIN_NS, k, n_ids, cfg.difficulty)
        slot = int(plan_rng.integers(OUTFITS_PER_ID))
        spec = ImageSpec(index=i, rel="", pid=k, camid=0, ns=_PRETRAIN_NS, k=k, outfit_ns=_PRETRAIN_NS,
                         outfit=outfits[slot], outfit_slot=slot, uniform=uni and slot == 0,
                         camera=int(plan_rng.integers(NUM_CAMERAS["pretrain"])), p_occluded=0.15)
        _rekey(rng, cfg.seed, _S_IMAGE, _PRETRAIN_NS, i)
        res, attrs = render_spec(world, _PRETRAIN_NS, spec, rng)
        images.append(np.asarray(res.image)[..., :3])
        captions.append(pretraining_caption(world.texts(_PRETRAIN_NS, k, _PRETRAIN_NS, spec.outfit), rng))
        attrs["pid"] = k
        attrs["clothes_id"] = spec.outfit
        attributes.append(attrs)
    return np.stack(images), captions, attributes


def pretraining_pairs(n_images: int, seed: int = 0, image_size: tuple[int, int] = (128, 64),
                      difficulty: float = 0.5, workers: int = 1
                      ) -> tuple[np.ndarray, list[str], list[dict]]:
    """In-memory image-caption pairs for contrastive CLIP pretraining.

    Identities, outfits and cameras come from a namespace no benchmark flavor
    uses (so no benchmark split shares a person with them), about four
    images per identity, 24 cameras, 15 % occluded. Captions mix the SCGI
    template, CUHK-PEDES-style sentences and identity + clothing
    descriptions in the three styles, so every word of ``ATTRIBUTE_VOCAB``
    and its prompt templates occurs. Returns (uint8 [N, H, W, 3], captions,
    attributes) where attributes hold every known factor plus ``pid`` and
    ``clothes_id`` (both in the pretraining namespace).
    """
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if int(seed) < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    cfg = WorldConfig(seed=int(seed), difficulty=float(difficulty), height=int(image_size[0]),
                      width=int(image_size[1]))
    n_ids = max(1, n_images // 4)
    jobs = [(cfg, n_ids, chunk) for chunk in _chunks(list(range(n_images)), 256)]
    if workers <= 1 or len(jobs) <= 1:
        parts = [_pretrain_chunk(j) for j in jobs]
    else:
        with _pool(min(workers, len(jobs))) as pool:
            parts = pool.map(_pretrain_chunk, jobs)
    images = np.concatenate([p[0] for p in parts])
    captions = [c for p in parts for c in p[1]]
    attributes = [a for p in parts for a in p[2]]
    return images, captions, attributes


def tokenizer_corpus(n_people: int = 500, seed: int = 12345) -> list[str]:
    """Every kind of text the generator writes, without rendering a pixel.

    All caption and description variants of ``n_people`` random
    (identity, outfit) pairs, plus every ``ATTRIBUTE_VOCAB`` value and every
    prompt template filled with its factor's values, so a word-level
    tokenizer trained on it never meets an unknown word in synthetic text.
    """
    texts: list[str] = []
    for j in range(n_people):
        rng = _rng(seed, _S_PLAN, _PRETRAIN_NS + 1, j)
        i, o = R.sample_identity(rng), R.sample_outfit(rng)
        texts += scgi_caption_variants(i, o) + pedes_caption_variants(i, o)
        for variants in (*id_description_variants(i).values(), *clothes_description_variants(o).values()):
            texts += variants
    for key, values in ATTRIBUTE_VOCAB.items():
        if key == "prompt_templates":
            texts += [t.format(v) for factor, t in values.items() for v in ATTRIBUTE_VOCAB[factor]]
        elif key != "colour_rgb":
            texts.append(" ".join(str(v) for v in values))
    return texts


def source_fingerprint() -> str:
    """Hash of the generator's source (this module, the renderer and its kernels): a cache key for anything
    derived from synthetic data (tokenizer, pretrained CLIP, generated benchmarks)."""
    digest = hashlib.sha256()
    for module in (__file__, R.__file__, Path(R.__file__).with_name("raster.py")):
        digest.update(Path(module).read_bytes())
    return digest.hexdigest()[:12]


def read_meta(dataset_folder: str | os.PathLike) -> dict[str, dict]:
    """The side-car records of a synthetic dataset folder, keyed by relative image path."""
    path = Path(dataset_folder) / META_FILE
    with open(path) as fh:
        return {rec["path"]: rec for rec in map(json.loads, fh)}


__all__ = [
    "ATTRIBUTE_VOCAB", "DATASET_DIRS", "FLAVORS", "ImageSpec", "World", "WorldConfig", "clothes_descriptions",
    "id_descriptions", "pedes_captions", "plan", "pretraining_caption", "pretraining_pairs", "processed_tokens", "read_meta",
    "scgi_caption", "source_fingerprint", "synthesize", "tokenizer_corpus", "wardrobe",
]
