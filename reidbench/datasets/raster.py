"""Compiled pixel loops of the synthetic renderer (numba).

``render.Painter`` records primitives as rows of numbers (the layout is
defined beside it: ``render.PRIM_COLUMNS``, ``render.FILL_COLUMNS``); these
kernels turn them into an image and its label maps. The numpy renderer they
replaced spent most of its time in numpy's per-call overhead (a 32x16 image
cost 72 % of a 128x64 one); here one call per step of an image costs a few
microseconds (``bench/synth_speed.py`` measures the generator).

Signatures are given explicitly, so the kernels compile when this module is
imported (about 5 s the first time: ``cache=True`` keeps the machine code
beside the source, or in numba's user cache where that is read-only) and a
wrong dtype or layout is an error at the call, not a silent recompilation.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .render import CAPSULE, PATTERNS, SUPERELLIPSE, TRAPEZOID

STRIPED, VSTRIPED, CHECKED, TWO_TONE, NOISE = (PATTERNS[k] for k in ("striped", "vstriped", "checked", "two-tone",
                                                                     "noise"))
# Share of a stripe cycle in the second colour (stripes), and of each axis' cycle (checks:
# c2 lines both ways cover 1 - 0.8 ** 2 = 36 %). The first colour dominates either way, so
# "a red and white striped t-shirt" is mostly red, and the garment's colour label (c1) is
# what the pixels show most of; with equal bands it was decided by the stripes' phase.
STRIPE_SHARE = np.float32(1.0 / 3.0)
CHECK_SHARE = np.float32(0.2)

_OPTS = dict(cache=True, nogil=True, boundscheck=False)


@numba.njit(inline="always")
def _span(lo: float, hi: float, n: int) -> tuple[int, int]:
    """Pixel indices [a, b) covering [lo, hi], clipped to [0, n) (``render.Painter`` boxes)."""
    a, b = math.floor(lo), math.ceil(hi) + 1
    return max(a, 0), min(b, n)


@numba.njit("void(float32[:, ::1], float64[:, ::1])", **_OPTS)
def paint(code: np.ndarray, prims: np.ndarray) -> None:
    """Paint primitives, in order, into the code map: a covered pixel gets ``id + min(rel2, 0.999)``.

    ``rel2`` is the pixel's squared normalised distance from the primitive's
    axis (0 on the axis, 1 on its outline), which ``resolve`` turns into
    shading. Row ``i`` of ``prims``: kind, id, row0, row1 (the primitive
    only touches rows row0 <= y < row1), then by kind:

    * CAPSULE ay, ax, by, bx, r: points within r of the segment a-b;
    * TRAPEZOID yt, yb, cxt, cxb, hwt, hwb: rows ceil(yt)..floor(yb), centre
      and half-width interpolated from top to bottom, ``rel2`` across;
    * SUPERELLIPSE cy, cx, a, b, p, then a region ya, yc, hx, s, t: points
      with |u|^p + |v|^p <= 1 (u = (x-cx)/a, v = (y-cy)/b, ``rel2`` = u^2)
      that also have y < ya, or y < yc and g(x) > t, where g(x) = |x - hx| if
      s == 0 else s (x - hx) (hair and caps: the head's top, and its sides);
    * RECT y0, y1, x0, x1: the half-open pixel rectangle, flat (``rel2`` 0).

    Pixels are sampled at integer coordinates (pixel centres).
    """
    h, w = code.shape
    for i in range(prims.shape[0]):
        q = prims[i]
        kind, ident = int(q[0]), np.float32(q[1])
        r0, r1 = max(int(q[2]), 0), min(int(q[3]), h)
        if kind == CAPSULE:
            ay, ax, by, bx, r = q[4], q[5], q[6], q[7], q[8]
            y0, y1 = _span(min(ay, by) - r, max(ay, by) + r, h)
            x0, x1 = _span(min(ax, bx) - r, max(ax, bx) + r, w)
            dy, dx = by - ay, bx - ax
            length = math.sqrt(dy * dy + dx * dx)
            inv = 1.0 / max(length, 1e-6)
            uy, ux, ir2 = dy * inv, dx * inv, 1.0 / (r * r)
            for y in range(max(y0, r0), min(y1, r1)):
                ya = y - ay
                for x in range(x0, x1):
                    xa = x - ax
                    proj = ya * uy + xa * ux
                    t = min(max(proj, 0.0), length)
                    rel2 = (ya * ya + xa * xa + t * (t - 2.0 * proj)) * ir2
                    if rel2 <= 1.0:
                        code[y, x] = ident + np.float32(min(rel2, 0.999))
        elif kind == TRAPEZOID:
            yt, yb, cxt, cxb, hwt, hwb = q[4], q[5], q[6], q[7], q[8], q[9]
            y0, y1 = _span(float(math.ceil(yt)), float(math.floor(yb)), h)
            x0, x1 = _span(min(cxt - hwt, cxb - hwb), max(cxt + hwt, cxb + hwb), w)
            inv = 1.0 / (yb - yt)
            for y in range(max(y0, r0), min(y1, r1)):
                t = (y - yt) * inv
                cx = cxt + t * (cxb - cxt)
                ihw = 1.0 / max(hwt + t * (hwb - hwt), 0.5)
                for x in range(x0, x1):
                    rel = (x - cx) * ihw
                    rel2 = rel * rel
                    if rel2 <= 1.0:
                        code[y, x] = ident + np.float32(min(rel2, 0.999))
        elif kind == SUPERELLIPSE:
            cy, cx, a, b, p = q[4], q[5], q[6], q[7], q[8]
            ya_lim, yc_lim, hx, s, reach = q[9], q[10], q[11], q[12], q[13]
            y0, y1 = _span(cy - b, cy + b, h)
            x0, x1 = _span(cx - a, cx + a, w)
            ia, ib = 1.0 / a, 1.0 / b
            for y in range(max(y0, r0), min(y1, r1)):
                v = abs(y - cy) * ib
                vp = v * v if p == 2.0 else v ** p
                for x in range(x0, x1):
                    u = abs(x - cx) * ia
                    u2 = u * u
                    if (u2 if p == 2.0 else u ** p) + vp > 1.0:
                        continue
                    if y >= ya_lim:
                        g = abs(x - hx) if s == 0.0 else s * (x - hx)
                        if not (y < yc_lim and g > reach):
                            continue
                    code[y, x] = ident + np.float32(min(u2, 0.999))
        else:  # RECT
            y0, y1 = _span(q[4], q[5] - 1.0, h)
            x0, x1 = _span(q[6], q[7] - 1.0, w)
            for y in range(max(y0, r0), min(y1, r1)):
                for x in range(x0, x1):
                    code[y, x] = ident


@numba.njit(inline="always")
def _in_band(v: float, period: float, share: float) -> bool:
    """Whether ``v`` lies in the second colour's band of a stripe cycle ``2 * period`` long,
    the band being the last ``share`` of the cycle."""
    cycle = v / (2.0 * period)
    return cycle - math.floor(cycle) >= 1.0 - share


@numba.njit("void(float32[:, ::1], float32[:, :, ::1], uint8[:], uint8[:], uint8[:], float32[:, ::1], "
            "uint8[:, ::1], uint8[:, ::1])", **_OPTS)
def resolve(code, img, prim_fill, prim_lip, prim_part, fills, lip, part):
    """Colour every painted pixel of ``img`` (float RGB, channels first) and write the two label maps.

    A pixel with code ``id + rel2`` takes primitive ``id``'s LIP and part
    labels and its fill's colour darkened by ``1 - shade * rel2`` (``id`` 0:
    background, left as it is, labels 0). A fill row (``FILL_COLUMNS``) is c1,
    c2, shade, pattern, period, y_ref, x_ref, split_y; patterns show c2 where:
    striped, y - y_ref falls in the last ``STRIPE_SHARE`` of its ``2 * period``
    cycle; vstriped, x - x_ref does; checked, either does, each by
    ``CHECK_SHARE`` (lines of c2 on c1); two-tone, y >= split_y; noise,
    (7 floor(y / period) + 13 floor(x / period)) mod 5 < 2 (an occluder's blotches).
    c1 is the dominant colour of stripes and checks (two thirds of the garment),
    as an annotator labelling a garment's colour would name it.
    """
    h, w = code.shape
    for y in range(h):
        for x in range(w):
            c = code[y, x]
            k = int(c)
            lip[y, x] = prim_lip[k]
            part[y, x] = prim_part[k]
            if k == 0:
                continue
            f = fills[prim_fill[k]]
            pattern = int(f[7])
            second = False
            if pattern == STRIPED:
                second = _in_band(y - f[9], f[8], STRIPE_SHARE)
            elif pattern == VSTRIPED:
                second = _in_band(x - f[10], f[8], STRIPE_SHARE)
            elif pattern == CHECKED:
                second = _in_band(y - f[9], f[8], CHECK_SHARE) or _in_band(x - f[10], f[8], CHECK_SHARE)
            elif pattern == TWO_TONE:
                second = y >= f[11]
            elif pattern == NOISE:
                second = (math.floor(y / f[8]) * 7 + math.floor(x / f[8]) * 13) % 5 < 2
            base = 3 if second else 0
            shade = np.float32(1.0) - f[6] * (c - np.float32(k))
            for ch in range(3):
                img[ch, y, x] = f[base + ch] * shade


@numba.njit(inline="always")
def _blur(plane, tmp):
    """One [1, 2, 1] / 4 pass along the rows of ``plane`` into ``tmp``, then down its columns back
    into ``plane``; edges replicated. Writing to another array lets the loops vectorise (4x
    faster than in place)."""
    h, w = plane.shape
    two, quarter = np.float32(2.0), np.float32(0.25)
    for y in range(h):
        a, t = plane[y], tmp[y]
        t[0] = (a[0] + two * a[0] + a[1]) * quarter
        for x in range(1, w - 1):
            t[x] = (a[x - 1] + two * a[x] + a[x + 1]) * quarter
        t[w - 1] = (a[w - 2] + two * a[w - 1] + a[w - 1]) * quarter
    for y in range(h):
        up, mid, down, a = tmp[max(y - 1, 0)], tmp[y], tmp[min(y + 1, h - 1)], plane[y]
        for x in range(w):
            a[x] = (up[x] + two * mid[x] + down[x]) * quarter


@numba.njit("void(float32[:, :, ::1], float32[::1], float32, int64, float32[:, :, ::1], int64, int64, "
            "uint8[:, :, ::1])", **_OPTS)
def expose(img, rows, offset, passes, noise, oy, ox, out):
    """The camera's pixel pipeline: ``img`` (float RGB, channels first; overwritten) times the
    per-row gain ``rows`` plus ``offset``, ``passes`` passes of a [1, 2, 1] / 4 blur over rows
    and columns (edges replicated; each pass adds variance 1/2 px^2), plus the crop of
    ``noise`` at (oy, ox) (an empty bank: none), clipped to [0, 255] and truncated into the
    RGB bytes of ``out`` (H, W, 4: RGBX)."""
    chans, h, w = img.shape
    for ch in range(chans):
        for y in range(h):
            g = rows[y]
            for x in range(w):
                img[ch, y, x] = img[ch, y, x] * g + offset
    if passes > 0:
        tmp = np.empty((h, w), dtype=np.float32)
        for ch in range(chans):
            for _ in range(passes):
                _blur(img[ch], tmp)
    has_noise = noise.shape[1] > 0
    for ch in range(chans):
        for y in range(h):
            for x in range(w):
                v = img[ch, y, x]
                if has_noise:
                    v += noise[ch, oy + y, ox + x]
                out[y, x, ch] = np.uint8(min(max(v, np.float32(0.0)), np.float32(255.0)))
