"""Renderer of person-like figures with known factors.

The synthetic benchmark (``reidbench.datasets.synthetic``) needs images whose
every factor is known: who the person is (identity), what they wear (outfit),
how the camera sees them (illumination, blur, resolution, background), how
they stand (pose, view) and what hides them (occluders). This module draws one
image from those factors and returns, beside the image, the exact 5-part
ProFD label map and the 20-class LIP parsing map.

Drawing is painter's-algorithm over a handful of primitives (capsules for
limbs, trapezoids for torso and skirt, super-ellipses for the head). Python
computes the figure's geometry and records one row of numbers per primitive;
the compiled loops of ``raster`` evaluate each primitive inside its bounding
box, and every primitive writes its colour, its LIP label and its part label
at once, so the label maps agree with the pixels by construction. Pixels
covered by an occluder (or by a bag, which neither LIP nor ProFD has a class
for) are background in both maps.

Identity cues that are not colours exist on purpose: body proportions
(shoulder/hip widths, torso/leg ratio, limb thickness), head size and shape
(round/oval/square super-ellipse), hair length (hair is drawn larger than an
8x8 patch at 128x64), glasses, gait (stride, arm swing, stance, lean).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

# --------------------------------------------------------------------------- labels

#: The 20 LIP classes, index = label value in the parsing maps.
LIP_LABELS = (
    "Background", "Hat", "Hair", "Glove", "Sunglasses", "UpperClothes", "Dress", "Coat", "Socks", "Pants",
    "Jumpsuits", "Scarf", "Skirt", "Face", "Left-arm", "Right-arm", "Left-leg", "Right-leg", "Left-shoe",
    "Right-shoe",
)
#: ProFD's five body parts (index 0 is background).
PART_LABELS = ("background", "head", "upper arms and torso", "lower arms and torso", "legs", "feet")

BG, HAT, HAIR, SUNGLASSES, UPPER, COAT, PANTS, SKIRT, FACE = 0, 1, 2, 4, 5, 7, 9, 12, 13
L_ARM, R_ARM, L_LEG, R_LEG, L_SHOE, R_SHOE = 14, 15, 16, 17, 18, 19
P_HEAD, P_UPPER, P_LOWER, P_LEGS, P_FEET = 1, 2, 3, 4, 5
_ROWS = -1  # torso garments: part 2 above the elbow line, 3 down to the hip line, 4 below (see Painter.set_rows)

#: Representative LIP label for each part, used when a simulated parser error relabels a region.
_PART_DEFAULT_LIP = {1: FACE, 2: UPPER, 3: UPPER, 4: PANTS, 5: L_SHOE}

# --------------------------------------------------------------------------- vocabularies

COLOUR_RGB = {
    "black": (0.10, 0.10, 0.11), "white": (0.92, 0.92, 0.90), "grey": (0.52, 0.52, 0.54),
    "red": (0.80, 0.12, 0.13), "orange": (0.96, 0.52, 0.10), "yellow": (0.96, 0.86, 0.16),
    "green": (0.14, 0.58, 0.20), "blue": (0.15, 0.32, 0.82), "purple": (0.50, 0.20, 0.64),
    "pink": (0.97, 0.56, 0.72), "brown": (0.46, 0.28, 0.14), "khaki": (0.76, 0.69, 0.46),
}
UPPER_COLOURS = ("black", "white", "grey", "red", "orange", "yellow", "green", "blue", "purple", "pink")
LOWER_COLOURS = ("black", "grey", "white", "blue", "brown", "green", "red", "khaki")
SHOES_COLOURS = ("black", "white", "brown", "grey", "red", "blue")
BAG_COLOURS = ("black", "brown", "grey", "red", "blue")
HAIR_RGB = {
    "black": (0.07, 0.06, 0.05), "brown": (0.38, 0.22, 0.11), "blonde": (0.90, 0.77, 0.42),
    "auburn": (0.64, 0.24, 0.08), "grey": (0.68, 0.68, 0.68),
}
SKIN_RGB = {
    "pale": (0.98, 0.87, 0.78), "fair": (0.93, 0.75, 0.61), "olive": (0.80, 0.62, 0.43),
    "tan": (0.69, 0.49, 0.32), "brown": (0.50, 0.33, 0.20), "dark": (0.32, 0.20, 0.12),
}
UPPER_TYPES = ("t-shirt", "shirt", "jacket", "coat")
UPPER_PATTERNS = ("plain", "striped", "checked", "two-tone")
LOWER_TYPES = ("trousers", "shorts", "skirt")
LOWER_PATTERNS = ("plain", "striped", "checked")
BAGS = ("none", "backpack", "handbag")
GENDERS = ("man", "woman")
AGES = ("young", "middle-aged", "elderly")
BUILDS = ("slim", "average", "heavy")
HEIGHTS = ("short", "average", "tall")
HAIR_LENGTHS = ("short", "medium", "long")
HEAD_SHAPES = ("round", "oval", "square")
HEAD_SIZES = ("small", "medium", "large")
VIEWS = ("front", "back", "side")
OCCLUDERS = ("lower", "side", "person")

_HEAD_GEOMETRY = {"round": (0.92, 2.0), "oval": (0.74, 2.0), "square": (0.86, 3.6)}  # width/height, exponent
_BUILD_SCALE = {"slim": 0.85, "average": 1.0, "heavy": 1.2}

# --------------------------------------------------------------------------- factors


@dataclass(frozen=True)
class Identity:
    """Everything that stays with a person across outfits and cameras."""

    gender: str
    age: str
    build: str
    height: str
    height_ratio: float  # figure height relative to the camera's nominal height
    skin_tone: str
    skin_rgb: tuple
    hair_colour: str
    hair_rgb: tuple
    hair_length: str
    head_shape: str
    head_size: str
    head_ratio: float  # head height / figure height
    torso_ratio: float  # shoulder-to-hip / figure height
    shoulder: float  # shoulder half-width / figure height (before build scale)
    hip: float
    limb: float  # limb thickness multiplier
    arm_ratio: float
    stride: float  # thigh swing amplitude (rad)
    arm_swing: float  # upper-arm swing amplitude (rad)
    stance: float  # front-view leg spread (rad)
    arm_abduction: float  # front-view arm angle away from the body (rad)
    lean: float  # forward lean (x per unit height)
    glasses: bool

    def attributes(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()
                if k not in ("skin_rgb", "hair_rgb")}


@dataclass(frozen=True)
class Outfit:
    """One set of clothes; ``clothes_id`` is global, so uniforms share it across identities."""

    upper_type: str
    upper_colour: str
    upper_colour2: str
    upper_pattern: str
    lower_type: str
    lower_colour: str
    lower_colour2: str
    lower_pattern: str
    shoes_colour: str
    hat: str  # "none" or a colour name (a cap)
    bag: str
    bag_colour: str
    skirt_length: float
    pattern_period: float  # stripe / check period as a fraction of figure height
    tint: tuple  # per-garment multiplicative tint (upper, lower, shoes), fixed for the outfit

    def attributes(self) -> dict:
        d = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items() if k != "tint"}
        if self.bag == "none":  # the drawn colour of a bag nobody carries is not a factor
            d["bag_colour"] = "none"
        return d


@dataclass(frozen=True)
class Pose:
    view: str
    facing: int  # +1 walking towards image right (side view), -1 left
    phase: float  # walking phase (rad)
    stride_mult: float
    lean: float
    dx: float  # horizontal shift (pixels)
    dy: float
    scale: float

    def attributes(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Camera:
    """Per-camera nuisance factors; all magnitudes grow with the difficulty knob."""

    gain: float
    cast: tuple  # per-channel multipliers (colour cast)
    contrast: float
    vgrad: float  # vertical illumination gradient
    blur: float  # Gaussian sigma in pixels at 128 rows
    lowres: float  # down-then-up resampling factor (1 = none)
    noise: float  # sensor noise std (0..1 scale)
    scale: float  # nominal figure height / image height
    jpeg_quality: int
    background_seed: int

    def attributes(self) -> dict:
        return {k: ([round(x, 4) for x in v] if isinstance(v, tuple) else (round(v, 4) if isinstance(v, float) else v))
                for k, v in self.__dict__.items() if k != "background_seed"}


def _choice(rng: np.random.Generator, options, p=None):
    """One option, uniformly or with probabilities ``p`` (plain Python: rng.choice costs ~30 us,
    rng.integers three times rng.random)."""
    if p is None:
        return options[int(rng.random() * len(options))]
    u, acc = rng.random() * sum(p), 0.0
    for option, weight in zip(options, p):
        acc += weight
        if u < acc:
            return option
    return options[-1]


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw identity factors. Nothing here looks at clothes: outfits come from their own stream."""
    gender = _choice(rng, GENDERS)
    age = _choice(rng, AGES, p=[0.45, 0.35, 0.20])
    build = _choice(rng, BUILDS, p=[0.3, 0.45, 0.25])
    height_ratio = float(rng.uniform(0.90, 1.04))
    height = "short" if height_ratio < 0.945 else ("tall" if height_ratio > 0.995 else "average")
    skin = _choice(rng, tuple(SKIN_RGB))
    hair_p = [0.10, 0.12, 0.06, 0.06, 0.66] if age == "elderly" else [0.36, 0.30, 0.15, 0.13, 0.06]
    hair = _choice(rng, tuple(HAIR_RGB), p=hair_p)
    hair_len = _choice(rng, HAIR_LENGTHS, p=[0.62, 0.26, 0.12] if gender == "man" else [0.22, 0.33, 0.45])
    head_shape = _choice(rng, HEAD_SHAPES)
    head_ratio = float(rng.uniform(0.135, 0.175))
    head_size = "small" if head_ratio < 0.148 else ("large" if head_ratio > 0.162 else "medium")
    man = gender == "man"
    skin_rgb = tuple(float(c) for c in np.clip(np.array(SKIN_RGB[skin]) * rng.uniform(0.95, 1.05), 0, 1))
    hair_rgb = tuple(float(c) for c in np.clip(np.array(HAIR_RGB[hair]) * rng.uniform(0.9, 1.1), 0, 1))
    return Identity(
        gender=gender, age=age, build=build, height=height, height_ratio=height_ratio,
        skin_tone=skin, skin_rgb=skin_rgb, hair_colour=hair, hair_rgb=hair_rgb, hair_length=hair_len,
        head_shape=head_shape, head_size=head_size, head_ratio=head_ratio,
        torso_ratio=float(rng.uniform(0.26, 0.33)),
        shoulder=(0.128 if man else 0.108) * float(rng.uniform(0.9, 1.1)),
        hip=(0.080 if man else 0.095) * float(rng.uniform(0.9, 1.1)),
        limb=float(rng.uniform(0.88, 1.15)),
        arm_ratio=float(rng.uniform(0.92, 1.08)),
        stride=float(rng.uniform(0.15, 0.5)) * (0.7 if age == "elderly" else 1.0),
        arm_swing=float(rng.uniform(0.05, 0.45)),
        stance=float(rng.uniform(0.0, 0.09)),
        arm_abduction=float(rng.uniform(0.05, 0.22)),
        lean=float(rng.uniform(-0.02, 0.03)) + (0.05 if age == "elderly" else 0.0),
        glasses=bool(rng.random() < 0.25),
    )


