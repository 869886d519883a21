"""Input pipeline: PK sampler, joint image/mask transforms, loaders."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from reidbench.datasets.loader import (
    ReidImageDataset,
    build_eval_loader,
    build_text_loader,
    build_train_loader,
    collate_reid,
)
from reidbench.datasets.records import Sample
from reidbench.datasets.sampler import PKSampler
from reidbench.datasets.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    ParsingMap,
    build_eval_transform,
    build_train_transform,
    part_visibility,
)

H, W = 64, 32
RED = (220, 30, 30)
GREY = (128, 128, 128)


# -- helpers --------------------------------------------------------------------------
def pid_list(counts: dict[int, int]) -> list[int]:
    """Dataset pids with ``counts[pid]`` images each, interleaved so indices are not sorted by pid."""
    out = []
    for round_ in range(max(counts.values())):
        out.extend(pid for pid, n in counts.items() if round_ < n)
    return out


def denormalise(image: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN)[:, None, None]
    std = torch.tensor(CLIP_STD)[:, None, None]
    return (image * std + mean) * 255


def is_red(image: torch.Tensor) -> torch.Tensor:
    rgb = denormalise(image)
    return (rgb[0] > 180) & (rgb[1] < 80) & (rgb[2] < 80)


def block_scene(top=8, bottom=24, left=4, right=12):
    """Grey image with a red block; the part mask labels the block 2, the parsing map 14 (left arm)."""
    img = torch.tensor(GREY, dtype=torch.uint8)[:, None, None].repeat(1, H, W)
    img[:, top:bottom, left:right] = torch.tensor(RED, dtype=torch.uint8)[:, None, None]
    mask = torch.zeros(H, W, dtype=torch.uint8)
    mask[top:bottom, left:right] = 2
    parsing = torch.zeros(H, W, dtype=torch.uint8)
    parsing[top:bottom, left:right] = 14
    return {"image": tv_tensors.Image(img), "mask": tv_tensors.Mask(mask), "parsing": ParsingMap(parsing)}


def write_split(tmp_path, counts: dict[int, int], *, masks=True, parsing=True, captions=True):
    """Tiny JPEG images (block scene) + PNG label maps; returns Sample records (with three
    caption variants each when ``captions``)."""
    samples = []
    rng = np.random.default_rng(0)
    for pid, n in counts.items():
        for j in range(n):
            arr = np.full((H, W, 3), GREY, dtype=np.uint8)
            arr[8 + j : 24 + j, 4:12] = RED
            arr += rng.integers(0, 3, arr.shape, dtype=np.uint8)
            path = tmp_path / f"{pid:04d}_c{j % 2 + 1}_{j}.jpg"
            Image.fromarray(arr).save(path, quality=95)
            mask_path = parsing_path = None
            if masks:
                m = np.zeros((H, W), np.uint8)
                m[0:8] = 1
                m[8 + j : 24 + j, 4:12] = 2
                m[48:60] = 4
                mask_path = tmp_path / f"{pid:04d}_{j}_mask.png"
                Image.fromarray(m).save(mask_path)
            if parsing:
                pm = np.zeros((H, W), np.uint8)
                pm[:, : W // 2] = 14
                pm[:, W // 2 :] = 15
                parsing_path = tmp_path / f"{pid:04d}_{j}_parsing.png"
                Image.fromarray(pm).save(parsing_path)
            samples.append(
                Sample(
                    path=str(path),
                    pid=pid,
                    camid=j % 2,
                    clothes_id=None if pid % 2 else pid * 10,
                    texts=tuple(("caption", "", f"person {pid} {v}") for v in "abc") if captions else (),
                    mask_path=str(mask_path) if mask_path else None,
                    parsing_path=str(parsing_path) if parsing_path else None,
                )
            )
    return samples


# -- sampler ----------------------------------------------------------------------------
COUNTS = {pid: n for pid, n in zip(range(12), [2, 5, 8, 4, 3, 9, 6, 4, 1, 7, 4, 5])}


def test_each_batch_is_p_identities_times_k_images():
    pids = pid_list(COUNTS)
    sampler = PKSampler(pids, p=3, k=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        assert len(batch) == 12
        per_pid = Counter(pids[i] for i in batch)
        assert len(per_pid) == 3 and set(per_pid.values()) == {4}
    # identities with fewer than K images are sampled with replacement (torchreid) ...
    small = [b for b in batches if 8 in {pids[i] for i in b}]
    assert small, "pid 8 (one image) never sampled"
    assert [i for i in small[0] if pids[i] == 8] == [pids.index(8)] * 4
    # ... while others never repeat an image within an epoch.
    drawn = Counter(i for b in batches for i in b if COUNTS[pids[i]] >= 4)
    assert max(drawn.values()) == 1


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_get_disjoint_identities_and_equal_lengths(world_size):
    pids = pid_list(COUNTS)
    for epoch in range(3):
        per_rank = []
        for rank in range(world_size):
            s = PKSampler(pids, p=2, k=2, seed=5, rank=rank, world_size=world_size)
            s.set_epoch(epoch)
            per_rank.append(list(s))
            assert len(s) == len(per_rank[-1])
        lengths = {len(b) for b in per_rank}
        assert len(lengths) == 1 and lengths.pop() > 0
        for step in zip(*per_rank):
            ids = [{pids[i] for i in batch} for batch in step]
            assert sum(len(x) for x in ids) == len(set().union(*ids)) == 2 * world_size
        # Ranks take different batches of one plan: an image of a pid with >= K images
        # is drawn at most once over all ranks.
        drawn = Counter(i for batches in per_rank for b in batches for i in b if COUNTS[pids[i]] >= 2)
        assert max(drawn.values()) == 1


def test_plan_is_a_function_of_seed_and_epoch():
    pids = pid_list(COUNTS)
    a, b = PKSampler(pids, 2, 4, seed=3), PKSampler(pids, 2, 4, seed=3)
    a.set_epoch(4)
    b.set_epoch(4)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(5)
    assert list(a) != first
    c = PKSampler(pids, 2, 4, seed=4)
    c.set_epoch(4)
    assert list(c) != first
    # Iterating again (or other epochs in between) does not change an epoch's plan.
    a.set_epoch(4)
    assert list(a) == first


def test_state_dict_resumes_mid_epoch_and_rejects_other_settings():
    pids = pid_list(COUNTS)
    run = PKSampler(pids, 2, 2, seed=9, rank=1, world_size=2)
    run.set_epoch(7)
    full = list(run)
    state = run.state_dict(batches_done=2)

    resumed = PKSampler(pids, 2, 2, seed=9, rank=1, world_size=2)
    resumed.load_state_dict(state)
    assert resumed.epoch == 7 and len(resumed) == len(full) - 2
    assert list(resumed) == full[2:]

    other = PKSampler(pids, 2, 4, seed=9, rank=1, world_size=2)
    with pytest.raises(ValueError, match="k: checkpoint 2 vs now 4"):
        other.load_state_dict(state)
    changed_split = PKSampler(pids[:-1], 2, 2, seed=9, rank=1, world_size=2)
    with pytest.raises(ValueError, match="num_samples"):
        changed_split.load_state_dict(state)


def test_drop_last_false_covers_every_identity_with_full_batches():
    pids = pid_list(COUNTS)
    keep = PKSampler(pids, 5, 4, seed=1, world_size=2, drop_last=False)
    drop = PKSampler(pids, 5, 4, seed=1, world_size=2, drop_last=True)
    assert len(keep) == len(drop) + 1
    seen = set()
    for rank in range(2):
        s = PKSampler(pids, 5, 4, seed=1, rank=rank, world_size=2, drop_last=False)
        for batch in s:
            per_pid = Counter(pids[i] for i in batch)
            assert len(per_pid) == 5 and set(per_pid.values()) == {4}
            seen.update(per_pid)
    assert seen == set(COUNTS)


def test_too_few_identities_is_a_clear_error():
    with pytest.raises(ValueError, match=r"p \* world_size = 4 \* 4 = 16 distinct identities.*only 12"):
        PKSampler(pid_list(COUNTS), p=4, k=2, seed=0, world_size=4)


# -- transforms ---------------------------------------------------------------------------
def test_image_and_masks_move_together_under_flip_pad_crop():
    t = build_train_transform((H, W), flip_p=1.0, pad=10, erase_p=0.0)
    positions = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out = t(block_scene())
        red = is_red(out["image"])
        assert red.sum() > 0
        assert torch.equal(red, out["mask"] == 2)
        assert torch.equal(out["mask"] == 2, out["parsing"] != 0)
        rows, cols = torch.nonzero(red, as_tuple=True)
        positions.add((rows.min().item(), cols.min().item()))
    assert len(positions) > 3, "random crop never moved the block"

    flip_only = build_train_transform((H, W), flip_p=1.0, pad=0, erase_p=0.0)
    out = flip_only(block_scene(left=4, right=12))
    cols = torch.nonzero(out["mask"] == 2, as_tuple=True)[1]
    assert (cols.min().item(), cols.max().item()) == (W - 12, W - 5)
    assert torch.equal(is_red(out["image"]), out["mask"] == 2)


def test_resize_keeps_labels_nearest_and_aligned():
    t = build_eval_transform((2 * H, 2 * W))
    out = t(block_scene())
    assert out["image"].shape == (3, 2 * H, 2 * W) and out["mask"].shape == (2 * H, 2 * W)
    assert set(out["mask"].unique().tolist()) == {0, 2}
    assert set(out["parsing"].unique().tolist()) == {0, 14}
    inside = out["mask"] == 2
    assert is_red(out["image"])[inside].float().mean() > 0.95


@pytest.mark.parametrize("erase_masks", [True, False])
def test_erasing_touches_image_only_and_leaves_other_mask_pixels(erase_masks):
    scene = block_scene()
    scene["mask"][40:64] = 4
    before_mask = scene["mask"].clone()
    before_parsing = scene["parsing"].clone()
    clean = build_eval_transform((H, W))(scene)["image"]
    t = build_train_transform((H, W), flip_p=0.0, pad=0, erase_p=1.0, erase_masks=erase_masks)
    erased_any = False
    for seed in range(5):
        torch.manual_seed(seed)
        out = t({k: v.clone() for k, v in scene.items()})
        erased = (out["image"] != clean).any(dim=0)
        if not erased.any():
            continue
        erased_any = True
        assert torch.equal(out["mask"][~erased], before_mask[~erased])
        assert torch.equal(out["parsing"][~erased], before_parsing[~erased])
        if erase_masks:
            assert (out["mask"][erased] == 0).all() and (out["parsing"][erased] == 0).all()
        else:
            assert torch.equal(out["mask"][erased], before_mask[erased])
    assert erased_any


def test_flip_swaps_lip_left_right_labels_but_not_part_labels():
    parsing = torch.zeros(H, W, dtype=torch.uint8)
    parsing[:, :8] = 14  # left arm
    parsing[:, 8:12] = 16  # left leg
    parsing[:, 12:16] = 18  # left shoe
    parsing[:, 16:20] = 5  # upper clothes (no side)
    parsing[:, 20:] = 15  # right arm
    mask = torch.zeros(H, W, dtype=torch.uint8)
    mask[:, :8] = 2
    mask[:, 20:] = 4
    inputs = {
        "image": tv_tensors.Image(torch.zeros(3, H, W, dtype=torch.uint8)),
        "mask": tv_tensors.Mask(mask),
        "parsing": ParsingMap(parsing),
    }
    out = build_train_transform((H, W), flip_p=1.0, pad=0, erase_p=0.0)(inputs)
    swap = {14: 15, 15: 14, 16: 17, 18: 19, 5: 5}
    expected = parsing.flip(-1).clone().apply_(lambda v: swap.get(v, v))
    assert torch.equal(out["parsing"].as_subclass(torch.Tensor), expected)
    assert torch.equal(out["mask"].as_subclass(torch.Tensor), mask.flip(-1))
    # Without a flip nothing is relabelled.
    same = build_train_transform((H, W), flip_p=0.0, pad=0, erase_p=0.0)(inputs)
    assert torch.equal(same["parsing"].as_subclass(torch.Tensor), parsing)


def test_part_visibility():
    mask = torch.zeros(2, 4, 4, dtype=torch.long)
    mask[0, 0, 0] = 1
    mask[0, 3, 3] = 4
    mask[1, 1:3, 1:3] = 5
    assert part_visibility(mask).tolist() == [[True, False, False, True, False], [False, False, False, False, True]]


# -- loaders --------------------------------------------------------------------------------
def test_train_loader_batch_keys_dtypes_and_pk(tmp_path):
    samples = write_split(tmp_path, {pid: 2 + pid % 3 for pid in range(6)})
    loader = build_train_loader(samples, (H, W), p=2, k=3, seed=0)
    loader.set_epoch(0)
    batches = list(loader)
    assert len(batches) == len(loader) > 0
    batch = batches[0]
    assert set(batch) == {
        "image", "pid", "camid", "clothes_id", "index", "mask", "parsing", "visible", "has_mask", "has_parsing"
    }  # no text unless the method requires a kind (tests/test_texts.py)
    assert batch["image"].shape == (6, 3, H, W) and batch["image"].dtype == torch.float32
    for key in ("pid", "camid", "clothes_id", "index"):
        assert batch[key].shape == (6,) and batch[key].dtype == torch.long
    assert batch["mask"].shape == (6, H, W) and batch["mask"].dtype == torch.long
    assert batch["parsing"].dtype == torch.long and set(batch["parsing"].unique().tolist()) <= {0, 14, 15}
    assert int(batch["mask"].max()) <= 5
    assert batch["visible"].shape == (6, 5) and batch["visible"].dtype == torch.bool
    assert torch.equal(batch["visible"], part_visibility(batch["mask"]))
    assert batch["has_mask"].all() and batch["has_parsing"].all()
    for b in batches:
        assert Counter(b["pid"].tolist()).most_common()[-1][1] == 3 and len(set(b["pid"].tolist())) == 2
        for i, pid, cid in zip(b["index"].tolist(), b["pid"].tolist(), b["clothes_id"].tolist()):
            s = samples[i]
            assert s.pid == pid
            assert cid == (-1 if s.clothes_id is None else s.clothes_id)


def test_eval_loader_is_ordered_and_unaugmented(tmp_path):
    samples = write_split(tmp_path, {0: 3, 1: 2})
    loader = build_eval_loader(samples, (H, W), batch_size=4, with_masks=True)
    batches = list(loader)
    assert [b["index"].tolist() for b in batches] == [[0, 1, 2, 3], [4]]
    first = batches[0]
    # Sample j has its block 8+j..24+j; part 1 (top band) and 4 (legs) are labelled too.
    assert first["visible"][0].tolist() == [True, True, False, True, False]
    red = torch.stack([is_red(img) for img in first["image"]])
    agree = (red == (first["mask"] == 2)).float().mean()
    assert agree > 0.98  # JPEG edges aside, image and mask coincide
    assert "caption" not in first and "captions" not in first
    again = next(iter(loader))
    assert torch.equal(again["image"], first["image"])


def test_missing_masks_give_zeros_and_flags(tmp_path):
    samples = write_split(tmp_path, {0: 2, 1: 2}, masks=False, parsing=False)
    batch = next(iter(build_eval_loader(samples, (H, W), batch_size=4, with_masks=True)))
    assert not batch["has_mask"].any() and not batch["has_parsing"].any()
    assert not batch["visible"].any() and int(batch["mask"].abs().sum()) == 0
    # Masks on disk but not asked for (the evaluation default): also zeros.
    samples = write_split(tmp_path, {0: 2, 1: 2})
    batch = next(iter(build_eval_loader(samples, (H, W), batch_size=4)))
    assert not batch["has_mask"].any()


def test_augmentation_is_deterministic_per_seed_epoch_whatever_the_workers(tmp_path):
    samples = write_split(tmp_path, {pid: 3 for pid in range(4)})

    def epoch_images(num_workers, epoch, seed=0):
        loader = build_train_loader(samples, (H, W), p=2, k=2, seed=seed, num_workers=num_workers,
                                    text_kinds=("caption",))
        loader.set_epoch(epoch)
        return [(b["index"], b["image"], b["mask"], b["caption"]) for b in loader]

    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    serial = epoch_images(0, epoch=2)
    assert torch.equal(torch.rand(3), expected_next), "the loader consumed the caller's torch RNG"
    parallel = epoch_images(2, epoch=2)
    assert len(serial) == len(parallel) > 0
    for (i0, x0, m0, c0), (i1, x1, m1, c1) in zip(serial, parallel):
        assert torch.equal(i0, i1) and torch.equal(x0, x1) and torch.equal(m0, m1) and c0 == c1
    other_epoch = epoch_images(0, epoch=3)
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(serial, other_epoch))


def test_repeated_draws_of_one_image_get_different_augmentations(tmp_path):
    samples = write_split(tmp_path, {0: 1, 1: 1})
    loader = build_train_loader(samples, (H, W), p=2, k=4, seed=0)
    batch = next(iter(loader))
    first = batch["image"][batch["index"] == 0]
    assert len(first) == 4
    assert len({x.numpy().tobytes() for x in first}) > 1


def test_label_map_problems_name_the_file(tmp_path):
    samples = write_split(tmp_path, {0: 1})
    bad = tmp_path / "bad.png"
    Image.fromarray(np.full((H, W), 9, np.uint8)).save(bad)
    ds = ReidImageDataset([Sample(samples[0].path, 0, 0, mask_path=str(bad))], build_eval_transform((H, W)))
    with pytest.raises(ValueError, match=r"bad\.png: labels must be 0\.\.5, found 9"):
        ds[0]
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(rgb)
    ds = ReidImageDataset([Sample(samples[0].path, 0, 0, mask_path=str(rgb))], build_eval_transform((H, W)))
    with pytest.raises(ValueError, match="single-channel"):
        ds[0]


def test_label_map_of_other_size_is_nearest_resized_to_the_image(tmp_path):
    samples = write_split(tmp_path, {0: 1}, masks=False, parsing=False)
    small = tmp_path / "small.png"
    m = np.zeros((H // 2, W // 2), np.uint8)
    m[: H // 4] = 1
    m[H // 4 :] = 3
    Image.fromarray(m).save(small)
    ds = ReidImageDataset([Sample(samples[0].path, 0, 0, mask_path=str(small))], build_eval_transform((H, W)))
    item = ds[0]
    assert item["mask"].shape == (H, W)
    assert set(item["mask"].unique().tolist()) == {1, 3}
    assert (item["mask"][: H // 2] == 1).all() and (item["mask"][H // 2 :] == 3).all()


def test_text_loader_yields_captions_and_pids():
    texts = [Sample(f"img{i}.jpg", pid=i // 2, camid=0, texts=(("caption", "", f"caption {i}"),)) for i in range(5)]
    batches = list(build_text_loader(texts, batch_size=2))
    assert [b["caption"] for b in batches] == [["caption 0", "caption 1"], ["caption 2", "caption 3"], ["caption 4"]]
    assert torch.equal(torch.cat([b["pid"] for b in batches]), torch.tensor([0, 0, 1, 1, 2]))
    assert batches[0]["pid"].dtype == torch.long
    with pytest.raises(ValueError, match="one Sample per caption"):
        build_text_loader([Sample("x.jpg", 0, 0, texts=(("caption", "", "a"), ("caption", "", "b")))], batch_size=2)


def test_collate_rejects_unknown_types():
    with pytest.raises(TypeError, match="'weird'"):
        collate_reid([{"weird": 1.5}])
