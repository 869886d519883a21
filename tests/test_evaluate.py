"""The evaluation engine against hand-computed cases and plain per-query oracles
written the way torchreid (standard), CAL (cloth-changing) and IRRA (text-to-image)
write their evaluators, with argsort made stable (ties go to the lower gallery
index, the rule the engine documents)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reidbench.harness.evaluate import (
    RankResult,
    flip_average,
    l2_normalize,
    pairwise_distance,
    prepare_distance,
    rank_metrics,
    rank_metrics_from_features,
    retrieval_metrics,
)


# ----------------------------------------------------------------------------
# Oracles
# ----------------------------------------------------------------------------
def torchreid_style(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """torchreid's eval_market1501 loop, verbatim in structure (stable argsort)."""
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_AP, all_INP = [], [], []
    for q_idx in range(len(q_pids)):
        order = indices[q_idx]
        remove = (g_pids[order] == q_pids[q_idx]) & (g_camids[order] == q_camids[q_idx])
        raw_cmc = matches[q_idx][~remove]
        if not np.any(raw_cmc):
            continue
        cmc = raw_cmc.cumsum()
        max_pos_idx = np.max(np.where(raw_cmc == 1))
        all_INP.append(cmc[max_pos_idx] / (max_pos_idx + 1.0))
        cmc[cmc > 1] = 1
        padded = np.ones(max_rank)  # a gallery shorter than max_rank: the curve stays at 1
        padded[: min(max_rank, len(cmc))] = cmc[:max_rank]
        all_cmc.append(padded)
        tmp = raw_cmc.cumsum() / (np.arange(len(raw_cmc)) + 1.0) * raw_cmc
        all_AP.append(tmp.sum() / raw_cmc.sum())
    if not all_AP:
        return None
    return np.mean(all_cmc, 0), float(np.mean(all_AP)), float(np.mean(all_INP)), len(all_AP)


def cal_style(distmat, q_pids, g_pids, q_camids, g_camids, q_cloth, g_cloth, mode, max_rank=50):
    """CAL's evaluate_with_clothes + compute_ap_cmc (with mINP added the same way)."""
    index = np.argsort(distmat, axis=1, kind="stable")
    cmcs, aps, inps = [], [], []
    for i in range(len(q_pids)):
        query_index = np.argwhere(g_pids == q_pids[i]).ravel()
        camera_index = np.argwhere(g_camids == q_camids[i]).ravel()
        cloth_index = np.argwhere(g_cloth == q_cloth[i]).ravel()
        good = np.setdiff1d(query_index, camera_index, assume_unique=True)
        if mode == "CC":
            good = np.setdiff1d(good, cloth_index, assume_unique=True)
            junk = np.union1d(np.intersect1d(query_index, camera_index), np.intersect1d(query_index, cloth_index))
        else:
            good = np.intersect1d(good, cloth_index)
            junk = np.union1d(np.intersect1d(query_index, camera_index), np.setdiff1d(query_index, cloth_index))
        if good.size == 0:
            continue
        idx = index[i][np.isin(index[i], junk, invert=True)]
        rows_good = np.argwhere(np.isin(idx, good)).ravel()
        cmc = np.zeros(max(len(idx), max_rank))
        cmc[rows_good[0]:] = 1.0
        cmcs.append(cmc[:max_rank])
        aps.append(sum((k + 1) / (rows_good[k] + 1) for k in range(len(good))) / len(good))
        inps.append(len(good) / (rows_good[-1] + 1))
    if not aps:
        return None
    return np.mean(cmcs, 0), float(np.mean(aps)), float(np.mean(inps)), len(aps)


def irra_style(similarity, q_pids, g_pids, max_rank=50):
    """IRRA's rank(): sort by similarity, descending (stable)."""
    sim = torch.as_tensor(similarity)
    indices = torch.sort(sim, dim=1, descending=True, stable=True).indices
    matches = torch.as_tensor(g_pids)[indices].eq(torch.as_tensor(q_pids).view(-1, 1))
    all_cmc = matches[:, :max_rank].cumsum(1)
    all_cmc[all_cmc > 1] = 1
    cmc = np.ones(max_rank)
    cmc[: all_cmc.shape[1]] = all_cmc.double().mean(0).numpy()
    tmp = matches.cumsum(1).double()
    inp = [tmp[i][row.nonzero()[-1]] / (row.nonzero()[-1] + 1.0) for i, row in enumerate(matches)]
    ap = (tmp / torch.arange(1, tmp.shape[1] + 1) * matches).sum(1) / matches.sum(1)
    return cmc, float(ap.mean()), float(torch.cat(inp).mean()), len(q_pids)


