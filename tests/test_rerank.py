"""Sparse k-reciprocal re-ranking against the dense reference algorithm (Zhong et
al.'s ``re_ranking`` as torchreid / TransReID write it), transcribed plainly here
with a stable argsort."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reidbench.harness.evaluate import pairwise_distance, rank_metrics
from reidbench.harness.rerank import k_reciprocal_rerank


def dense_re_ranking(qf, gf, k1, k2, lambda_value, metric="euclidean"):
    x = torch.cat([torch.as_tensor(qf), torch.as_tensor(gf)])
    original_dist = pairwise_distance(x, x, metric).numpy().astype(np.float32)
    query_num = len(qf)
    all_num = gallery_num = len(x)
    original_dist = np.transpose(original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist).astype(np.float32)
    initial_rank = np.argsort(original_dist, kind="stable").astype(np.int32)
    for i in range(all_num):
        forward_k_neigh_index = initial_rank[i, :k1 + 1]
        backward_k_neigh_index = initial_rank[forward_k_neigh_index, :k1 + 1]
        fi = np.where(backward_k_neigh_index == i)[0]
        k_reciprocal_index = forward_k_neigh_index[fi]
        k_reciprocal_expansion_index = k_reciprocal_index
        for j in range(len(k_reciprocal_index)):
            candidate = k_reciprocal_index[j]
            candidate_forward_k_neigh_index = initial_rank[candidate, :int(np.around(k1 / 2.)) + 1]
            candidate_backward_k_neigh_index = initial_rank[candidate_forward_k_neigh_index,
                                                            :int(np.around(k1 / 2.)) + 1]
            fi_candidate = np.where(candidate_backward_k_neigh_index == candidate)[0]
            candidate_k_reciprocal_index = candidate_forward_k_neigh_index[fi_candidate]
            if len(np.intersect1d(candidate_k_reciprocal_index, k_reciprocal_index)) > 2. / 3 * len(
                    candidate_k_reciprocal_index):
                k_reciprocal_expansion_index = np.append(k_reciprocal_expansion_index, candidate_k_reciprocal_index)
        k_reciprocal_expansion_index = np.unique(k_reciprocal_expansion_index)
        weight = np.exp(-original_dist[i, k_reciprocal_expansion_index])
        V[i, k_reciprocal_expansion_index] = 1. * weight / np.sum(weight)
    original_dist = original_dist[:query_num, ]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=np.float32)
        for i in range(all_num):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
    invIndex = [np.where(V[:, i] != 0)[0] for i in range(gallery_num)]
    jaccard_dist = np.zeros_like(original_dist, dtype=np.float32)
    for i in range(query_num):
        temp_min = np.zeros(shape=[1, gallery_num], dtype=np.float32)
        indNonZero = np.where(V[i, :] != 0)[0]
        indImages = [invIndex[ind] for ind in indNonZero]
        for j in range(len(indNonZero)):
            temp_min[0, indImages[j]] = temp_min[0, indImages[j]] + np.minimum(V[i, indNonZero[j]],
                                                                               V[indImages[j], indNonZero[j]])
        jaccard_dist[i] = 1 - temp_min / (2. - temp_min)
    final_dist = jaccard_dist * (1 - lambda_value) + original_dist * lambda_value
    return final_dist[:query_num, query_num:]


def clustered(rng, n, ids, dim, spread, integer=False):
    pids = rng.integers(0, ids, n)
    centres = np.random.default_rng(12345).normal(size=(ids, dim)) * 3
    f = centres[pids] + rng.normal(size=(n, dim)) * spread
    if integer:  # exact arithmetic: bit-identical distances in any order, ties kept
        f = np.round(f)
    return f.astype(np.float32), pids


@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (5, 3, 0.3), (4, 1, 0.5), (7, 2, 0.0)])
def test_sparse_rerank_equals_dense_reference_on_integer_features(k1, k2, lam):
    for seed in range(2):
        rng = np.random.default_rng(seed)
        qf, _ = clustered(rng, 12, 6, 5, 1.5, integer=True)
        gf, _ = clustered(rng, 50, 6, 5, 1.5, integer=True)
        expected = dense_re_ranking(qf, gf, k1, k2, lam)
        got = k_reciprocal_rerank(qf, gf, k1=k1, k2=k2, lambda_value=lam, chunk_size=7).dense()
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_sparse_rerank_equals_dense_reference_on_real_features(metric):
    rng = np.random.default_rng(5)
    qf, qp = clustered(rng, 25, 8, 16, 1.0)
    gf, gp = clustered(rng, 90, 8, 16, 1.0)
    expected = dense_re_ranking(qf, gf, 20, 6, 0.3, metric)
    rr = k_reciprocal_rerank(qf, gf, metric=metric, chunk_size=16)
    np.testing.assert_allclose(rr.dense(), expected, rtol=0, atol=1e-5)
    # Streaming evaluation on the re-ranked distances = evaluation of the dense matrix.
    qc, gc = np.zeros(25, int), np.ones(90, int)
    streamed = rr.rank_metrics(qp, gp, qc, gc, chunk_size=4)
    dense = rank_metrics(rr.dense(), qp, gp, qc, gc)
    assert streamed.mAP == pytest.approx(dense.mAP, abs=1e-12)
    np.testing.assert_array_equal(streamed.cmc, dense.cmc)


def test_rerank_improves_retrieval_on_clustered_data():
    # The point of re-ranking: neighbours of neighbours pull in hard positives.
    rng = np.random.default_rng(11)
    qf, qp = clustered(rng, 40, 10, 8, 2.2)
    gf, gp = clustered(rng, 300, 10, 8, 2.2)
    qc, gc = np.zeros(40, int), np.ones(300, int)
    plain = rank_metrics(pairwise_distance(qf, gf, "euclidean").numpy(), qp, gp, qc, gc)
    reranked = k_reciprocal_rerank(qf, gf).rank_metrics(qp, gp, qc, gc)
    assert reranked.mAP > plain.mAP + 0.02


def test_callable_metric_with_dict_features():
    rng = np.random.default_rng(3)
    qf, _ = clustered(rng, 10, 4, 6, 1.0)
    gf, _ = clustered(rng, 40, 4, 6, 1.0)

    def part_distance(q: dict, g: dict) -> torch.Tensor:
        return pairwise_distance(q["f"], g["f"], "euclidean") * q["w"][:, None] * g["w"][None, :]

    ones_q, ones_g = torch.ones(10), torch.ones(40)
    via_dict = k_reciprocal_rerank({"f": torch.from_numpy(qf), "w": ones_q}, {"f": torch.from_numpy(gf), "w": ones_g},
                                   metric=part_distance, chunk_size=9).dense()
    np.testing.assert_allclose(via_dict, dense_re_ranking(qf, gf, 20, 6, 0.3), rtol=0, atol=1e-5)


def test_bad_parameters_are_refused():
    f = np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match="k1 and k2"):
        k_reciprocal_rerank(f, f, k1=0)
    with pytest.raises(ValueError, match="lambda_value"):
        k_reciprocal_rerank(f, f, lambda_value=1.5)
    with pytest.raises(ValueError, match="all items are identical"):
        k_reciprocal_rerank(f, f)
    bad = f.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="gallery_feats contain NaN"):
        k_reciprocal_rerank(f, bad)
