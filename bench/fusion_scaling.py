"""Time and peak memory of BDAM's Mamba fusion against an attention fusion of equal
width, over sequence lengths, with log-log slopes and the crossover length.

    python3 bench/fusion_scaling.py                        # CPU, forward, L = 64 .. 8192
    python3 bench/fusion_scaling.py --mode train           # forward + backward
    python3 bench/fusion_scaling.py --device cuda          # mamba-ssm's kernels when installed
    python3 bench/fusion_scaling.py --lengths 64,256,1024 --repeats 1
    python3 bench/fusion_scaling.py --json out.json        # the points and the summary as JSON

On CPU each point runs single-threaded by default (``--threads``): on a shared
machine, two threads that wait on each other turn other processes' load into
noise larger than the effect measured.

The two fusions (``--d-model`` 256, 2 layers, dropout 0.1, as BDAM's Sec. IV-A):

* ``mamba``: ``reidbench.methods.layers.MambaStack`` (state 16, conv 4, expand 2):
  on CPU the PyTorch sequential scan; on CUDA mamba-ssm's kernels when the ``gpu``
  extra is installed (``--no-kernels`` forces the PyTorch scan there too).
* ``attention``: ``nn.TransformerEncoder`` of 2 pre-norm ``nn.TransformerEncoderLayer``
  (8 heads, FFN width ``2 * d_model`` so that the layer holds about as many
  parameters as a Mamba layer, whose inner width is ``2 * d_model``), i.e.
  PyTorch's scaled-dot-product attention, whichever kernel it picks.

Per (fusion, length): one untimed call, whose peak memory is recorded, then the
median of ``--repeats`` timed calls. On CUDA the time is wall-clock (synchronised);
on CPU both wall-clock and process CPU time are recorded, and the slopes and the
crossover use CPU time: with one thread it counts the work done, not the time
spent waiting for the cores of a shared machine. Peak memory is the extra memory the call
needed over what was allocated before it: on CUDA ``torch.cuda.max_memory_allocated``;
on CPU the process's resident high-water mark (``VmHWM``) minus its resident set
before the call, measured in a fresh child process per point so that one
point's freed memory is not reused by the next (this includes allocator slack and
is coarse below a few MB).

Slopes are least-squares fits of log(time) and log(memory) on log(L), over all
lengths and over the upper half of the grid (the asymptotic regime; fixed
per-call costs flatten the small-L end). The crossover is the length from which
on attention is slower than Mamba (log-interpolated between grid points).
Target (issue 19): Mamba's time slope <= 1.15.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

# the checkout this script belongs to, ahead of any other installed reidbench
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FUSIONS = ("mamba", "attention")
DEFAULT_LENGTHS = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
TARGET_SLOPE = 1.15


def build(fusion: str, d_model: int, layers: int, kernels: bool) -> nn.Module:
    if fusion == "mamba":
        from reidbench.methods.layers import MambaStack

        stack = MambaStack(d_model, n_layers=layers, d_state=16, d_conv=4, dropout=0.1)
        for layer in stack.layers:
            layer.mixer.use_kernels = kernels
        return stack
    layer = nn.TransformerEncoderLayer(d_model, nhead=8, dim_feedforward=2 * d_model, dropout=0.1,
                                       batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(fusion: str, length: int, args) -> dict:
    """Peak extra memory of one call, then the median time of ``args.repeats`` calls."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build(fusion, args.d_model, args.layers, not args.no_kernels).to(device)
    model.train(args.mode == "train")
    x = torch.randn(args.batch, length, args.d_model, device=device, requires_grad=args.mode == "train")

    def call():
        if args.mode == "train":
            model(x).square().mean().backward()
            model.zero_grad(set_to_none=True)
            x.grad = None
        else:
            with torch.no_grad():
                model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        call()
        peak_mb = (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20
    else:
        before = _status_kb("VmRSS")
        call()
        peak_mb = (_status_kb("VmHWM") - before) / 1024
    times, cpu_times = [], []
    for _ in range(args.repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        call()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return {"fusion": fusion, "length": length, "seconds": statistics.median(times),
            "cpu_seconds": statistics.median(cpu_times), "peak_mb": max(peak_mb, 0.0),
            "params": sum(p.numel() for p in model.parameters())}


def run_point(fusion: str, length: int, args) -> dict:
    if args.device.startswith("cuda"):
        result = measure(fusion, length, args)
        torch.cuda.empty_cache()
        return result
    cmd = [sys.executable, os.path.abspath(__file__), "--child", f"{fusion}:{length}", "--device", args.device,
           "--mode", args.mode, "--batch", str(args.batch), "--d-model", str(args.d_model), "--layers",
           str(args.layers), "--repeats", str(args.repeats), "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"measuring {fusion} at L={length} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def slope(lengths, values) -> float:
    xs = [math.log(v) for v in lengths]
    ys = [math.log(max(v, 1e-12)) for v in values]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)


def crossover(lengths, mamba, attention) -> float | None:
    """The length from which on attention is slower (log-interpolated), None if never,
    the first length if always."""
    slower = [a > m for m, a in zip(mamba, attention)]
    if not any(slower):
        return None
    first = max(i for i, s in enumerate(slower) if not s) + 1 if not all(slower) else 0
    if first >= len(lengths):
        return None
    if first == 0:
        return float(lengths[0])
    i = first - 1  # attention faster at i, slower at i + 1
    d0 = math.log(attention[i]) - math.log(mamba[i])
    d1 = math.log(attention[i + 1]) - math.log(mamba[i + 1])
    frac = d0 / (d0 - d1)
    return math.exp(math.log(lengths[i]) + frac * (math.log(lengths[i + 1]) - math.log(lengths[i])))


def report(results: list[dict], args) -> dict:
    lengths = sorted({r["length"] for r in results})
    by = {(r["fusion"], r["length"]): r for r in results}
    # on CPU the slopes and the crossover use CPU time (see the module docstring)
    key = "seconds" if args.device.startswith("cuda") else "cpu_seconds"
    print(f"\n{args.device}, {args.mode}, batch {args.batch}, d_model {args.d_model}, {args.layers} layers, "
          f"time = {'wall-clock' if key == 'seconds' else 'CPU'} seconds per call (median); "
          f"params: " + ", ".join(f"{f} {by[(f, lengths[0])]['params']:,}" for f in FUSIONS))
    print(f"{'L':>6} | {'mamba s':>9} {'attn s':>9} {'attn/mamba':>10} | {'mamba MB':>9} {'attn MB':>9} | "
          f"{'wall: mamba s':>13} {'attn s':>9}")
    for n in lengths:
        m, a = by[("mamba", n)], by[("attention", n)]
        print(f"{n:>6} | {m[key]:>9.4f} {a[key]:>9.4f} {a[key] / m[key]:>10.2f} | "
              f"{m['peak_mb']:>9.1f} {a['peak_mb']:>9.1f} | {m['seconds']:>13.4f} {a['seconds']:>9.4f}")
    upper = lengths[len(lengths) // 2:] if len(lengths) >= 4 else lengths
    summary = {}
    print("\nlog-log slopes (time, memory):   all lengths        | upper half " + f"(L >= {upper[0]})")
    for f in FUSIONS:
        t_all = slope(lengths, [by[(f, n)][key] for n in lengths])
        t_up = slope(upper, [by[(f, n)][key] for n in upper])
        m_all = slope(lengths, [max(by[(f, n)]["peak_mb"], 1e-3) for n in lengths])
        m_up = slope(upper, [max(by[(f, n)]["peak_mb"], 1e-3) for n in upper])
        summary[f] = {"time_slope": t_all, "time_slope_upper": t_up, "memory_slope": m_all, "memory_slope_upper": m_up}
        print(f"  {f:<10} time {t_all:5.2f}, memory {m_all:5.2f}        | time {t_up:5.2f}, memory {m_up:5.2f}")
    cross = crossover(lengths, [by[("mamba", n)][key] for n in lengths],
                      [by[("attention", n)][key] for n in lengths])
    summary["crossover_length"] = cross
    print("crossover: " + ("attention never slower on this grid" if cross is None
                           else f"attention slower than Mamba from L ~ {cross:.0f}"))
    worst = max(summary["mamba"]["time_slope"], summary["mamba"]["time_slope_upper"])
    print(f"target: Mamba time slope <= {TARGET_SLOPE}: {'met' if worst <= TARGET_SLOPE else 'NOT met'} "
          f"(all {summary['mamba']['time_slope']:.2f}, upper half {summary['mamba']['time_slope_upper']:.2f})")
    summary["target_met"] = worst <= TARGET_SLOPE
    return summary


def parse_lengths(text: str) -> list[int]:
    try:
        lengths = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise ValueError(f"--lengths: expected comma-separated integers, got {text!r}") from None
    if len(lengths) < 2 or lengths[0] < 1:
        raise ValueError(f"--lengths: need at least two positive lengths, got {text!r}")
    return lengths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mode", choices=("forward", "train"), default="forward")
    ap.add_argument("--lengths", default=",".join(map(str, DEFAULT_LENGTHS)))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads on CPU (default 1: reproducible on a shared machine; 0: torch's default)")
    ap.add_argument("--no-kernels", action="store_true", help="PyTorch scan on CUDA too")
    ap.add_argument("--json", help="write the points and the summary here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        fusion, length = args.child.split(":")
        print(json.dumps(measure(fusion, int(length), args)))
        return 0
    try:
        lengths = parse_lengths(args.lengths)
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: CUDA is not available here")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = []
    for n in lengths:
        for fusion in FUSIONS:
            results.append(run_point(fusion, n, args))
            r = results[-1]
            print(f"  {fusion:<9} L={n:<6} {r['seconds']:.4f} s wall, {r.get('cpu_seconds', 0.0):.4f} s CPU, "
                  f"{r['peak_mb']:.1f} MB", flush=True)
    summary = report(results, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "mode": args.mode, "points": results, "summary": summary}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