def oracle(protocol, distmat, qp, gp, qc, gc, qk=None, gk=None, max_rank=50):
    if protocol == "standard":
        return torchreid_style(distmat, qp, gp, qc, gc, max_rank)
    return cal_style(distmat, qp, gp, qc, gc, qk, gk, "CC" if protocol == "cc" else "SC", max_rank)


def assert_same(result: RankResult, expected, tol=1e-9):
    cmc, mAP, mINP, num_valid = expected
    assert result.num_valid == num_valid
    np.testing.assert_allclose(result.cmc, cmc, rtol=0, atol=tol)
    assert result.mAP == pytest.approx(mAP, abs=tol)
    assert result.mINP == pytest.approx(mINP, abs=tol)


# ----------------------------------------------------------------------------
# Hand-computed cases
# ----------------------------------------------------------------------------
G_PIDS = np.array([1, 2, 1, 0, 1, 3])
G_CAMS = np.array([0, 1, 1, 1, 2, 0])


def test_standard_protocol_by_hand():
    q_pids = np.array([1, 4, 3, 2, 1])
    q_cams = np.array([0, 1, 0, 0, 2])
    distmat = np.array([
        # q0 pid 1 cam 0: g0 is junk (same cam); kept order g1 g2* g3(pid 0 distractor) g4* g5
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        # q1 pid 4: not in the gallery -> skipped
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        # q2 pid 3 cam 0: its only match g5 is in cam 0 -> junk -> skipped
        [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],
        # q3 pid 2 cam 0: g1 first
        [0.9, 0.0, 0.9, 0.9, 0.9, 0.9],
        # q4 pid 1 cam 2: g4 junk; ties at 0.3 broken by gallery index: g3 g5 g0* g1 g2* (g4)
        [0.3, 0.3, 0.3, 0.1, 0.3, 0.2],
    ])
    r = rank_metrics(distmat, q_pids, G_PIDS, q_cams, G_CAMS, max_rank=5)
    ap = [(1 / 2 + 2 / 4) / 2, 1.0, (1 / 3 + 2 / 5) / 2]
    inp = [2 / 4, 1.0, 2 / 5]
    assert r.num_valid == 3 and r.num_queries == 5
    np.testing.assert_allclose(r.cmc, [1 / 3, 2 / 3, 1, 1, 1])
    assert r.mAP == pytest.approx(np.mean(ap))
    assert r.mINP == pytest.approx(np.mean(inp))
    s = r.summary()
    assert s["R1"] == pytest.approx(100 / 3) and s["R5"] == pytest.approx(100.0)
    assert "R10" not in s  # max_rank 5 cannot say anything about rank 10
    assert s["mAP"] == pytest.approx(100 * np.mean(ap))


def test_tie_with_a_lower_index_negative_ranks_it_first():
    # g0 (negative) and g1 (positive) at the same distance: g0 comes first.
    r = rank_metrics(np.array([[0.5, 0.5]]), [1], [2, 1], [0], [1, 1], max_rank=2)
    assert r.cmc.tolist() == [0.0, 1.0] and r.mAP == pytest.approx(0.5)
    # Swap the gallery order and the positive wins the tie.
    r = rank_metrics(np.array([[0.5, 0.5]]), [1], [1, 2], [0], [1, 1], max_rank=2)
    assert r.cmc.tolist() == [1.0, 1.0] and r.mAP == 1.0


# Clothes-changing gallery for query pid 1, camera 0, clothes 7:
#   g0 pid1 cam0 clo7 | g1 pid1 cam1 clo7 | g2 pid1 cam1 clo8 | g3 pid2 cam1 clo7
#   g4 pid1 cam0 clo8 | g5 pid1 cam2 clo9 | g6 pid0 cam1 clo0
CC_G = dict(pids=np.array([1, 1, 1, 2, 1, 1, 0]), cams=np.array([0, 1, 1, 1, 0, 2, 1]),
            clothes=np.array([7, 7, 8, 7, 8, 9, 0]))
CC_D = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.35]])


