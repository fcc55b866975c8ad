"""Each linear layer of a dataset batch (2 x 256 tokens of GPT-2 124M), one by one: LossLens's
kernel (core/fast/panel.py, on its packed panels) against torch's own matmul on the plain weight (MKL
where torch has it), both as GFLOPS and as a share of the large-matmul peak of the same run.

Why: the Verdict pass (bench_dataset.py) is bound by these layers; this shows which of them is
short of the CPU's peak, and by how much, on the machine at hand. The out_head is timed twice:
writing its 103 MB of logits to a fresh mapping each call (as a lone forward pass does) and to the
same one again (as a pass over a data set does, core.fast.reusing_outputs). Beside each layer, the
largest difference between its output and torch's (float32 rounding: ~1e-5). Best of --reps calls,
alternated.

Last, the ceiling of a pass: one batch's linear layers in the model's order (12 blocks of four, the
out_head), back to back with nothing between them, on LossLens's kernel and on torch's matmul
alone (addmm: no GELU, no shortcut), each round against the peak probed just before and after it.
torch's share is what a pass on the CPU's own BLAS would reach if the attention, the loss and
everything else cost nothing: a target above it asks the kernel to beat that BLAS.

    python bench/bench_layers.py [--rows 512] [--reps 10] [--rounds 8] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from machine import describe_cpu, matmul_peak  # bench/ is the script's folder

from core.book.model import GPT_CONFIG_124M
from core.fast import panel, reusing_outputs
from core.fast.memory import HUGE_OUTPUT


def layer_shapes(cfg: dict) -> list[tuple[str, int, int, str]]:
    """(name, out_features, in_features, what the kernel does with the outputs) per kind of layer."""
    d, v = cfg["emb_dim"], cfg["vocab_size"]
    return [
        ("query/key/value", 3 * d, d, ""),
        ("out_proj", d, d, "add"),
        ("feed-forward 1", 4 * d, d, "gelu"),
        ("feed-forward 2", d, 4 * d, "add"),
        ("out_head", v, d, ""),
    ]


def time_layer(
    rows: int, n: int, k: int, then: str, reps: int, reuse: bool = False
) -> tuple[float, float, float]:
    """Best seconds of LossLens's kernel and of torch's matmul for one layer, and the largest
    difference between their outputs."""
    torch.manual_seed(n + k)
    w, b, x = torch.randn(n, k) / k**0.5, torch.randn(n), torch.randn(rows, k)
    add = torch.randn(rows, n) if then == "add" else None
    flat = panel.pack_(w.clone())
    gelu = then == "gelu"

    def ours():
        return panel.linear(x, flat, b, n, gelu=gelu, add=add)

    def theirs():
        y = torch.addmm(b, x, w.t())
        return torch.nn.functional.gelu(y, approximate="tanh") if gelu else y if add is None else y + add

    best = [float("inf"), float("inf")]
    with torch.inference_mode(), reusing_outputs() if reuse else contextlib.nullcontext():
        for _ in range(reps + 1):  # the first round warms up
            for i, run in enumerate((ours, theirs)):
                start = time.perf_counter()
                y = run()
                best[i] = min(best[i], time.perf_counter() - start)
                del y
        gap = float((ours() - theirs()).abs().max())
    return best[0], best[1], gap


def batch_layers(cfg: dict) -> list[tuple[str, int, int, str]]:
    """layer_shapes' layers in the order of one forward pass: each block's four, then the out_head."""
    *block, out_head = layer_shapes(cfg)
    return block * cfg["n_layers"] + [out_head]


def back_to_back(cfg: dict, rows: int, rounds: int) -> tuple[float, float]:
    """Median shares of the peak, (LossLens's kernel, torch's matmul), of one batch's linear layers
    run back to back (batch_layers: a weight of its own for each, as in the model), alternated in
    each round and set against the mean of a peak probe before and after the round."""
    layers = []
    for i, (_, n, k, then) in enumerate(batch_layers(cfg)):
        torch.manual_seed(i)
        w = torch.randn(n, k) / k**0.5
        layers.append((w, panel.pack_(w.clone()), torch.randn(n), n, k, then))
    xs = {k: torch.randn(rows, k) for *_, k, _ in layers}
    adds = {n: torch.randn(rows, n) for _, _, _, n, _, then in layers if then == "add"}
    work = sum(2 * rows * n * k for *_, n, k, _ in layers)

    def ours():
        for _, flat, b, n, k, then in layers:
            panel.linear(xs[k], flat, b, n, gelu=then == "gelu", add=adds[n] if then == "add" else None)

    def theirs():
        for w, _, b, _, k, _ in layers:
            torch.addmm(b, xs[k], w.t())

    shares = ([], [])
    with torch.inference_mode(), reusing_outputs():
        ours(), theirs()  # warm-up: the outputs' mapping, torch's buffers
        for r in range(rounds):
            before = matmul_peak(runs=3)
            seconds = [0.0, 0.0]
            for i in (0, 1) if r % 2 == 0 else (1, 0):
                start = time.perf_counter()
                (ours, theirs)[i]()
                seconds[i] = time.perf_counter() - start
            peak = (before + matmul_peak(runs=3)) / 2
            for i in (0, 1):
                shares[i].append(work / seconds[i] / 1e9 / peak)
    return statistics.median(shares[0]), statistics.median(shares[1])


def print_back_to_back(cfg: dict, rows: int, rounds: int) -> None:
    ours, theirs = back_to_back(cfg, rows, rounds)
    print(
        f"a batch's {len(batch_layers(cfg))} linear layers back to back, nothing between them "
        f"(median of {rounds} rounds, each against the peak probed beside it): LossLens's kernel "
        f"{ours:.1%} of the peak, torch's matmul alone {theirs:.1%}: the most a pass on torch's "
        f"own BLAS could reach, with the attention, the loss and the rest at no cost"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=512, help="tokens per batch (default 2 x 256)")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=8, help="rounds of the layers back to back")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(describe_cpu())
    if not panel.selected():
        print(f"LossLens's kernel is not used on this machine: {panel.reason}")
        return 0
    peak = matmul_peak(runs=3)
    print(f"matmul peak {peak:6.1f} GFLOPS (float32 2048^3 torch.mm); {args.rows} rows, AVX-512 tile from "
          f"{panel.wide_rows or 'never'}")  # fmt: skip
    print(f"{'layer':<28} {'ours':>14} {'torch':>14} {'ours/torch':>10}   max |difference|")
    for name, n, k, then in layer_shapes(GPT_CONFIG_124M):
        runs = [(name, False)] + (
            [(f"{name}, logits reused", True)] if n * args.rows * 4 >= HUGE_OUTPUT else []
        )
        for label, reuse in runs:
            t_ours, t_torch, gap = time_layer(args.rows, n, k, then, args.reps, reuse)
            ours, theirs = (2 * args.rows * n * k / t / 1e9 for t in (t_ours, t_torch))
            print(
                f"{label:<28} {ours:6.1f} ({ours / peak:4.0%}) {theirs:6.1f} ({theirs / peak:4.0%}) "
                f"{t_torch / t_ours:9.2f}x   {gap:.1e}"
            )
    print_back_to_back(GPT_CONFIG_124M, args.rows, args.rounds)
    print(describe_cpu())
    return 0


if __name__ == "__main__":
    sys.exit(main())
