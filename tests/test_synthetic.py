"""The synthetic benchmark generator: layouts, determinism, factor independence, masks, text."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import chi2_contingency

from reidbench.datasets import render as R
from reidbench.datasets import synthetic as S

SMALL = {"market": 4, "occluded": 4, "cc": 3, "pedes": 3}
SMALL_IPI = {"market": 4, "occluded": 4, "cc": 3, "pedes": 2}


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def images_of(dset: Path) -> list[str]:
    return sorted(str(p.relative_to(dset)) for p in dset.rglob("*.jpg")
                  if not str(p.relative_to(dset)).startswith(("masks", "parsing")))


@pytest.fixture(scope="module")
def all_flavors(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("synth")
    folders = S.synthesize(out, flavor="all", ids=SMALL, images_per_id=SMALL_IPI, seed=3, workers=2)
    return {f: Path(p) for f, p in folders.items()}


# --------------------------------------------------------------------------- layouts


def test_returns_the_dataset_folders_in_the_real_layouts(all_flavors):
    assert {f: (p.parent.name, p.name) for f, p in all_flavors.items()} == {
        "market": ("market", "Market-1501-v15.09.15"), "occluded": ("occluded", "Occluded_Duke"),
        "cc": ("cc", "prcc"), "pedes": ("pedes", "CUHK-PEDES")}


def test_every_image_has_masks_parsing_and_one_meta_record(all_flavors):
    for flavor, dset in all_flavors.items():
        meta = S.read_meta(dset)
        imgs = images_of(dset)
        assert sorted(meta) == imgs, flavor
        for rel in imgs:
            im = Image.open(dset / rel)
            assert im.size == (64, 128) and im.mode == "RGB"
            for side, top in (("masks", 5), ("parsing", 19)):
                m = np.asarray(Image.open(dset / side / (os.path.splitext(rel)[0] + ".png")))
                assert m.shape == (128, 64) and m.dtype == np.uint8 and m.max() <= top
            rec = meta[rel]
            assert set(rec) >= {"path", "pid", "camid", "clothes_id", "occluded", "attributes", "caption",
                                "id_descriptions", "clothes_descriptions"}
            assert set(rec["id_descriptions"]) == set(rec["clothes_descriptions"]) == {"terse", "detailed", "list"}
            assert isinstance(rec["occluded"], bool) and isinstance(rec["clothes_id"], int)


def test_market_names_splits_distractors_and_cross_camera_queries(all_flavors):
    dset = all_flavors["market"]
    name = re.compile(r"^(-1|\d{4})_c([1-6])s(\d)_(\d{6})_(\d{2})\.jpg$")
    pids: dict[str, set[int]] = defaultdict(set)
    cams: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for folder in ("bounding_box_train", "query", "bounding_box_test"):
        files = os.listdir(dset / folder)
        assert files, folder
        for f in files:
            m = name.match(f)
            assert m, f
            pid, cam = int(m.group(1)), int(m.group(2))
            pids[folder].add(pid)
            cams[folder].append((pid, cam))
    assert not (pids["bounding_box_train"] & (pids["bounding_box_test"] | pids["query"]))
    assert {0, -1} <= pids["bounding_box_test"] and not {0, -1} & pids["query"]
    gallery = set(cams["bounding_box_test"])
    for pid, cam in cams["query"]:
        assert any(p == pid and c != cam for p, c in gallery), (pid, cam)
    meta = S.read_meta(dset)
    assert all(rec["pid"] == int(os.path.basename(p).split("_")[0]) for p, rec in meta.items())


def test_occluded_duke_queries_are_occluded_and_gallery_mostly_holistic(all_flavors):
    dset = all_flavors["occluded"]
    name = re.compile(r"^\d{4}_c[1-8]_f\d{7}\.jpg$")
    meta = S.read_meta(dset)
    for rel in meta:
        assert name.match(os.path.basename(rel)), rel
    by_folder = defaultdict(list)
    for rel, rec in meta.items():
        by_folder[rel.split("/")[0]].append(rec)
    assert all(r["occluded"] and r["attributes"]["visible_fraction"] < 0.92 for r in by_folder["query"])
    gallery = by_folder["bounding_box_test"]
    assert sum(r["occluded"] for r in gallery) <= 0.5 * len(gallery)


def test_prcc_layout_and_cloth_change_in_camera_c(all_flavors):
    dset = all_flavors["cc"]
    meta = S.read_meta(dset)
    train = re.compile(r"^rgb/(train|val)/(\d{3})/([ABC])_cropped_rgb\d{3}\.jpg$")
    test = re.compile(r"^rgb/test/([ABC])/(\d{3})/cropped_rgb\d{3}\.jpg$")
    clothes = defaultdict(dict)
    splits = defaultdict(set)
    for rel, rec in meta.items():
        m, t = train.match(rel), test.match(rel)
        assert m or t, rel
        split, pid, cam = (m.group(1), int(m.group(2)), m.group(3)) if m else ("test", int(t.group(2)), t.group(1))
        assert rec["pid"] == pid
        splits[split].add(pid)
        clothes[pid].setdefault(cam, set()).add(rec["clothes_id"])
    assert set(splits) == {"train", "val", "test"}
    assert not (splits["train"] & splits["test"]) and not (splits["val"] & splits["test"])
    for pid, by_cam in clothes.items():
        assert by_cam["A"] == by_cam["B"] and len(by_cam["A"]) == 1
        assert by_cam["C"].isdisjoint(by_cam["A"])


def test_cuhk_pedes_json_schema(all_flavors):
    dset = all_flavors["pedes"]
    raw = json.loads((dset / "reid_raw.json").read_text())
    assert {e["split"] for e in raw} == {"train", "val", "test"}
    assert min(e["id"] for e in raw) == 1
    for e in raw:
        assert list(e) == ["split", "captions", "file_path", "processed_tokens", "id"]
        assert (dset / "imgs" / e["file_path"]).is_file()
        assert re.match(r"^(train_query|test_query)/p\d{5}_s\d{6}\.jpg$", e["file_path"])
        assert len(e["captions"]) == 2 and e["captions"][0] != e["captions"][1]
        assert e["processed_tokens"] == [S.processed_tokens(c) for c in e["captions"]]
        assert all(tok == tok.lower() and tok.isascii() for toks in e["processed_tokens"] for tok in toks)
    ids_by_split = defaultdict(set)
    for e in raw:
        ids_by_split[e["split"]].add(e["id"])
    assert not (ids_by_split["train"] & ids_by_split["test"])


# --------------------------------------------------------------------------- determinism and re-runs


def test_same_seed_same_bytes_regardless_of_workers_and_other_seed_differs(tmp_path):
    kw = dict(flavor="market", ids=4, images_per_id=4)
    a = tree_digest(Path(S.synthesize(tmp_path / "a", seed=5, workers=1, **kw)["market"]).parent)
    b = tree_digest(Path(S.synthesize(tmp_path / "b", seed=5, workers=2, **kw)["market"]).parent)
    c = tree_digest(Path(S.synthesize(tmp_path / "c", seed=6, workers=1, **kw)["market"]).parent)
    # From a thread (as in a Ray Tune trial) the pool spawns instead of forking: same bytes.
    folders, methods = {}, []

    def in_thread():
        methods.append(S._pool_context().get_start_method())
        folders.update(S.synthesize(tmp_path / "d", seed=5, workers=2, **kw))

    worker = threading.Thread(target=in_thread)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "generation from a thread must not hang"
    assert methods == ["spawn"]
    d = tree_digest(Path(folders["market"]).parent)
    assert a == b == d
    jpgs = {k: v for k, v in a.items() if k.endswith(".jpg")}
    assert len(jpgs) >= 20
    assert not set(jpgs.values()) & {v for k, v in c.items() if k.endswith(".jpg")}


def test_complete_marker_skips_reruns_and_rebuilds_interrupted_or_changed(tmp_path):
    kw = dict(flavor="cc", ids=3, images_per_id=3, seed=1, workers=1)
    dset = Path(S.synthesize(tmp_path, **kw)["cc"])
    marker = dset.parent / ".complete"
    params = json.loads(marker.read_text())["params"]
    assert params["seed"] == 1 and params["ids"] == 3 and params["image_size"] == [128, 64]
    first = tree_digest(dset)
    stamp = marker.stat().st_mtime_ns
    S.synthesize(tmp_path, **kw)
    assert marker.stat().st_mtime_ns == stamp  # nothing rewritten
    # an interrupted run: no marker -> refuse to touch a foreign folder, rebuild our leftovers
    marker.unlink()
    with pytest.raises(FileExistsError, match="complete"):
        S.synthesize(tmp_path, **kw)
    (tmp_path / ".cc.partial").mkdir()
    (tmp_path / ".cc.partial" / "half-written.jpg").write_bytes(b"")
    marker.write_text(json.dumps({"params": {**params, "seed": 99}}))
    S.synthesize(tmp_path, **kw)
    assert tree_digest(dset) == first and not (tmp_path / ".cc.partial").exists()
    # changed parameters rebuild
    S.synthesize(tmp_path, **{**kw, "difficulty": 0.9})
    assert json.loads(marker.read_text())["params"]["difficulty"] == 0.9
    assert tree_digest(dset) != first


def test_bad_arguments_say_what_was_expected(tmp_path):
    with pytest.raises(ValueError, match="flavor"):
        S.synthesize(tmp_path, flavor="duke")
    with pytest.raises(ValueError, match="images_per_id >= 4"):
        S.synthesize(tmp_path, flavor="market", ids=4, images_per_id=2)
    with pytest.raises(ValueError, match="difficulty"):
        S.synthesize(tmp_path, flavor="market", ids=4, difficulty=1.5)


# --------------------------------------------------------------------------- the world's factors


def test_outfits_are_shared_and_changed_but_independent_of_identity():
    n, seed, d = 600, 0, 0.5
    world = S.World(S.WorldConfig(seed=seed, difficulty=d, height=128, width=64))
    idents = [world.identity(1, k) for k in range(1, n + 1)]
    wardrobes = [S.wardrobe(seed, 1, k, n, d) for k in range(1, n + 1)]
    # several outfits each, uniforms shared by several identities
    assert all(len(set(w)) == S.OUTFITS_PER_ID for w, _ in wardrobes)
    wearers = Counter(w[0] for w, uni in wardrobes if uni)
    assert max(wearers.values()) >= 3 and len(wearers) >= 2
    assert 0.2 < sum(uni for _, uni in wardrobes) / n < 0.4  # uniform_fraction(0.5) = 0.3
    # identity factors do not predict the clothes: chi-square tests of independence
    primary = [world.outfit(1, w[0]) for w, _ in wardrobes]
    for id_factor, cl_factor in (("gender", "upper_colour"), ("hair_colour", "lower_colour"),
                                 ("build", "upper_type"), ("skin_tone", "shoes_colour")):
        xs = [getattr(i, id_factor) for i in idents]
        ys = [getattr(o, cl_factor) for o in primary]
        table = np.array([[sum(1 for x, y in zip(xs, ys) if x == a and y == b) for b in sorted(set(ys))]
                          for a in sorted(set(xs))])
        assert chi2_contingency(table)[1] > 1e-3, (id_factor, cl_factor)
    # ... while the chi-square test does see a real dependence (hair length depends on gender)
    table = np.array([[sum(1 for i in idents if i.gender == g and i.hair_length == h) for h in R.HAIR_LENGTHS]
                      for g in R.GENDERS])
    assert chi2_contingency(table)[1] < 1e-6


def test_planned_market_has_outfit_changes_and_uniform_sharing():
    specs = S.plan("market", 60, 12, seed=0, difficulty=1.0)
    outfits_per_pid = defaultdict(set)
    pids_per_outfit = defaultdict(set)
    for s in specs:
        if s.outfit_slot >= 0:
            outfits_per_pid[s.pid].add(s.outfit)
            pids_per_outfit[s.outfit].add(s.pid)
    assert sum(len(o) > 1 for o in outfits_per_pid.values()) >= 10
    assert max(len(p) for p in pids_per_outfit.values()) >= 2


def test_difficulty_scales_camera_nuisances():
    easy = [R.sample_camera(np.random.default_rng(i), 0.0) for i in range(50)]
    hard = [R.sample_camera(np.random.default_rng(i), 1.0) for i in range(50)]
    assert all(c.cast == (1.0, 1.0, 1.0) and c.blur == 0.0 and c.noise == 0.0 and c.lowres == 1.0 for c in easy)
    assert np.mean([np.ptp(c.cast) for c in hard]) > 0.1 and np.mean([c.blur for c in hard]) > 0.4


# --------------------------------------------------------------------------- masks


def _render(seed: int, occluder=None, size=(128, 64), view=None):
    rng = np.random.default_rng(seed)
    ident, outfit = R.sample_identity(rng), R.sample_outfit(rng)
    pose = R.sample_pose(rng, 0.5, *size)
    if view is not None:
        pose = R.Pose(view, pose.facing, pose.phase, pose.stride_mult, pose.lean, pose.dx, pose.dy, pose.scale)
    cam = R.sample_camera(rng, 0.5)
    bg = R.camera_background(cam, *size, 0.5)
    other = None
    if occluder == "person":
        o_i, o_o = R.sample_identity(rng), R.sample_outfit(rng)
        other = (o_i, o_o, R.sample_pose(rng, 0.5, *size), R.figure_colours(o_i, o_o, rng, 0.5))
    return R.render(*size, ident, outfit, pose, cam, bg, np.random.default_rng(1000 + seed), 0.5,
                    occluder=occluder, other=other)


LIP_TO_PARTS = {1: {1}, 2: {1}, 4: {1}, 13: {1}, 5: {2, 3, 4}, 7: {2, 3, 4}, 9: {4}, 12: {4}, 16: {4}, 17: {4},
                14: {2, 3}, 15: {2, 3}, 18: {5}, 19: {5}}


@pytest.mark.parametrize("size", [(128, 64), (256, 128)])
def test_masks_agree_with_the_rendered_figure(size):
    for seed in range(12):
        res = _render(seed, size=size)
        part, lip = res.part, res.lip
        assert part.shape == lip.shape == size
        assert np.array_equal(part > 0, lip > 0)
        for label in np.unique(lip[lip > 0]):
            assert set(np.unique(part[lip == label])) <= LIP_TO_PARTS[int(label)], label
        rows = np.arange(size[0])[:, None]
        mean_row = {p: float(rows.repeat(size[1], 1)[part == p].mean()) for p in range(1, 6) if (part == p).any()}
        assert mean_row[1] < mean_row[2] < mean_row[4] < mean_row[5]
        # the figure is where the image differs from the bare background
        hair = (lip == 2).sum()
        assert hair >= 64 * (size[0] / 128) ** 2 or (lip == 1).any()  # hair bigger than an 8x8 patch (or a cap)


def test_back_view_hair_is_large_and_glasses_only_face_the_camera():
    for seed in range(8):
        back = _render(seed, view="back")
        assert (back.lip == 2).sum() + (back.lip == 1).sum() > 100
        assert not (back.lip == 4).any()


@pytest.mark.parametrize("kind", R.OCCLUDERS)
def test_occluders_hide_body_pixels_in_both_maps(kind):
    for seed in range(6):
        clean, occ = _render(seed), _render(seed, occluder=kind)
        assert occ.info["occluder"].startswith(kind)
        visible = occ.part > 0
        assert visible.sum() <= 0.92 * (clean.part > 0).sum()
        assert np.array_equal(occ.part[visible], clean.part[visible])  # what is left is unchanged
        assert not ((occ.lip > 0) & (clean.lip == 0)).any()
        assert abs(occ.info["visible_fraction"] - visible.sum() / (clean.part > 0).sum()) < 1e-3


def _segment_d2(h, w, a, b):
    """Squared distance of every pixel centre to the segment a-b."""
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    (ay, ax), (by, bx) = a, b
    d = np.array([by - ay, bx - ax])
    t = np.clip(((yy - ay) * d[0] + (xx - ax) * d[1]) / (d @ d), 0.0, 1.0)
    return (yy - ay - t * d[0]) ** 2 + (xx - ax - t * d[1]) ** 2


def test_painter_paints_in_order_and_clips_capsules_at_the_image_border():
    h, w = 16, 12
    p = R.Painter(np.zeros((3, h, w), dtype=np.float32))
    rect, mid, corner = R.Fill((0.2, 0.4, 0.6)), R.Fill((0.9, 0.1, 0.1)), R.Fill((0.1, 0.8, 0.1))
    p.rect(2, 6, 2, 6, rect, R.UPPER, R.P_UPPER)
    p.capsule((4, 4), (4, 8), 1.5, mid, R.PANTS, R.P_LEGS)
    p.capsule((13, 9), (20, 14), 3.0, corner, R.L_SHOE, R.P_FEET)  # runs off the right and bottom edges
    img, lip, part = p.resolve()
    in_mid = _segment_d2(h, w, (4, 4), (4, 8)) <= 1.5 ** 2
    in_corner = _segment_d2(h, w, (13, 9), (20, 14)) <= 3.0 ** 2
    in_rect = np.zeros((h, w), dtype=bool)
    in_rect[2:6, 2:6] = True
    expected = np.where(in_corner, R.L_SHOE, np.where(in_mid, R.PANTS, np.where(in_rect, R.UPPER, 0)))
    assert np.array_equal(lip, expected)  # later primitives cover earlier ones; nothing wraps round a row
    assert np.array_equal(part > 0, lip > 0) and set(np.unique(part[lip == R.L_SHOE])) == {R.P_FEET}
    assert np.allclose(img[:, 3, 2], rect.c1)  # rectangles are flat; capsules darken away from their axis
    assert np.allclose(img[:, 4, 6], mid.c1) and np.allclose(img[:, 5, 6], np.multiply(mid.c1, 1 - 0.28 / 1.5 ** 2))
    assert not img[:, lip == 0].any()


def test_painter_draws_trapezoids_and_head_regions_by_their_formulas():
    h, w = 40, 24
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    p = R.Painter(np.zeros((3, h, w), dtype=np.float32))
    p.set_rows(15.5, 25.2)  # elbow and hip lines: a torso garment changes part label at rows 16 and 26
    torso = R.Fill((0.5, 0.5, 0.5))
    p.trapezoid(4.3, 33.6, 10.0, 13.0, 4.2, 6.9, torso, R.UPPER, R._ROWS)
    # hair: the top of the head (rows above 9), and its sides (|x - 12| > 3) down to row 14
    p.superellipse(10.0, 12.0, 6.0, 7.0, 3.6, R.Fill((0.1, 0.1, 0.1)), R.HAIR, R.P_HEAD, (9.0, 14.0, 12.0, 0.0, 3.0))
    _, lip, part = p.resolve()
    t = (yy - 4.3) / (33.6 - 4.3)
    in_torso = ((xx - (10.0 + 3.0 * t)) / (4.2 + 2.7 * t)) ** 2 <= 1.0
    in_torso &= (yy >= 5) & (yy <= 33)
    in_head = np.abs((xx - 12.0) / 6.0) ** 3.6 + np.abs((yy - 10.0) / 7.0) ** 3.6 <= 1.0
    in_head &= (yy < 9.0) | ((np.abs(xx - 12.0) > 3.0) & (yy < 14.0))
    assert in_head.any() and (in_torso & ~in_head).any() and (in_torso & in_head).any()
    assert np.array_equal(lip, np.where(in_head, R.HAIR, np.where(in_torso, R.UPPER, 0)))
    band = np.where(yy < 16, R.P_UPPER, np.where(yy < 26, R.P_LOWER, R.P_LEGS))
    assert np.array_equal(part, np.where(in_head, R.P_HEAD, np.where(in_torso, band, 0)))


@pytest.mark.parametrize("pattern", ["striped", "vstriped", "checked", "two-tone", "noise"])
def test_patterned_fills_show_their_second_colour_where_the_pattern_says(pattern):
    h, w = 30, 20
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    c1, c2, cast = np.array([0.8, 0.2, 0.1]), np.array([0.1, 0.3, 0.9]), np.array([1.1, 1.0, 0.9])
    fill = R.Fill(c1, c2, pattern, period=4.5, y_ref=1.2, x_ref=2.7, split_y=12.0, shade=0.0)
    p = R.Painter(np.zeros((3, h, w), dtype=np.float32), cast)
    p.rect(0, h, 0, w, fill, R.UPPER, R.P_UPPER)
    img, _, _ = p.resolve()
    def band(v, share):  # in the last `share` of a stripe cycle 2 x period long
        cycle = v / 9.0
        return cycle - np.floor(cycle) >= 1.0 - share

    row, col = band(yy - 1.2, 1 / 3), band(xx - 2.7, 1 / 3)
    second = {"striped": row, "vstriped": col, "checked": band(yy - 1.2, 0.2) | band(xx - 2.7, 0.2),
              "two-tone": yy >= 12.0, "noise": (np.floor(yy / 4.5) * 7 + np.floor(xx / 4.5) * 13) % 5 < 2}[pattern]
    assert 0.2 < second.mean() < 0.8
    if pattern in ("striped", "vstriped", "checked"):  # the first-named colour is the garment's dominant one
        assert second.mean() < 0.5
    expected = np.where(second[None], (c2 * cast)[:, None, None], (c1 * cast)[:, None, None])
    assert np.allclose(img, expected, atol=1e-6)
    with pytest.raises(ValueError, match="unknown fill pattern 'dotted'"):
        R.Fill(c1, c2, "dotted")


def _blur121(a):
    p = np.pad(a, ((0, 0), (1, 1), (1, 1)), mode="edge")
    a = (p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]) / 4
    return (a[:, :, :-2] + 2 * a[:, :, 1:-1] + a[:, :, 2:]) / 4


@pytest.mark.parametrize("blur,noise,lowres", [(0.0, 0.0, 1.0), (3.0, 0.03, 1.0), (2.0, 0.0, 1.8)])
def test_camera_applies_gain_gradient_blur_and_noise_as_documented(blur, noise, lowres):
    h, w = 48, 24
    cam = R.Camera(gain=0.9, cast=(1.0, 1.0, 1.0), contrast=0.8, vgrad=0.2, blur=blur, lowres=lowres, noise=noise,
                   scale=0.9, jpeg_quality=90, background_seed=0)
    img = np.random.default_rng(0).random((3, h, w), dtype=np.float32)
    z, oy, ox = np.random.default_rng(5).random(3)
    gain = 0.9 * (1 + 0.06 * 0.5 * (2 * z - 1) * np.sqrt(3)) * 0.8 * 255
    x = img * ((1 + 0.2 * (np.arange(h) / h - 0.5)) * gain)[None, :, None] + 255 * 0.5 * 0.2 + 0.5
    for _ in range(int(round(2 * (blur * h / 128) ** 2))):
        x = _blur121(x)
    if noise:
        x = x + 255 * noise * R._unit_noise(h, w)[:, int(oy * h):int(oy * h) + h, int(ox * w):int(ox * w) + w]
    expected = np.clip(x, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    if lowres > 1:  # resolution loss: down to 1/lowres and up again
        small = Image.fromarray(expected).resize((round(w / lowres), round(h / lowres)), Image.BILINEAR)
        expected = np.asarray(small.resize((w, h), Image.BILINEAR))
    out = R.apply_camera(img.copy(), cam, np.random.default_rng(5), 0.5)
    assert out.mode == "RGBX" and out.size == (w, h)
    assert np.abs(np.asarray(out)[..., :3].astype(int) - expected).max() <= 1  # float rounding only


def test_rekeyed_generator_draws_what_a_new_one_draws():
    rng = S._rng(0, S._S_IMAGE, 1, 0)
    for seed, stream, ns, index in [(0, S._S_IMAGE, 1, 5), (3, S._S_NOISE, 2, 0), (7, S._S_IMAGE, 90, 123456)]:
        rng.random(3), rng.integers(5, size=7)  # leave state behind
        S._rekey(rng, seed, stream, ns, index)
        fresh = S._rng(seed, stream, ns, index)
        assert np.array_equal(rng.random(5), fresh.random(5))
        assert np.array_equal(rng.standard_normal(4), fresh.standard_normal(4))
        assert rng.integers(1000) == fresh.integers(1000)


@pytest.mark.parametrize("quality", [60, 95])
def test_jpeg_bytes_are_what_pillow_saves(quality):
    import io
    image = _render(3).image
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    assert S._jpeg_bytes(image, quality) == buf.getvalue()


def test_mask_noise_corrupts_the_expected_fraction_and_leaves_images_alone(tmp_path):
    for m in (0.05, 0.15, 0.3):
        changed = fg = 0
        lip_changed = 0
        for seed in range(10):
            res = _render(seed)
            part, lip = R.corrupt_masks(res.part, res.lip, m, np.random.default_rng(seed))
            changed += (part != res.part).sum()
            lip_changed += (lip != res.lip).sum()
            fg += (res.part > 0).sum()
            assert set(np.unique(part)) <= set(range(6))
        assert abs(changed / fg - m) < 0.25 * m, (m, changed / fg)
        assert lip_changed > 0.5 * changed
    kw = dict(flavor="occluded", ids=2, images_per_id=4, seed=2, workers=1)
    exact = Path(S.synthesize(tmp_path / "exact", **kw)["occluded"])
    noisy = Path(S.synthesize(tmp_path / "noisy", mask_noise=0.2, **kw)["occluded"])
    changed = fg = 0
    for rel in images_of(exact):
        assert (exact / rel).read_bytes() == (noisy / rel).read_bytes()
        png = os.path.splitext(rel)[0] + ".png"
        a, b = (np.asarray(Image.open(d / "masks" / png)) for d in (exact, noisy))
        changed += (a != b).sum()
        fg += (a > 0).sum()
    assert 0.15 < changed / fg < 0.25


# --------------------------------------------------------------------------- text


def test_caption_follows_the_scgi_template_and_matches_the_factors(all_flavors):
    template = re.compile(r"^An? (young|middle-aged|elderly|old) (man|woman) is wearing (.+)\. (He|She) is wearing "
                          r"(.+) and (.+)\. The (man|woman) is wearing (\w+) shoes and (.+)\. The (man|woman) has "
                          r"(short|medium|long) (\w+) hair.* (and is|and does|and wears)[a-z ]*glasses\.$")
    for rec in S.read_meta(all_flavors["market"]).values():
        a = rec["attributes"]
        m = template.match(rec["caption"])
        assert m, rec["caption"]
        assert m.group(2) == a["gender"] and m.group(8) == a["shoes_colour"]
        assert m.group(11) == a["hair_length"] and m.group(12) == a["hair_colour"]
        assert a["upper_colour"] in m.group(3) and a["upper_type"] in m.group(3)
        assert len(rec["caption"].split()) <= 46


def test_descriptions_decouple_identity_from_clothing_in_three_styles(all_flavors):
    clothing_words = set(R.UPPER_TYPES) | set(R.LOWER_TYPES) | {"shoes", "bag", "backpack", "handbag", "cap"}
    identity_words = {"hair", "skin", "head", "build", "man", "woman", "glasses"}
    lengths = defaultdict(list)
    for rec in S.read_meta(all_flavors["pedes"]).values():
        ids, clo = rec["id_descriptions"], rec["clothes_descriptions"]
        for style in ("terse", "detailed", "list"):
            assert not clothing_words & set(S.processed_tokens(ids[style])), ids[style]
            assert not identity_words & set(S.processed_tokens(clo[style])), clo[style]
            lengths[style].append(len(ids[style]) + len(clo[style]))
        for text in (ids["list"], clo["list"]):
            assert re.search(r"[:=\[]", text)
        assert ids["detailed"].count(". ") >= 2 and not re.search(r"[=\[|]", ids["detailed"] + clo["detailed"])
        assert rec["attributes"]["hair_colour"] in ids["terse"] + ids["detailed"] + ids["list"]
        assert rec["attributes"]["lower_colour"] in clo["detailed"]
    assert np.mean(lengths["terse"]) < np.mean(lengths["list"]) < np.mean(lengths["detailed"])


@pytest.mark.parametrize("flavor,adapter", [("market", "market1501"), ("pedes", "cuhk_pedes")])
def test_adapters_give_training_samples_every_description_style(all_flavors, flavor, adapter):
    """The generator's descriptions reach the samples (BDAM trains on them): every style of
    both kinds; an image set's caption is the meta caption, a text set keeps its two
    annotation captions."""
    from reidbench.datasets import build_dataset

    dset = all_flavors[flavor]
    meta = S.read_meta(dset)
    ds = build_dataset(adapter, str(dset))
    assert ds.splits["train"]
    for sample in ds.splits["train"]:
        rec = meta[os.path.relpath(sample.path, ds.root).replace(os.sep, "/")]
        for kind, key in (("id_description", "id_descriptions"), ("clothes_description", "clothes_descriptions")):
            assert [(style, text) for k, style, text in sample.texts if k == kind] == list(rec[key].items())
        assert sample.texts_of("caption") == (tuple(rec["captions"]) if flavor == "pedes" else (rec["caption"],))


# --------------------------------------------------------------------------- pretraining pairs


def test_pretraining_pairs_are_deterministic_captioned_and_from_other_people():
    images, captions, attrs = S.pretraining_pairs(24, seed=0)
    again, captions2, _ = S.pretraining_pairs(24, seed=0)
    assert images.shape == (24, 128, 64, 3) and images.dtype == np.uint8
    assert np.array_equal(images, again) and captions == captions2
    assert len(captions) == len(attrs) == 24
    for cap, a in zip(captions, attrs):
        assert a["upper_colour"] in S.ATTRIBUTE_VOCAB["upper_colour"]
        assert a["hair_colour"] in cap  # every caption style names the hair colour
    assert len({a["pid"] for a in attrs}) > 1
    bench = S.World(S.WorldConfig(seed=0, difficulty=0.5, height=128, width=64))
    bench_people = {(round(bench.identity(ns, k).head_ratio, 4), round(bench.identity(ns, k).torso_ratio, 4))
                    for ns in (1, 2, 3, 4) for k in range(1, 200)}
    assert not bench_people & {(a["head_ratio"], a["torso_ratio"]) for a in attrs}
    big, _, _ = S.pretraining_pairs(2, seed=1, image_size=(256, 128))
    assert big.shape == (2, 256, 128, 3)


def test_zero_shot_prompt_vocabulary_occurs_in_captions_and_the_tokenizer_corpus_covers_all_text(all_flavors):
    _, captions, _ = S.pretraining_pairs(64, seed=4)
    words = {w for c in captions for w in S.processed_tokens(c)}
    for template in S.ATTRIBUTE_VOCAB["prompt_templates"].values():
        assert set(S.processed_tokens(template.replace("{}", ""))) <= words, template
    corpus = {w for t in S.tokenizer_corpus(n_people=200) for w in S.processed_tokens(t)}
    written = set(words)
    for dset in all_flavors.values():
        for rec in S.read_meta(dset).values():
            texts = [rec["caption"], *rec["id_descriptions"].values(), *rec["clothes_descriptions"].values(),
                     *rec.get("captions", [])]
            written |= {w for t in texts for w in S.processed_tokens(t)}
    assert written <= corpus, written - corpus