def test_cc_protocol_by_hand():
    # Positives: other camera AND other clothes -> g2, g5. Junk: g0 (cam), g1 (clothes), g4 (cam).
    # Kept ranking: g2* (0.3) g6 (0.35) g3 (0.4) g5* (0.6)
    r = rank_metrics(CC_D, [1], CC_G["pids"], [0], CC_G["cams"], [7], CC_G["clothes"], protocol="cc", max_rank=4)
    assert r.cmc.tolist() == [1, 1, 1, 1]
    assert r.mAP == pytest.approx((1 / 1 + 2 / 4) / 2)
    assert r.mINP == pytest.approx(2 / 4)


def test_same_clothes_protocol_by_hand():
    # Positives: other camera AND same clothes -> g1 only. Junk: g0, g4 (cam), g2, g5 (other clothes).
    # Kept ranking: g1* (0.2) g6 g3
    r = rank_metrics(CC_D, [1], CC_G["pids"], [0], CC_G["cams"], [7], CC_G["clothes"], protocol="same_clothes",
                     max_rank=3)
    assert r.cmc.tolist() == [1, 1, 1] and r.mAP == 1.0 and r.mINP == 1.0
    # Put the distractor first: the only positive drops to rank 2.
    d = CC_D.copy()
    d[0, 6] = 0.0
    r = rank_metrics(d, [1], CC_G["pids"], [0], CC_G["cams"], [7], CC_G["clothes"], protocol="same_clothes",
                     max_rank=3)
    assert r.cmc.tolist() == [0, 1, 1] and r.mAP == pytest.approx(0.5) and r.mINP == pytest.approx(0.5)


def test_standard_ignores_clothes_and_cc_skips_queries_without_changed_clothes():
    r = rank_metrics(CC_D, [1], CC_G["pids"], [0], CC_G["cams"], [7], CC_G["clothes"], protocol="standard",
                     max_rank=3)
    # Positives g1 g2 g5 (other camera); junk g0 g4. Kept: g1* g2* g6 g3 g5*
    assert r.mAP == pytest.approx((1 + 1 + 3 / 5) / 3)
    # A second query whose matches all wear its clothes has no cc positive and is skipped.
    d = np.vstack([CC_D, CC_D])
    r = rank_metrics(d, [1, 2], CC_G["pids"], [0, 0], CC_G["cams"], [7, 7], CC_G["clothes"], protocol="cc")
    assert r.num_valid == 1 and r.num_queries == 2


def test_t2i_by_hand():
    # Two captions, four images; similarity ranks by hand.
    text = np.array([[1.0, 0.0], [0.0, 1.0]])
    image = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6]])
    # caption 0 (pid 5): sims 1, .6, 0, .8 -> order img0(5) img3(7) img1(5) img2(7): positives at ranks 1, 3
    # caption 1 (pid 7): sims 0, .8, 1, .6 -> order img2(7) img1(5) img3(7) img0(5): positives at ranks 1, 3
    r = retrieval_metrics(text, image, [5, 7], [5, 5, 7, 7], max_rank=10)
    assert r.num_valid == 2
    assert r.cmc[0] == 1.0
    assert r.mAP == pytest.approx((1 + 2 / 3) / 2)
    assert r.mINP == pytest.approx(2 / 3)
    # Nothing is junk in t2i: an image "from the same camera" still counts.
    assert set(r.summary()) == {"R1", "R5", "R10", "mAP", "mINP"}


def test_gallery_smaller_than_max_rank_keeps_the_curve_length():
    r = rank_metrics(np.array([[0.2, 0.1]]), [1], [1, 2], [0], [1, 1], max_rank=50)
    assert len(r.cmc) == 50 and r.cmc[0] == 0 and np.all(r.cmc[1:] == 1)


# ----------------------------------------------------------------------------
# Random problems against the oracles
# ----------------------------------------------------------------------------
def random_labels(rng, n, num_pids, num_cams, num_clothes):
    return (rng.integers(0, num_pids, n), rng.integers(0, num_cams, n), rng.integers(0, num_clothes, n))


