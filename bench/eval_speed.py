"""Evaluation speed on an MSMT17-shaped problem: full-argsort reference vs the streaming engine.

    python3 bench/eval_speed.py                   # full size: 11,659 x 82,161
    python3 bench/eval_speed.py --scale 0.1       # a quick run
    python3 bench/eval_speed.py --ref-parts 6     # the reference in 6 query slices (it needs ~24 GB whole)
    python3 bench/eval_speed.py --threads 1       # one torch thread in both runs (fairer on a busy machine)

The problem has MSMT17's shape: 11,659 queries, 82,161 gallery images, 512-d
float32 features, 4,101 identities over 15 cameras. Each identity is seen by 2-6
cameras and its images are spread over them, so a query has about 20 positives
(gallery images of its pid in other cameras). Features are identity centre
(identities come in look-alike groups) + camera shift + per-image noise,
L2-normalised, with the noise set so the cosine ranking lands where trained
models on MSMT17 do: at full size R1 89.8 %, mAP 63.9 %, mINP 19.2 % (CLIP-ReID
reports R1 88.7 / mAP 73.4; AGW mINP 14.7). The streaming engine's work grows
with how far down the last positive is, so a realistic difficulty makes a fair
benchmark; ``--noise`` makes it harder.

(a) the reference is torchreid's / fast-reid's method written plainly in numpy:
    the Q x G distance matrix, ``np.argsort`` of all of it, the match matrix,
    then the per-query loop of ``eval_market1501`` (its AP step vectorised).
    Whole, it peaks at ~24 GB on MSMT17: distances 3.8 GB + argsort indices
    7.7 GB + the int64 gather that builds the match matrix 7.7 GB, and later the
    match matrix 3.8 GB + the per-query CMC arrays that ``all_cmc.append(cmc[:max_rank])``
    keeps alive through their views, 7.7 GB;
(b) ``rank_metrics_from_features`` streams query chunks and counts.
Both compute distances with ``prepare_distance`` over the same row chunks (a
chunked matrix product is not bit-identical to a whole one). The reference's
``np.argsort`` orders tied distances arbitrarily (introsort) where the engine
puts the lower gallery index first, so the metrics agree to ~1e-6 (float32
distances of 82,161 items do tie); ``--stable-ref`` sorts stably and they agree
exactly (the CMC up to the reference's float32 rounding). Each side runs in its
own subprocess, timed from loaded features to metrics; its peak memory is that
process's maximum resident set (``getrusage``), interpreter and torch
included. The last line is machine-readable: ``SUMMARY speedup=... ref_s=...
ours_s=... cpu_speedup=... ref_peak_gb=... ours_peak_gb=... max_diff=...``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MSMT17 = dict(num_query=11_659, num_gallery=82_161, dim=512, num_ids=4_101, num_cams=15)


def make_problem(scale: float, seed: int, noise: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    nq, ng = round(MSMT17["num_query"] * scale), round(MSMT17["num_gallery"] * scale)
    n_ids, n_cams, dim = max(2, round(MSMT17["num_ids"] * scale)), MSMT17["num_cams"], MSMT17["dim"]
    # Each identity walks past 2-6 of the 15 cameras; image counts per identity vary.
    id_cams = [rng.choice(n_cams, rng.integers(2, 7), replace=False) for _ in range(n_ids)]
    weight = rng.gamma(2.0, 1.0, n_ids)
    weight /= weight.sum()

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        pids = rng.choice(n_ids, n, p=weight)
        cams = np.array([rng.choice(id_cams[p]) for p in pids])
        return pids, cams

    q_pids, q_cams = sample(nq)
    g_pids, g_cams = sample(ng)
    # Look-alikes: identities come in groups of about ten sharing a component
    # (uniforms, similar clothes), so the hard negatives are other identities.
    groups = rng.standard_normal((max(1, n_ids // 10), dim), dtype=np.float32)
    centres = math.sqrt(0.65) * groups[rng.integers(0, len(groups), n_ids)]
    centres += math.sqrt(0.35) * rng.standard_normal((n_ids, dim), dtype=np.float32)
    cam_shift = 0.2 * rng.standard_normal((n_cams, dim), dtype=np.float32)

    def feats(pids: np.ndarray, cams: np.ndarray) -> np.ndarray:
        # Image quality varies (blur, occlusion): a log-normal noise scale per image.
        scale = noise * np.exp(0.1 * rng.standard_normal((len(pids), 1))).astype(np.float32)
        f = centres[pids] + cam_shift[cams] + scale * rng.standard_normal((len(pids), dim), dtype=np.float32)
        return (f / np.linalg.norm(f, axis=1, keepdims=True)).astype(np.float32)  # embeddings are float32

    return dict(qf=feats(q_pids, q_cams), gf=feats(g_pids, g_cams), q_pids=q_pids, g_pids=g_pids,
                q_cams=q_cams, g_cams=g_cams)


def reference(p: dict[str, np.ndarray], chunk: int, parts: int = 1, stable: bool = False
              ) -> tuple[np.ndarray, float, float]:
    """torchreid's / fast-reid's Python ``eval_market1501`` (argsort everything, match
    matrix, per-query loop). Their AP step builds a Python list over all ranks
    of every query (``[x / (i+1.) for i, x in enumerate(tmp_cmc)]``); here it is
    vectorised, which makes this reference faster than the original and the
    measured speed-up conservative.

    ``parts > 1`` runs it on that many consecutive query slices, one after the
    other, each against the whole gallery: the same per-query work and the same
    numbers, with 1/parts of the memory (for machines that cannot hold ~25 GB).
    ``stable`` sorts with ``kind="stable"``: ties in distance then fall in gallery
    order, the engine's documented rule, instead of introsort's arbitrary order.
    """
    import torch

    from reidbench.harness.evaluate import prepare_distance

    qf, gf = torch.from_numpy(p["qf"]), torch.from_numpy(p["gf"])
    dist = prepare_distance(gf, "cosine")
    q_pids_all, g_pids, q_camids_all, g_camids = p["q_pids"], p["g_pids"], p["q_cams"], p["g_cams"]
    max_rank = 50
    all_cmc, all_AP, all_INP = [], [], []
    # Part boundaries fall on chunk boundaries, so every distance comes from the same chunk as in ours.
    n_chunks = -(-len(qf) // chunk)
    bounds = [min(len(qf), chunk * round(i * n_chunks / parts)) for i in range(parts + 1)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        distmat = np.empty((b - a, len(gf)), p["qf"].dtype)
        for s in range(a, b, chunk):
            distmat[s - a:s - a + chunk] = dist(qf[s:s + chunk]).numpy()
        q_pids, q_camids = q_pids_all[a:b], q_camids_all[a:b]
        indices = np.argsort(distmat, axis=1, kind="stable" if stable else None)
        matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
        for q_idx in range(len(q_pids)):
            order = indices[q_idx]
            remove = (g_pids[order] == q_pids[q_idx]) & (g_camids[order] == q_camids[q_idx])
            raw_cmc = matches[q_idx][np.invert(remove)]
            if not np.any(raw_cmc):
                continue
            cmc = raw_cmc.cumsum()
            max_pos_idx = np.max(np.where(raw_cmc == 1))
            all_INP.append(cmc[max_pos_idx] / (max_pos_idx + 1.0))
            cmc[cmc > 1] = 1
            all_cmc.append(cmc[:max_rank])
            num_rel = raw_cmc.sum()
            tmp_cmc = raw_cmc.cumsum() / (np.arange(len(raw_cmc)) + 1.0) * raw_cmc
            all_AP.append(tmp_cmc.sum() / num_rel)
        del distmat, indices, matches
    cmc = np.asarray(all_cmc).astype(np.float32).sum(0) / len(all_AP)
    return cmc, float(np.mean(all_AP)), float(np.mean(all_INP))


def ours(p: dict[str, np.ndarray], chunk: int) -> tuple[np.ndarray, float, float]:
    from reidbench.harness.evaluate import rank_metrics_from_features

    r = rank_metrics_from_features(p["qf"], p["gf"], p["q_pids"], p["g_pids"], p["q_cams"], p["g_cams"],
                                   metric="cosine", chunk_size=chunk)
    return r.cmc, r.mAP, r.mINP


def child(which: str, data_dir: str, chunk: int, threads: int, parts: int, stable: bool) -> None:
    import torch  # (import cost is not part of the timing)

    if threads:
        torch.set_num_threads(threads)

    import reidbench.harness.evaluate  # noqa: F401

    p = {k: np.load(os.path.join(data_dir, f"{k}.npy")) for k in ("qf", "gf", "q_pids", "g_pids", "q_cams", "g_cams")}
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    cmc, mAP, mINP = reference(p, chunk, parts, stable) if which == "ref" else ours(p, chunk)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    peak_gb = after.ru_maxrss * 1024 / 1e9  # ru_maxrss is KiB on Linux
    print(json.dumps(dict(seconds=seconds, cpu_s=cpu, peak_gb=peak_gb, cmc=[float(x) for x in cmc], mAP=mAP,
                          mINP=mINP)))


def run_child(which: str, data_dir: str, chunk: int, threads: int, parts: int, stable: bool) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", which, "--data", data_dir,
                          "--chunk", str(chunk), "--threads", str(threads), "--ref-parts", str(parts)]
                         + (["--stable-ref"] if stable else []), capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{which} run failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="shrink queries, gallery and ids (e.g. 0.1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise", type=float, default=1.8, help="per-image noise (sets the difficulty)")
    ap.add_argument("--chunk", type=int, default=0, help="query rows per chunk (default: the engine's)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in both runs (default: torch's)")
    ap.add_argument("--ref-parts", type=int, default=1,
                    help="run the reference on this many query slices in turn (same work, 1/N of the memory)")
    ap.add_argument("--stable-ref", action="store_true",
                    help="reference argsort with kind='stable' (ties in gallery order, as the engine): exact agreement")
    ap.add_argument("--only", choices=("ref", "ours"), help="run one side only")
    ap.add_argument("--child", choices=("ref", "ours"), help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.data, args.chunk, args.threads, args.ref_parts, args.stable_ref)
        return

    from reidbench.harness.evaluate import _chunk_rows

    p = make_problem(args.scale, args.seed, args.noise)
    nq, ng = len(p["qf"]), len(p["gf"])
    chunk = args.chunk or _chunk_rows(ng, None)
    per_pid = np.bincount(p["g_pids"], minlength=p["q_pids"].max() + 1)
    per_pid_cam = np.bincount(p["g_pids"] * 100 + p["g_cams"], minlength=(p["q_pids"].max() + 1) * 100)
    positives = per_pid[p["q_pids"]] - per_pid_cam[p["q_pids"] * 100 + p["q_cams"]]
    print(f"problem: {nq} queries x {ng} gallery, dim {p['qf'].shape[1]}, {len(np.unique(p['g_pids']))} gallery ids, "
          f"{len(np.unique(p['g_cams']))} cameras, {positives.mean():.1f} positives per query (median "
          f"{np.median(positives):.0f}); chunk {chunk} rows; {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        for k, v in p.items():
            np.save(os.path.join(tmp, f"{k}.npy"), v)
        del p
        results = {}
        for which in ("ours", "ref"):
            if args.only and which != args.only:
                continue
            results[which] = r = run_child(which, tmp, chunk, args.threads, args.ref_parts, args.stable_ref)
            print(f"{which:>4}: {r['seconds']:8.2f} s wall  {r['cpu_s']:8.2f} s cpu  peak {r['peak_gb']:6.2f} GB  "
                  f"R1 {100 * r['cmc'][0]:.2f}  R5 {100 * r['cmc'][4]:.2f}  R10 {100 * r['cmc'][9]:.2f}  "
                  f"mAP {100 * r['mAP']:.2f}  mINP {100 * r['mINP']:.2f}", flush=True)
    if len(results) < 2:
        return
    a, b = results["ref"], results["ours"]
    diffs = {"cmc": float(np.max(np.abs(np.subtract(a["cmc"], b["cmc"])))), "mAP": abs(a["mAP"] - b["mAP"]),
             "mINP": abs(a["mINP"] - b["mINP"])}
    max_diff = max(diffs.values())
    print("largest difference: " + ", ".join(f"{k} {v:.3g}" for k, v in diffs.items()))
    speedup = a["seconds"] / b["seconds"]
    print(f"SUMMARY speedup={speedup:.2f} ref_s={a['seconds']:.2f} ours_s={b['seconds']:.2f} "
          f"cpu_speedup={a['cpu_s'] / b['cpu_s']:.2f} ref_cpu_s={a['cpu_s']:.2f} ours_cpu_s={b['cpu_s']:.2f} "
          f"ref_peak_gb={a['peak_gb']:.2f} ours_peak_gb={b['peak_gb']:.2f} max_diff={max_diff:.3g} "
          f"queries={nq} gallery={ng} ref_parts={args.ref_parts} load={os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