def sample_outfit(rng: np.random.Generator) -> Outfit:
    uc = int(rng.integers(len(UPPER_COLOURS)))
    uc2 = (uc + 1 + int(rng.integers(len(UPPER_COLOURS) - 1))) % len(UPPER_COLOURS)
    lc = int(rng.integers(len(LOWER_COLOURS)))
    lc2 = (lc + 1 + int(rng.integers(len(LOWER_COLOURS) - 1))) % len(LOWER_COLOURS)
    hat = _choice(rng, UPPER_COLOURS) if rng.random() < 0.15 else "none"
    return Outfit(
        upper_type=_choice(rng, UPPER_TYPES, p=[0.35, 0.25, 0.25, 0.15]),
        upper_colour=UPPER_COLOURS[uc], upper_colour2=UPPER_COLOURS[uc2],
        upper_pattern=_choice(rng, UPPER_PATTERNS, p=[0.55, 0.2, 0.12, 0.13]),
        lower_type=_choice(rng, LOWER_TYPES, p=[0.65, 0.17, 0.18]),
        lower_colour=LOWER_COLOURS[lc], lower_colour2=LOWER_COLOURS[lc2],
        lower_pattern=_choice(rng, LOWER_PATTERNS, p=[0.8, 0.1, 0.1]),
        shoes_colour=_choice(rng, SHOES_COLOURS),
        hat=hat,
        bag=_choice(rng, BAGS, p=[0.5, 0.3, 0.2]),
        bag_colour=_choice(rng, BAG_COLOURS),
        skirt_length=float(rng.uniform(0.35, 0.6)),
        pattern_period=float(rng.uniform(0.03, 0.05)),
        tint=tuple(float(x) for x in rng.uniform(0.93, 1.07, size=3)),
    )


def sample_pose(rng: np.random.Generator, difficulty: float, height: int, width: int) -> Pose:
    """View (front 40 %, back 35 %, side 25 %), walking phase and per-image jitter (grows with difficulty)."""
    u = rng.random(3).tolist()  # two draws instead of eight: generator calls dominate at this size
    z = rng.standard_normal(5).tolist()
    return Pose(
        view="front" if u[0] < 0.4 else ("back" if u[0] < 0.75 else "side"),
        facing=1 if u[1] < 0.5 else -1,
        phase=2 * math.pi * u[2],
        stride_mult=min(max(1.0 + 0.15 * z[0], 0.5), 1.5),
        lean=0.01 * (1 + difficulty) * z[1],
        dx=(0.03 + 0.05 * difficulty) * width * z[2],
        dy=(0.015 + 0.02 * difficulty) * height * z[3],
        scale=min(max(1.0 + (0.02 + 0.04 * difficulty) * z[4], 0.85), 1.15),
    )