@pytest.mark.parametrize("protocol", ["standard", "cc", "same_clothes"])
def test_distmat_path_matches_oracle_on_random_problems(protocol):
    checked = 0
    for seed in range(60):
        rng = np.random.default_rng(seed)
        nq, ng = int(rng.integers(1, 25)), int(rng.integers(1, 60))
        qp, qc, qk = random_labels(rng, nq, 6, 3, 3)
        gp, gc, gk = random_labels(rng, ng, 6, 3, 3)
        # Coarse values make ties common; half the seeds use float32, half float64.
        d = rng.integers(0, 8, (nq, ng)).astype(np.float32 if seed % 2 else np.float64) / 8
        expected = oracle(protocol, d, qp, gp, qc, gc, qk, gk, max_rank=10)
        if expected is None:
            with pytest.raises(ValueError, match="no valid query"):
                rank_metrics(d, qp, gp, qc, gc, qk, gk, protocol=protocol, max_rank=10)
            continue
        assert_same(rank_metrics(d, qp, gp, qc, gc, qk, gk, protocol=protocol, max_rank=10), expected)
        checked += 1
    assert checked > 40


def exact_features(rng, n, dim, metric):
    """Features whose distances are computed without rounding, so every chunking
    gives bit-identical distances and ties are frequent."""
    if metric == "euclidean":
        return rng.integers(-2, 3, (n, dim)).astype(np.float32)
    f = np.zeros((n, dim), np.float32)  # exactly four ones: normalised entries are 0.5
    for row in f:
        row[rng.choice(dim, 4, replace=False)] = 1.0
    return f


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("protocol", ["standard", "cc", "same_clothes"])
def test_feature_path_matches_oracle_on_random_problems(protocol, metric):
    checked = 0
    for seed in range(15):
        rng = np.random.default_rng(100 + seed)
        nq, ng = int(rng.integers(1, 30)), int(rng.integers(2, 70))
        qp, qc, qk = random_labels(rng, nq, 5, 3, 2)
        gp, gc, gk = random_labels(rng, ng, 5, 3, 2)
        qf, gf = exact_features(rng, nq, 6, metric), exact_features(rng, ng, 6, metric)
        d = pairwise_distance(qf, gf, metric).numpy()
        expected = oracle(protocol, d, qp, gp, qc, gc, qk, gk, max_rank=20)
        if expected is None:
            continue
        r = rank_metrics_from_features(qf, gf, qp, gp, qc, gc, qk, gk, protocol=protocol, metric=metric,
                                       max_rank=20)
        assert_same(r, expected)
        # torch input, streamed in chunks of 3 queries: the same numbers
        r = rank_metrics_from_features(torch.from_numpy(qf), torch.from_numpy(gf), torch.from_numpy(qp), gp, qc, gc,
                                       qk, gk, protocol=protocol, metric=metric, max_rank=20, chunk_size=3)
        assert_same(r, expected)
        checked += 1
    assert checked > 8


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_feature_path_on_gaussian_features_matches_oracle_on_same_chunks(metric):
    # With real-valued features a chunked matrix product may differ from a full
    # one in the last bit, so the oracle sees the distances of the same chunks.
    for seed in range(10):
        rng = np.random.default_rng(200 + seed)
        nq, ng, chunk = 40, 90, 7
        qp, qc, _ = random_labels(rng, nq, 8, 4, 1)
        gp, gc, _ = random_labels(rng, ng, 8, 4, 1)
        dtype = np.float32 if seed % 2 else np.float64  # float64 takes the two-sort path
        qf, gf = rng.normal(size=(nq, 16)).astype(dtype), rng.normal(size=(ng, 16)).astype(dtype)
        dist = prepare_distance(torch.from_numpy(gf), metric)
        d = torch.cat([dist(torch.from_numpy(qf[i:i + chunk])) for i in range(0, nq, chunk)]).numpy()
        expected = torchreid_style(d, qp, gp, qc, gc, max_rank=50)
        r = rank_metrics_from_features(qf, gf, qp, gp, qc, gc, metric=metric, chunk_size=chunk)
        assert_same(r, expected)


def visibility_weighted_distance(query: dict, gallery: dict) -> torch.Tensor:
    """A ProFD-like part distance: mean cosine distance over parts visible in both."""
    q = torch.nn.functional.normalize(query["parts"], dim=-1)
    g = torch.nn.functional.normalize(gallery["parts"], dim=-1)
    per_part = 1 - torch.einsum("qpd,gpd->qgp", q, g)
    both = (query["visible"][:, None, :] & gallery["visible"][None, :, :]).float()
    return (per_part * both).sum(-1) / both.sum(-1).clamp(min=1)


@pytest.mark.parametrize("protocol", ["standard", "cc"])
def test_callable_metric_with_dict_features_matches_oracle(protocol):
    for seed in range(10):
        rng = np.random.default_rng(300 + seed)
        nq, ng, chunk = 17, 50, 5
        qp, qc, qk = random_labels(rng, nq, 6, 3, 2)
        gp, gc, gk = random_labels(rng, ng, 6, 3, 2)

        def feats(n):
            return {"parts": torch.from_numpy(rng.normal(size=(n, 3, 8)).astype(np.float32)),
                    "visible": torch.from_numpy(rng.random((n, 3)) < 0.7)}

        qf, gf = feats(nq), feats(ng)
        d = torch.cat([visibility_weighted_distance({k: v[i:i + chunk] for k, v in qf.items()}, gf)
                       for i in range(0, nq, chunk)]).numpy()
        expected = oracle(protocol, d, qp, gp, qc, gc, qk, gk)
        if expected is None:
            continue
        r = rank_metrics_from_features(qf, gf, qp, gp, qc, gc, qk, gk, protocol=protocol,
                                       metric=visibility_weighted_distance, chunk_size=chunk)
        assert_same(r, expected)


def test_t2i_matches_irra_on_random_problems():
    for seed in range(12):
        rng = np.random.default_rng(400 + seed)
        n_img = int(rng.integers(3, 60))
        ip = rng.integers(0, 6, n_img)
        tp = rng.choice(ip, int(rng.integers(1, 40)))  # every caption's pid has an image
        # Entries in {-1, 0, 1} with exactly four non-zeros: similarities are exact multiples of 1/4.
        def feats(n):
            f = np.zeros((n, 8), np.float32)
            for row in f:
                row[rng.choice(8, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
            return f

        tf, imf = feats(len(tp)), feats(n_img)
        sim = torch.from_numpy(l2_normalize(tf)) @ torch.from_numpy(l2_normalize(imf)).T
        expected = irra_style(sim, tp, ip, max_rank=10)
        for chunk in (None, 3):
            assert_same(retrieval_metrics(tf, imf, tp, ip, max_rank=10, chunk_size=chunk), expected)


# ----------------------------------------------------------------------------
# Errors a user would hit
# ----------------------------------------------------------------------------
def test_all_matches_in_the_query_camera_explains_itself():
    with pytest.raises(ValueError) as e:
        rank_metrics(np.zeros((2, 3)), [1, 2], [1, 2, 2], [0, 0], [0, 0, 0])
    msg = str(e.value)
    assert "no valid query" in msg and "camera" in msg and "basename" in msg
    with pytest.raises(ValueError, match="no gallery item of their pid"):
        rank_metrics(np.zeros((1, 2)), [9], [1, 2], [0], [1, 2])


def test_length_mismatches_name_the_arrays():
    with pytest.raises(ValueError, match=r"g_camids has 2 entries but distmat has 3 columns"):
        rank_metrics(np.zeros((1, 3)), [1], [1, 2, 3], [0], [1, 2])
    with pytest.raises(ValueError, match=r"q_pids has 3 entries but query_feats has 2 rows"):
        rank_metrics_from_features(np.ones((2, 4)), np.ones((3, 4)), [1, 2, 3], [1, 2, 3], [0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="dimension 4 but gallery_feats have 5"):
        rank_metrics_from_features(np.ones((2, 4)), np.ones((3, 5)), [1, 2], [1, 2, 3], [0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="image_pids has 1 entries but image_feats has 2 rows"):
        retrieval_metrics(np.ones((1, 4)), np.ones((2, 4)), [1], [1])


def test_invalid_features_are_refused_naming_the_side():
    good = np.ones((3, 4), np.float32)
    bad = good.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"gallery_feats contain NaN.*row 1"):
        rank_metrics_from_features(good, bad, [1, 2, 3], [1, 2, 3], [0, 0, 0], [1, 1, 1])
    bad[1, 2] = np.inf
    with pytest.raises(ValueError, match="query_feats contain NaN or infinite"):
        rank_metrics_from_features(bad, good, [1, 2, 3], [1, 2, 3], [0, 0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match=r"text_feats contain NaN"):
        retrieval_metrics(bad, good, [1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="too large for squared Euclidean distances"):
        rank_metrics_from_features(good * 1e19, good, [1, 2, 3], [1, 2, 3], [0, 0, 0], [1, 1, 1], metric="euclidean")
    d = np.zeros((2, 2))
    d[1, 0] = np.nan
    with pytest.raises(ValueError, match="distmat has NaN or infinite distances for query row 1"):
        rank_metrics(d, [1, 2], [1, 2], [0, 0], [1, 1])
    parts = {"parts": torch.ones(3, 2, 4), "visible": torch.ones(3, 2, dtype=torch.bool)}
    nan_metric = lambda q, g: torch.full((len(q["parts"]), len(g["parts"])), float("nan"))  # noqa: E731
    with pytest.raises(ValueError, match="metric's output has NaN"):
        rank_metrics_from_features(parts, parts, [1, 2, 3], [1, 2, 3], [0, 0, 0], [1, 1, 1], metric=nan_metric)
    with pytest.raises(ValueError, match=r"returned shape \(3, 2\).*expected \(3, 3\)"):
        rank_metrics_from_features(parts, parts, [1, 2, 3], [1, 2, 3], [0, 0, 0], [1, 1, 1],
                                   metric=lambda q, g: torch.zeros(3, 2))


def test_clothes_protocols_need_known_clothes():
    with pytest.raises(ValueError, match="g_clothes not given"):
        rank_metrics(CC_D, [1], CC_G["pids"], [0], CC_G["cams"], q_clothes=[7], protocol="cc")
    with pytest.raises(ValueError, match="1 gallery items have a negative"):
        rank_metrics(CC_D, [1], CC_G["pids"], [0], CC_G["cams"], [7], np.array([7, 7, 8, 7, 8, 9, -1]),
                     protocol="same_clothes")
    with pytest.raises(ValueError, match="unknown protocol"):
        rank_metrics(CC_D, [1], CC_G["pids"], [0], CC_G["cams"], protocol="CC")


def test_t2i_caption_without_image_is_an_error_not_a_skip():
    with pytest.raises(ValueError, match="1 of 2 captions have no image of their pid"):
        retrieval_metrics(np.eye(2), np.eye(2), [1, 3], [1, 2])


# ----------------------------------------------------------------------------
# Test-time helpers
# ----------------------------------------------------------------------------
def test_flip_average_means_the_two_passes_and_flips_label_maps():
    images = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).view(2, 1, 2, 3)

    def embed(x):  # not flip-invariant: reads the left-most column
        return x[..., 0].flatten(1)

    out = flip_average(embed, images)
    assert torch.allclose(out, (images[..., 0] + images[..., -1]).flatten(1) / 2)

    parsing = torch.tensor([[[14, 16, 5]]])
    mask = torch.tensor([[[1, 2, 3]]])
    seen = []

    def embed_dict(batch):
        seen.append(batch)
        return {"feat": batch["image"].mean((1, 2, 3))[:, None], "visible": torch.ones(1, 5, dtype=torch.bool)}

    out = flip_average(embed_dict, {"image": images[:1], "mask": mask, "parsing": parsing, "pid": torch.tensor([3])})
    assert seen[1]["mask"].tolist() == [[[3, 2, 1]]]
    assert seen[1]["parsing"].tolist() == [[[5, 17, 15]]]  # mirrored AND left/right swapped
    assert seen[1]["pid"].tolist() == [3]
    assert out["visible"].all()
    with pytest.raises(ValueError, match="not floating and differs"):
        flip_average(lambda b: {"v": b["image"][:, 0, 0, :1] > 1}, {"image": images[:1]})


def test_l2_normalize_keeps_the_container_type():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    out = l2_normalize(x)
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])
    assert torch.allclose(l2_normalize(torch.from_numpy(x)), torch.from_numpy(out))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_features_give_the_same_numbers():
    rng = np.random.default_rng(7)
    qp, qc, _ = random_labels(rng, 50, 10, 4, 1)
    gp, gc, _ = random_labels(rng, 300, 10, 4, 1)
    qf, gf = exact_features(rng, 50, 8, "cosine"), exact_features(rng, 300, 8, "cosine")
    cpu = rank_metrics_from_features(qf, gf, qp, gp, qc, gc)
    gpu = rank_metrics_from_features(torch.from_numpy(qf).cuda(), torch.from_numpy(gf).cuda(), qp, gp, qc, gc)
    np.testing.assert_array_equal(cpu.cmc, gpu.cmc)
    assert cpu.mAP == pytest.approx(gpu.mAP, abs=1e-12) and cpu.mINP == pytest.approx(gpu.mINP, abs=1e-12)