def sample_camera(rng: np.random.Generator, difficulty: float) -> Camera:
    """Camera nuisances; at difficulty 0 every camera is neutral (no cast, blur, noise, resolution loss)."""
    d = float(difficulty)

    def between(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(rng.random())

    cast = 1.0 + rng.uniform(-1, 1, size=3) * 0.28 * d
    gain, contrast = between(1.0 - 0.45 * d, 1.0 + 0.25 * d), between(1.0 - 0.4 * d, 1.0 + 0.15 * d)
    vgrad, blur = between(-0.3 * d, 0.3 * d), between(0.0, 1.3 * d)
    lowres_on, lowres = rng.random() < (0.25 + 0.45 * d if d > 0 else 0.0), between(1.15, 1.15 + 1.45 * d)
    return Camera(
        gain=gain,
        cast=tuple(float(c) for c in cast / cast.mean()),
        contrast=contrast,
        vgrad=vgrad,
        blur=blur,
        lowres=lowres if lowres_on else 1.0,
        noise=between(0.0, 0.035 * d),
        scale=between(0.84 - 0.12 * d, 0.92),
        jpeg_quality=int(round(between(95 - 35 * d, 95))),
        background_seed=int(rng.integers(2**31)),
    )


# --------------------------------------------------------------------------- painter

# What the Painter hands the compiled loops of ``raster``. A primitive row: kind, id, the first
# and last+1 row it may touch, then its parameters (``raster.paint`` lists them per kind).
CAPSULE, TRAPEZOID, SUPERELLIPSE, RECT = 0, 1, 2, 3
PRIM_COLUMNS = 14
# A fill row: c1 (r, g, b), c2 (r, g, b), shade, pattern, period, y_ref, x_ref, split_y.
PATTERNS = {"plain": 0, "striped": 1, "vstriped": 2, "checked": 3, "two-tone": 4, "noise": 5}
FILL_COLUMNS = 12
NO_REGION = (math.inf, -math.inf, 0.0, 0.0, 0.0)  # a superellipse region that keeps every pixel
_PADDING = [(0.0,) * (PRIM_COLUMNS - 4 - n) for n in range(PRIM_COLUMNS - 3)]  # zeros after n parameters


@functools.cache
def kernels():
    """The compiled pixel loops (module ``raster``), imported on first use: importing numba and
    loading them takes about a second, which only rendering needs to pay."""
    from . import raster

    return raster


_GRIDS: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    g = _GRIDS.get((h, w))
    if g is None:
        yy, xx = np.mgrid[0:h, 0:w]
        g = _GRIDS[(h, w)] = (yy.astype(np.float32), xx.astype(np.float32))
    return g


class Fill:
    """Colour of a garment/skin region: ``c1``, or ``c1`` and ``c2`` in a pattern.

    Patterns (``PATTERNS``; ``raster.resolve`` says where each shows ``c2``)
    live in figure coordinates (``y_ref``, ``x_ref``) so stripes move with
    the person; ``shade`` is how much a primitive darkens towards its
    edge (a cylindrical look).
    """

    __slots__ = ("c1", "c2", "pattern", "period", "y_ref", "x_ref", "split_y", "shade")

    def __init__(self, c1, c2=None, pattern="plain", period=4.0, y_ref=0.0, x_ref=0.0, split_y=0.0, shade=0.28):
        if pattern not in PATTERNS:
            raise ValueError(f"unknown fill pattern {pattern!r}; expected one of {', '.join(PATTERNS)}")
        self.c1 = c1
        self.c2 = c1 if c2 is None else c2
        self.pattern, self.period, self.y_ref, self.x_ref = pattern, max(float(period), 2.0), y_ref, x_ref
        self.split_y, self.shade = split_y, shade

    def row(self) -> tuple:
        """The fill as a row of the table ``raster.resolve`` reads (``FILL_COLUMNS``)."""
        return (*self.c1, *self.c2, self.shade, PATTERNS[self.pattern], self.period, self.y_ref, self.x_ref,
                self.split_y)


class Painter:
    """Records primitives; ``raster.paint`` rasterises them into a code map, ``raster.resolve``
    turns that into colours and labels.

    A painted pixel holds the code ``id + min(rel2, 0.999)``: the id of the
    last primitive covering it (painter's algorithm: later primitives cover
    earlier ones) and its squared normalised distance from that primitive's
    axis, for shading. ``prims[id]`` is the primitive's (fill, LIP label,
    part label), so the label maps agree with the pixels by construction.
    Python only computes geometry and appends one row per primitive; every
    pixel loop is compiled.

    With ``labels_on`` False, primitives are drawn with label 0 (background):
    that is how occluders, bags and an occluding second pedestrian hide the
    target's body in the label maps.
    """

    def __init__(self, img: np.ndarray, cast=(1.0, 1.0, 1.0)):
        self.img = img  # float RGB, channels first (3, H, W)
        self.cast = np.asarray(cast, dtype=np.float32)  # the camera's colour cast, applied to every fill
        self.h, self.w = img.shape[1:]
        self.code = np.zeros((self.h, self.w), dtype=np.float32)
        self.prims: list[tuple] = [(None, BG, BG)]  # (fill, LIP label, part label) by id; 0 = none
        self.labels_on = True
        self.bands = (-1e9, 1e9)  # elbow line, hip line
        self._rows: list[tuple] = []  # primitive rows awaiting ``raster.paint``

    def set_rows(self, elbow_y: float, hip_y: float) -> None:
        """Row bands for torso garments (part label ``_ROWS``): ProFD splits the torso at elbow height."""
        self.bands = (elbow_y, hip_y)

    def _add(self, kind: int, fill: Fill, lip_label: int, part_label: int, params: tuple) -> None:
        params += _PADDING[len(params)]
        prims, rows = self.prims, self._rows
        if not self.labels_on:
            lip_label = part_label = BG
        elif part_label == _ROWS:  # a torso garment: one primitive per row band (upper, lower torso, below)
            edges = (0, *(min(max(math.ceil(b), 0), self.h) for b in self.bands), self.h)
            for a, b, part in zip(edges[:-1], edges[1:], (P_UPPER, P_LOWER, P_LEGS)):
                if b > a:
                    rows.append((kind, len(prims), a, b) + params)
                    prims.append((fill, lip_label, part))
            return
        rows.append((kind, len(prims), 0, self.h) + params)
        prims.append((fill, lip_label, part_label))

    def flush(self) -> None:
        """Paint the pending primitives into the code map."""
        if self._rows:
            if len(self.prims) > 256:  # ids are stored in float32 codes and looked up as bytes
                raise RuntimeError("more than 255 primitives in one image")
            rows = np.array(self._rows, dtype=np.float64)
            self._rows = []
            kernels().paint(self.code, rows)

    def capsule(self, a, b, r, fill: Fill, lip_label: int, part_label: int) -> None:
        """A segment a-b thickened by r (limbs, neck, shoes)."""
        self._add(CAPSULE, fill, lip_label, part_label, (*a, *b, r if r > 0.75 else 0.75))

    def trapezoid(self, yt, yb, cxt, cxb, hwt, hwb, fill: Fill, lip_label: int, part_label: int) -> None:
        """Rows ``yt..yb``; centre and half-width interpolate linearly from top to bottom."""
        if yb > yt:
            self._add(TRAPEZOID, fill, lip_label, part_label, (yt, yb, cxt, cxb, hwt, hwb))

    def superellipse(self, cy, cx, a, b, p, fill: Fill, lip_label: int, part_label: int,
                     region: tuple = NO_REGION) -> None:
        """|(x-cx)/a|^p + |(y-cy)/b|^p <= 1, within ``region`` = (ya, yc, hx, s, t): rows above
        ``ya``, and rows above ``yc`` where g(x) > t, g(x) = |x - hx| if s == 0 else s (x - hx)."""
        self._add(SUPERELLIPSE, fill, lip_label, part_label, (cy, cx, a, b, p, *region))

    def rect(self, y0, y1, x0, x1, fill: Fill, lip_label: int, part_label: int) -> None:
        """Pixels y0 <= y < y1, x0 <= x < x1 (flat: no shading)."""
        self._add(RECT, fill, lip_label, part_label, (y0, y1, x0, x1))

    def body_mask(self) -> np.ndarray:
        """Pixels currently showing a labelled body primitive."""
        self.flush()
        table = np.array([part != BG for _, _, part in self.prims], dtype=bool)
        return table.take(self.code.astype(np.uint8))

    def resolve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Colour the painted pixels into ``img``; return (img, lip, part), ``img`` channels first."""
        self.flush()
        index: dict[Fill, int] = {}  # each fill's row in the fill table, in order of first use
        tables = np.array([(0 if f is None else index.setdefault(f, len(index)), lip, part)
                           for f, lip, part in self.prims], dtype=np.uint8).T  # rows: fill, LIP, part label
        fills = np.array([f.row() for f in index] or [(0.0,) * FILL_COLUMNS], dtype=np.float32)
        fills[:, 0:3] *= self.cast
        fills[:, 3:6] *= self.cast
        lip = np.empty((self.h, self.w), dtype=np.uint8)
        part = np.empty((self.h, self.w), dtype=np.uint8)
        kernels().resolve(self.code, self.img, tables[0], tables[1], tables[2], fills, lip, part)
        return self.img, lip, part


# --------------------------------------------------------------------------- the figure


@dataclass
class FigureColours:
    """RGB triples in [0, 1] (``hat`` None: no hat)."""

    skin: tuple
    hair: tuple
    upper: tuple
    upper2: tuple
    lower: tuple
    lower2: tuple
    shoes: tuple
    hat: tuple | None
    bag: tuple


def _scaled(name: str, scale: float) -> tuple:
    r, g, b = COLOUR_RGB[name]
    return min(r * scale, 1.0), min(g * scale, 1.0), min(b * scale, 1.0)


def figure_colours(ident: Identity, outfit: Outfit, rng: np.random.Generator, difficulty: float) -> FigureColours:
    """Nominal colours with the outfit's fixed tint and a per-image fading jitter (grows with difficulty)."""
    jit = rng.uniform(1.0 - 0.12 * difficulty, 1.0 + 0.08 * difficulty, size=5).tolist()
    u, lo, sh = outfit.tint
    o = outfit
    return FigureColours(
        skin=ident.skin_rgb, hair=ident.hair_rgb,
        upper=_scaled(o.upper_colour, u * jit[0]), upper2=_scaled(o.upper_colour2, u * jit[0]),
        lower=_scaled(o.lower_colour, lo * jit[1]), lower2=_scaled(o.lower_colour2, lo * jit[1]),
        shoes=_scaled(o.shoes_colour, sh * jit[2]), bag=_scaled(o.bag_colour, jit[4]),
        hat=_scaled(o.hat, jit[3]) if o.hat != "none" else None,
    )


def draw_person(p: Painter, ident: Identity, outfit: Outfit, pose: Pose, col: FigureColours,
                top: float, cx: float, F: float) -> None:
    """Paint one figure of height ``F`` pixels whose head top is at ``top`` and feet centre at ``cx``."""
    side = pose.view == "side"
    f = pose.facing
    bscale = _BUILD_SCALE[ident.build]
    hh = ident.head_ratio * F
    aspect, hp = _HEAD_GEOMETRY[ident.head_shape]
    hw = 0.5 * hh * aspect
    chin = top + hh
    shoulder_y = chin + 0.035 * F
    torso = ident.torso_ratio * F
    hip_y = shoulder_y + torso
    feet_y = top + F
    ankle_y = feet_y - 0.035 * F
    leg = ankle_y - hip_y
    elbow_line = shoulder_y + 0.5 * torso
    depth = 0.55 if side else 1.0
    sw = ident.shoulder * F * bscale * depth
    hipw = ident.hip * F * bscale * depth
    ra = 0.026 * F * bscale * ident.limb
    rl = 0.036 * F * bscale * ident.limb
    ua, fa = 0.17 * F * ident.arm_ratio, 0.15 * F * ident.arm_ratio
    # Forward lean: in side view towards the walking direction; frontal views lean sideways (sway).
    lean = (ident.lean * f if side else 0.0) + pose.lean
    A, B = ident.stride * pose.stride_mult, ident.arm_swing * pose.stride_mult

    def X(y: float, off: float = 0.0) -> float:
        return cx + off + lean * (feet_y - y)

    p.set_rows(elbow_line, hip_y)
    skin = Fill(col.skin)
    hair = Fill(col.hair, shade=0.2)
    period = outfit.pattern_period * F
    upper = Fill(col.upper, col.upper2, outfit.upper_pattern, period, shoulder_y, cx, elbow_line)
    lower_pattern = "vstriped" if outfit.lower_pattern == "striped" else outfit.lower_pattern
    lower = Fill(col.lower, col.lower2, lower_pattern, period, hip_y, cx)
    shoes = Fill(col.shoes, shade=0.15)
    bag = Fill(col.bag, shade=0.15)
    upper_lip = COAT if outfit.upper_type in ("jacket", "coat") else UPPER
    long_sleeves = outfit.upper_type != "t-shirt"

    # -- limb skeleton: (image side or near/far, lip labels, joints)
    legs, arms = [], []
    if side:
        near_left = f == 1  # walking right we see the person's left side
        for near, phase in ((False, pose.phase + math.pi), (True, pose.phase)):
            left = near == near_left
            th = A * math.sin(phase)
            shin_a = th - 1.1 * A * max(0.0, math.cos(phase))
            hip = (hip_y - 0.01 * F, X(hip_y, (0.15 if near else -0.15) * hipw * f))
            knee = (hip[0] + 0.5 * leg * math.cos(th), hip[1] + f * 0.5 * leg * math.sin(th))
            ankle = (knee[0] + 0.5 * leg * math.cos(shin_a), knee[1] + f * 0.5 * leg * math.sin(shin_a))
            legs.append((near, L_LEG if left else R_LEG, L_SHOE if left else R_SHOE, hip, knee, ankle))
            al = -B * math.sin(phase)
            sh = (shoulder_y + ra, X(shoulder_y, -0.1 * sw * f))
            el = (sh[0] + ua * math.cos(al), sh[1] + f * ua * math.sin(al))
            fl = al + 0.3 + 0.6 * B
            wr = (el[0] + fa * math.cos(fl), el[1] + f * fa * math.sin(fl))
            arms.append((near, L_ARM if left else R_ARM, sh, el, wr))
    else:
        for s in (-1, 1):
            left = (s == 1) == (pose.view == "front")  # front view: person's left is on image right
            phase = pose.phase + (0.0 if s == -1 else math.pi)
            swing = A * math.sin(phase)
            spread = ident.stance
            lf = leg * math.cos(swing)
            hip = (hip_y - 0.01 * F, X(hip_y, s * hipw * 0.5))
            ankle = (hip[0] + lf, hip[1] + s * lf * math.sin(spread))
            knee = (0.5 * (hip[0] + ankle[0]), 0.5 * (hip[1] + ankle[1]) + s * 0.012 * F)
            legs.append((True, L_LEG if left else R_LEG, L_SHOE if left else R_SHOE, hip, knee, ankle))
            fore = 1.0 - 0.25 * abs(math.sin(B * math.sin(phase + math.pi)))
            g = ident.arm_abduction
            sh = (shoulder_y + ra, X(shoulder_y, s * (sw - 0.7 * ra)))
            el = (sh[0] + ua * fore * math.cos(g), sh[1] + s * ua * math.sin(g))
            wr = (el[0] + fa * fore * math.cos(g - 0.15), el[1] + s * fa * math.sin(g - 0.15))
            arms.append((True, L_ARM if left else R_ARM, sh, el, wr))

    def draw_leg(lip_leg, lip_shoe, hip, knee, ankle):
        if outfit.lower_type != "trousers":  # trousers hide the whole leg: skip the skin underneath
            p.capsule(hip, knee, rl, skin, lip_leg, P_LEGS)
            p.capsule(knee, ankle, 0.9 * rl, skin, lip_leg, P_LEGS)
        if outfit.lower_type == "trousers":
            p.capsule(hip, knee, 1.22 * rl, lower, PANTS, P_LEGS)
            p.capsule(knee, (ankle[0] - 0.01 * F, ankle[1]), 1.12 * rl, lower, PANTS, P_LEGS)
        elif outfit.lower_type == "shorts":
            mid = (hip[0] + 0.55 * (knee[0] - hip[0]), hip[1] + 0.55 * (knee[1] - hip[1]))
            p.capsule(hip, mid, 1.3 * rl, lower, PANTS, P_LEGS)
        ay, ax = ankle[0] + 0.012 * F, ankle[1]
        if side:
            p.capsule((ay, ax - f * 0.012 * F), (ay, ax + f * 0.045 * F), 0.022 * F, shoes, lip_shoe, P_FEET)
        else:
            p.capsule((ay, ax - 0.016 * F), (ay, ax + 0.016 * F), 0.024 * F, shoes, lip_shoe, P_FEET)

    def draw_arm(lip_arm, sh, el, wr):
        if long_sleeves:
            p.capsule(sh, el, 1.15 * ra, upper, upper_lip, P_UPPER)
            p.capsule(el, wr, 1.08 * ra, upper, upper_lip, P_LOWER)
        else:
            p.capsule(sh, el, ra, skin, lip_arm, P_UPPER)
            p.capsule(el, wr, 0.95 * ra, skin, lip_arm, P_LOWER)
            mid = (sh[0] + 0.5 * (el[0] - sh[0]), sh[1] + 0.5 * (el[1] - sh[1]))
            p.capsule(sh, mid, 1.3 * ra, upper, UPPER, P_UPPER)
        hand = (wr[0] + 0.02 * F, wr[1])
        p.capsule(wr, hand, 1.05 * ra, skin, lip_arm, P_LOWER)

    def draw_backpack():
        if outfit.bag != "backpack":
            return
        y0, y1 = shoulder_y + 0.02 * F, shoulder_y + 0.7 * torso
        if pose.view == "back":
            p.rect(y0, y1, X(y0, -0.75 * sw), X(y0, 0.75 * sw), bag, BG, BG)
        elif side:
            x_back = X(y0, -f * sw)
            p.rect(y0, y1, min(x_back, x_back - f * 0.1 * F), max(x_back, x_back - f * 0.1 * F) + 1, bag, BG, BG)

    # ground shadow (image only)
    sy0, sy1 = int(max(feet_y - 0.02 * F, 0)), int(min(feet_y + 0.02 * F, p.h - 1)) + 1
    sx0, sx1 = int(max(cx - 0.2 * F, 0)), int(min(cx + 0.2 * F, p.w - 1)) + 1
    if sy1 > sy0 and sx1 > sx0:
        p.img[:, sy0:sy1, sx0:sx1] *= 0.75

    # -- paint, back to front
    for near, lip_arm, sh, el, wr in arms:
        if not near:
            draw_arm(lip_arm, sh, el, wr)
    if side:
        draw_backpack()
    for near, lip_leg, lip_shoe, hip, knee, ankle in legs:
        draw_leg(lip_leg, lip_shoe, hip, knee, ankle)
    cxh = X(hip_y)
    if outfit.lower_type in ("trousers", "shorts"):
        p.trapezoid(hip_y - 0.03 * F, hip_y + (0.06 if outfit.lower_type == "trousers" else 0.08) * F,
                    cxh, cxh, hipw, 0.85 * hipw, lower, PANTS, P_LEGS)
    else:  # skirt
        flare = 1.5 + 0.5 * A
        p.trapezoid(hip_y - 0.03 * F, hip_y + outfit.skirt_length * leg, cxh, X(hip_y + outfit.skirt_length * leg),
                    1.05 * hipw, flare * hipw, lower, SKIRT, P_LEGS)
    neck_r = 0.42 * hw
    p.capsule((chin - 0.03 * F, X(chin)), (shoulder_y + 0.01 * F, X(shoulder_y)), neck_r, skin, FACE, P_HEAD)
    hem = {"t-shirt": 0.02, "shirt": 0.02, "jacket": 0.05, "coat": 0.0}[outfit.upper_type]
    p.trapezoid(shoulder_y - 0.005 * F, hip_y + hem * F, X(shoulder_y), X(hip_y), sw, 1.08 * hipw,
                upper, upper_lip, _ROWS)
    if outfit.upper_type == "coat":
        coat_end = hip_y + 0.45 * leg
        p.trapezoid(hip_y, coat_end, X(hip_y), X(coat_end), 1.08 * hipw, 1.35 * hipw, upper, COAT, _ROWS)
    if pose.view == "back":
        draw_backpack()
    if not side and outfit.bag == "backpack" and pose.view == "front":  # straps
        for s in (-1, 1):
            p.capsule((shoulder_y, X(shoulder_y, s * 0.55 * sw)), (elbow_line, X(elbow_line, s * 0.5 * sw)),
                      0.012 * F, bag, BG, BG)
    for near, lip_arm, sh, el, wr in arms:
        if near:
            draw_arm(lip_arm, sh, el, wr)
    if outfit.bag == "handbag":
        near_arms = [a for a in arms if a[0]]
        _, _, _, _, wr = near_arms[-1]
        p.rect(wr[0] + 0.015 * F, wr[0] + 0.12 * F, wr[1] - 0.04 * F, wr[1] + 0.04 * F, bag, BG, BG)

    # -- head
    cy = top + 0.5 * hh
    hx = X(cy) + (f * 0.06 * hw if side else 0.0)
    long_hair = ident.hair_length == "long"
    p.superellipse(cy, hx, hw, 0.5 * hh, hp, skin, FACE, P_HEAD)
    hl = 0.45 if ident.hair_length == "short" else 0.5
    side_lim = {"short": 0.55, "medium": 0.95, "long": 1.0}[ident.hair_length]
    if pose.view == "front":  # the top of the head, and down the sides beyond the face
        region = (top + hl * hh, top + side_lim * hh, hx, 0.0, 0.62 * hw)
    elif pose.view == "back":
        lim = 0.82 if ident.hair_length == "short" else 1.05
        region = (top + lim * hh, -math.inf, 0.0, 0.0, 0.0)
    else:  # the top, and down the back of the head
        region = (top + hl * hh, top + side_lim * hh, hx, -float(f), 0.1 * hw)
    p.superellipse(cy - 0.08 * hh, hx, 1.22 * hw, 0.56 * hh * 1.12, hp, hair, HAIR, P_HEAD, region)
    if long_hair or (ident.hair_length == "medium" and pose.view == "back"):
        end = shoulder_y + (0.12 if long_hair else 0.02) * F
        if pose.view == "front":
            for s in (-1, 1):
                p.capsule((top + 0.5 * hh, hx + s * 0.85 * hw), (end, X(end, s * 0.95 * hw)), 0.34 * hw,
                          hair, HAIR, P_HEAD)
        elif pose.view == "back":
            p.trapezoid(cy, end, hx, X(end), 1.05 * hw, 0.95 * hw, hair, HAIR, P_HEAD)
        else:
            p.capsule((cy, hx - f * 0.55 * hw), (end, X(end, -f * 0.9 * hw)), 0.45 * hw, hair, HAIR, P_HEAD)
    if ident.glasses and pose.view != "back":
        gy = top + 0.42 * hh
        gh = max(1.3, 0.12 * hh)
        glasses = Fill((0.05, 0.05, 0.06), shade=0.0)
        if side:
            x0, x1 = sorted((hx + f * 0.1 * hw, hx + f * 1.0 * hw))
            p.rect(gy, gy + gh, x0, x1, glasses, SUNGLASSES, P_HEAD)
        else:
            p.rect(gy, gy + gh, hx - 0.78 * hw, hx + 0.78 * hw, glasses, SUNGLASSES, P_HEAD)
    if col.hat is not None:
        hat = Fill(col.hat, shade=0.2)
        cap = (top + 0.3 * hh, -math.inf, 0.0, 0.0, 0.0)
        p.superellipse(cy - 0.07 * hh, hx, 1.12 * hw, 0.6 * hh, hp, hat, HAT, P_HEAD, cap)
        by = top + 0.26 * hh
        if side:
            x0, x1 = sorted((hx - f * 0.9 * hw, hx + f * 1.7 * hw))
        else:
            x0, x1 = hx - 1.15 * hw, hx + 1.15 * hw
        p.rect(by, by + max(1.5, 0.08 * hh), x0, x1, hat, HAT, P_HEAD)


# --------------------------------------------------------------------------- background and camera

_OBJECT_COLOURS = np.array([
    (0.35, 0.35, 0.38), (0.55, 0.55, 0.58), (0.20, 0.22, 0.25), (0.25, 0.42, 0.20), (0.45, 0.32, 0.20),
    (0.70, 0.70, 0.72), (0.60, 0.15, 0.12), (0.15, 0.25, 0.55), (0.85, 0.80, 0.70),
], dtype=np.float32)


def make_background(seed: int, height: int, width: int, difficulty: float) -> np.ndarray:
    """A per-camera scene larger than one image (images crop it at random offsets).

    Wall texture (bricks, panels, smooth blotches or windows), a floor below a
    horizon, and clutter rectangles whose colours come from the clothing
    palette more often as difficulty grows, so background is not a free cue.
    """
    rng = np.random.default_rng(seed)
    d = float(difficulty)
    bh, bw = height + height // 4, 3 * width
    s = height / 128.0
    yy, xx = np.mgrid[0:bh, 0:bw].astype(np.float32)
    wall = np.clip(rng.uniform(0.3, 0.75) + rng.normal(0, 0.08, 3), 0.05, 0.95).astype(np.float32)
    floor = np.clip(rng.uniform(0.25, 0.65) + rng.normal(0, 0.06, 3), 0.05, 0.95).astype(np.float32)
    amp = 0.06 + 0.16 * d
    table = rng.uniform(-1, 1, size=(64, 64)).astype(np.float32)
    kind = int(rng.integers(4))
    if kind == 0:  # bricks
        bh_, bw_ = rng.uniform(4, 9) * s, rng.uniform(9, 20) * s
        row = np.floor(yy / bh_)
        xs = xx + (row % 2) * bw_ / 2
        tex = 0.5 * table[(row % 64).astype(np.int64), (np.floor(xs / bw_) % 64).astype(np.int64)]
        tex = np.where((yy % bh_ < s) | (xs % bw_ < s), -1.5, tex)
    elif kind == 1:  # vertical panels
        pw = rng.uniform(6, 20) * s
        col = np.floor(xx / pw)
        tex = np.where(xx % pw < s, -1.5, 0.8 * table[0, (col % 64).astype(np.int64)])
    elif kind == 2:  # smooth blotches
        low = Image.fromarray(table[: max(bh // 8, 2), : max(bw // 8, 2)].copy(), mode="F")
        tex = np.asarray(low.resize((bw, bh), Image.BILINEAR), dtype=np.float32) * 1.5
    else:  # windows
        gh, gw = rng.uniform(14, 26) * s, rng.uniform(12, 22) * s
        inside = (yy % gh > 0.3 * gh) & (xx % gw > 0.3 * gw)
        shade = 1.2 * np.sign(rng.uniform(-1, 1)) + 0.3 * table[3, (np.floor(xx / gw) % 64).astype(np.int64)]
        tex = np.where(inside, shade, 0.0)
    canvas = wall[None, None, :] * (1.0 + amp * tex[..., None])
    horizon = rng.uniform(0.55, 0.85) * bh
    ftex = np.where((np.floor(yy / (8 * s)) + np.floor(xx / (14 * s))) % 2 == 0, 1.0, -1.0) * 0.5 * amp
    canvas = np.where((yy >= horizon)[..., None], floor[None, None, :] * (1.0 + ftex[..., None]), canvas)
    n_clutter = int(rng.integers(2, 4 + int(8 * d)))
    palette = np.array([COLOUR_RGB[c] for c in UPPER_COLOURS + LOWER_COLOURS], dtype=np.float32)
    for _ in range(n_clutter):
        ch, cw = rng.uniform(6, 40) * s, rng.uniform(4, 30) * s
        y0, x0 = rng.uniform(0, bh - ch), rng.uniform(0, bw - cw)
        if rng.random() < 0.6 * d:
            colour = palette[rng.integers(len(palette))]
        else:
            colour = _OBJECT_COLOURS[rng.integers(len(_OBJECT_COLOURS))]
        canvas[int(y0):int(y0 + ch), int(x0):int(x0 + cw)] = colour * rng.uniform(0.8, 1.1)
    return np.clip(canvas, 0.0, 1.0).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _unit_noise(h: int, w: int) -> np.ndarray:
    """Fixed standard-normal noise twice the image size, channels first; images take random crops of it.

    Drawing 3*H*W normals per image costs more than the rest of the camera
    model; a crop at a random offset is as good for sensor noise and keeps
    every image a deterministic function of its own random stream.
    """
    bank = np.random.default_rng(0x5EED).standard_normal((2 * h, 2 * w, 3), dtype=np.float32)
    return np.ascontiguousarray(bank.transpose(2, 0, 1))


@functools.lru_cache(maxsize=64)
def _noise_bank(h: int, w: int, scale: float) -> np.ndarray:
    """``_unit_noise`` times one camera's noise level (one multiply per camera, not per image)."""
    return _unit_noise(h, w) * np.float32(scale)


@functools.lru_cache(maxsize=16)
def _ramp(h: int) -> np.ndarray:
    """Row position in [-0.5, 0.5) (the vertical illumination gradient's variable)."""
    return np.arange(h, dtype=np.float32) / h - 0.5


def camera_background(cam: Camera, height: int, width: int, difficulty: float) -> np.ndarray:
    """The camera's scene with its colour cast already applied, channels first (what ``render`` expects).

    Casting the cached scene once per camera, and the few fill colours per
    image, is much cheaper than multiplying every pixel of every image.
    """
    bg = make_background(cam.background_seed, height, width, difficulty)
    return np.ascontiguousarray((bg * np.asarray(cam.cast, dtype=np.float32)).transpose(2, 0, 1))


_NO_NOISE = np.zeros((3, 0, 0), dtype=np.float32)


def apply_camera(img: np.ndarray, cam: Camera, rng: np.random.Generator, difficulty: float) -> Image.Image:
    """Illumination (gain, vertical gradient, contrast), blur, sensor noise, resolution loss; an RGBX image.

    ``img`` (float RGB in [0, 1], channels first; overwritten) already carries the camera's
    colour cast (see ``camera_background`` and ``Painter``). Blur is n =
    round(2 sigma^2) passes of a [1,2,1]/4 kernel (each adds variance 1/2),
    sigma = ``cam.blur`` scaled with height (``raster.expose`` does the pixels).
    """
    h, w = img.shape[1:]
    z, oy, ox = rng.random(3).tolist()
    gain = cam.gain * (1.0 + 0.06 * difficulty * (2.0 * z - 1.0) * math.sqrt(3.0)) * cam.contrast * 255.0
    rows = (1.0 + cam.vgrad * _ramp(h)) * np.float32(gain)
    sigma = cam.blur * h / 128.0
    noise = _noise_bank(h, w, 255.0 * cam.noise) if cam.noise > 0 else _NO_NOISE
    # RGBX (RGB and a pad byte) is PIL's own layout of RGB: the image wraps this array without a copy
    rgbx = np.zeros((h, w, 4), dtype=np.uint8)
    kernels().expose(img, rows, 255.0 * 0.5 * (1.0 - cam.contrast) + 0.5, int(round(2.0 * sigma * sigma)),
                     noise, int(oy * h), int(ox * w), rgbx)
    pil = Image.frombuffer("RGBX", (w, h), rgbx, "raw", "RGBX", 0, 1)
    if cam.lowres > 1.05:
        small = (max(int(round(w / cam.lowres)), 4), max(int(round(h / cam.lowres)), 8))
        pil = pil.resize(small, Image.BILINEAR).resize((w, h), Image.BILINEAR)
    return pil


# --------------------------------------------------------------------------- occluders


def draw_occluder(p: Painter, kind: str, rng: np.random.Generator, difficulty: float,
                  top: float, F: float, cx: float,
                  other: tuple[Identity, Outfit, Pose, FigureColours] | None = None) -> None:
    """Cover part of the figure; covered pixels become background in both label maps.

    ``lower``: a car/bench/bush-like block rising from the bottom (covers legs,
    sometimes the lower torso); ``side``: a pole/wall entering from the left or
    right; ``person``: another pedestrian in front, shifted sideways (the hard
    case in Occluded-Duke). Sizes grow with ``difficulty``.
    """
    d = float(difficulty)
    h, w = p.h, p.w
    if kind == "person" and other is not None:
        o_ident, o_outfit, o_pose, o_col = other
        s = 1 if rng.random() < 0.5 else -1
        ocx = cx + s * rng.uniform(0.45, 0.7 - 0.15 * d) * w
        oF = F * rng.uniform(0.95, 1.1)
        p.labels_on = False
        draw_person(p, o_ident, o_outfit, o_pose, o_col, top + F - oF + rng.uniform(-0.02, 0.04) * F, ocx, oF)
        p.labels_on = True
        return
    base = _OBJECT_COLOURS[rng.integers(len(_OBJECT_COLOURS))] * np.float32(rng.uniform(0.7, 1.1))
    c2 = np.clip(base * np.float32(rng.uniform(0.6, 0.85)), 0, 1)
    pattern = ("plain", "striped", "vstriped", "noise")[int(rng.integers(4))]
    fill = Fill(base, c2, pattern, rng.uniform(3, 9) * h / 128.0, 0.0, 0.0, shade=0.0)
    if kind == "lower":  # always spans the feet's centre
        oh = F * rng.uniform(0.22, 0.32 + 0.3 * d)
        y0 = top + F - oh + rng.uniform(-0.02, 0.04) * F
        x0 = cx - rng.uniform(0.3, 1.0) * w
        x1 = cx + rng.uniform(0.3, 1.0) * w
        p.rect(y0, h + 1, x0, x1, fill, BG, BG)
    elif kind == "side":
        xs = np.flatnonzero(p.body_mask().any(axis=0))
        fx0, fx1 = (float(xs.min()), float(xs.max())) if xs.size else (cx - 0.1 * w, cx + 0.1 * w)
        cover = rng.uniform(0.25, 0.35 + 0.25 * d) * (fx1 - fx0 + 1)
        y0 = 0.0 if rng.random() < 0.5 else rng.uniform(0.15, 0.5) * h
        if rng.random() < 0.5:
            p.rect(y0, h + 1, -1, fx0 + cover, fill, BG, BG)
        else:
            p.rect(y0, h + 1, fx1 - cover + 1, w + 1, fill, BG, BG)
    else:
        raise ValueError(f"unknown occluder {kind!r}; expected one of {OCCLUDERS}")


# --------------------------------------------------------------------------- mask noise


def corrupt_masks(part: np.ndarray, lip: np.ndarray, noise: float, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Emulate an external human parser's errors on exact label maps.

    ``noise`` = m is the expected fraction of the exact part map's foreground
    pixels (label > 0) whose part label ends up wrong. The budget m * n_fg is
    spent as:

    * 50 % boundary jitter: pixels next to a part boundary (including the
      figure outline) take the labels of their neighbour at offset r = 1, 2, 3
      px (scaled with image height); the direction is drawn per 8x8 block and
      the blocks are visited in random order, so boundaries shift coherently
      over patches instead of turning to salt-and-pepper;
    * 30 % blob dropout: elliptical holes inside the figure set to background
      (a parser missing a region);
    * 20 % part swaps: an elliptical blob of one part relabelled as an
      adjacent part (head<->upper, upper<->lower torso, lower torso<->legs,
      legs<->feet), the LIP map taking the part's most frequent LIP label.

    Both maps change at the same pixels with consistent labels. Additionally,
    with probability m the LIP map's left/right classes (arms, legs, shoes)
    are swapped over the whole image, a classic parser confusion that leaves
    the part map untouched. If a budget cannot be spent (tiny figures) the
    rest is dropped, so the realised fraction is a slight under-estimate at
    large m (m above ~0.4).
    """
    if noise <= 0:
        return part, lip
    part = part.copy()
    lip = lip.copy()
    h, w = part.shape
    n_fg = int(np.count_nonzero(part))
    if n_fg == 0:
        return part, lip
    exact = part.copy()
    exact_lip = lip.copy()
    budget_jitter = 0.5 * noise * n_fg
    scale = max(1, int(round(h / 128)))
    block = 8
    nby, nbx = -(-h // block), -(-w // block)
    offsets = np.array([(-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)])
    yy, xx = np.mgrid[0:h, 0:w]
    changed = 0
    for radius in (1, 2, 3):
        if changed >= budget_jitter:
            break
        r = radius * scale
        k = rng.integers(len(offsets), size=(nby, nbx))
        order = rng.random((nby, nbx))
        kk = np.repeat(np.repeat(k, block, 0), block, 1)[:h, :w]
        prio = np.repeat(np.repeat(order, block, 0), block, 1)[:h, :w] + rng.random((h, w)) * 1e-3
        sy = np.clip(yy + offsets[kk, 0] * r, 0, h - 1)
        sx = np.clip(xx + offsets[kk, 1] * r, 0, w - 1)
        src_part = exact[sy, sx]
        cand = (src_part != exact) & (part == exact)
        n_cand = int(np.count_nonzero(cand))
        if n_cand == 0:
            continue
        take = int(min(n_cand, round(budget_jitter - changed)))
        idx = np.flatnonzero(cand)
        chosen = idx[np.argsort(prio.ravel()[idx], kind="stable")[:take]]
        cy, cx_ = np.unravel_index(chosen, (h, w))
        part[cy, cx_] = src_part[cy, cx_]
        lip[cy, cx_] = exact_lip[sy[cy, cx_], sx[cy, cx_]]
        changed += take

    Y, X = _grid(h, w)

    def blobs(budget: float, apply) -> None:
        spent, tries = 0.0, 0
        while spent < budget - 0.5 and tries < 40:
            tries += 1
            ys, xs = np.nonzero(part)
            if ys.size == 0:
                return
            i = int(rng.integers(ys.size))
            area = min(budget - spent, 0.02 * h * w * rng.uniform(0.3, 1.0))
            ry = math.sqrt(area / math.pi) * rng.uniform(0.8, 1.5)
            rx = max(area / (math.pi * ry), 0.7)
            inside = ((Y - ys[i]) / ry) ** 2 + ((X - xs[i]) / rx) ** 2 <= 1.0
            spent += apply(inside, int(part[ys[i], xs[i]]))

    def drop(inside, _label) -> int:
        sel = inside & (part > 0)
        n = int(np.count_nonzero(sel))
        part[sel] = 0
        lip[sel] = 0
        return n

    def swap(inside, label) -> int:
        neighbours = {1: (2,), 2: (1, 3), 3: (2, 4), 4: (3, 5), 5: (4,)}[label]
        target = neighbours[int(rng.integers(len(neighbours)))]
        sel = inside & (part == label)
        n = int(np.count_nonzero(sel))
        lips = lip[exact == target]
        target_lip = int(np.bincount(lips).argmax()) if lips.size else _PART_DEFAULT_LIP[target]
        part[sel] = target
        lip[sel] = target_lip
        return n

    blobs(0.3 * noise * n_fg, drop)
    blobs(0.2 * noise * n_fg, swap)
    if rng.random() < noise:
        swapped = lip.copy()
        for a, b in ((L_ARM, R_ARM), (L_LEG, R_LEG), (L_SHOE, R_SHOE)):
            swapped[lip == a] = b
            swapped[lip == b] = a
        lip = swapped
    return part, lip


# --------------------------------------------------------------------------- one image


@dataclass
class Rendered:
    image: Image.Image  # mode RGBX: RGB with an unused pad byte (``np.asarray(image)[..., :3]`` is the RGB)
    part: np.ndarray
    lip: np.ndarray
    info: dict


def render(height: int, width: int, ident: Identity, outfit: Outfit, pose: Pose, cam: Camera,
           background: np.ndarray, rng: np.random.Generator, difficulty: float,
           occluder: str | None = None, other: tuple | None = None, junk: bool = False) -> Rendered:
    """Render one image.

    ``occluder`` (one of OCCLUDERS) adds an occluder; if it hides less than
    8 % of the body (a passer-by beside rather than in front), a low obstacle
    is added as well, so an image flagged occluded always is. ``other`` is the
    (identity, outfit, pose, colours) of the occluding pedestrian. ``junk``
    renders a bad detection (Market's pid -1): the figure is zoomed and
    shifted so that only a fragment is in frame.
    """
    bh, bw = background.shape[1:]
    u, v = rng.random(2).tolist()  # the crop's offset (one draw: generator calls dominate at this size)
    oy, ox = int(u * (bh - height + 1)), int(v * (bw - width + 1))
    p = Painter(background[:, oy:oy + height, ox:ox + width].copy(), cam.cast)
    col = figure_colours(ident, outfit, rng, difficulty)
    F = min(height * cam.scale * ident.height_ratio * pose.scale, 0.98 * height)
    top = 0.5 * (height - F) + pose.dy
    cx = 0.5 * width + pose.dx
    if junk:
        F *= rng.uniform(1.6, 2.4)
        top = rng.uniform(-0.8, 0.1) * F
        cx = 0.5 * width + rng.uniform(-0.6, 0.6) * width
    draw_person(p, ident, outfit, pose, col, top, cx, F)
    info = {"occluder": "none", "visible_fraction": 1.0}
    n_body = 0
    if occluder is not None:
        n_body = int(np.count_nonzero(p.body_mask()))
        draw_occluder(p, occluder, rng, difficulty, top, F, cx, other)
        kinds = [occluder]
        if n_body and np.count_nonzero(p.body_mask()) > 0.92 * n_body:
            draw_occluder(p, "lower", rng, difficulty, top, F, cx)
            kinds.append("lower")
            if np.count_nonzero(p.body_mask()) > 0.92 * n_body:  # e.g. a figure shifted high: cover the lower half
                p.rect(top + 0.5 * F, height + 1, -1, width + 1, Fill(_OBJECT_COLOURS[0], shade=0.0), BG, BG)
        info["occluder"] = "+".join(kinds)
    img, lip, part = p.resolve()
    if occluder is not None:
        info["visible_fraction"] = round(float(np.count_nonzero(part)) / max(n_body, 1), 4)
    image = apply_camera(img, cam, rng, difficulty)
    return Rendered(image=image, part=part, lip=lip, info=info)
