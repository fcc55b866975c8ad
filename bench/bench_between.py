"""What a sentence's forward pass spends between its kernel calls, on the app's model (LossLens's
panels, core/fast/panel.py): the forward pass as LossLens runs it, then with each of its two shortcuts
between the calls undone, and the kernel calls alone, back to back (this design's floor: no
attention, no layer norms, no Python between them). Alternating in one process, so that the
host's noise hits each alike; the paired median of each difference, and the same logits bit for
bit in every variant.

The two shortcuts (core/fast/blocks.py): a block checks once whether every layer is on the kernel
and keeps weak references to what it checked (`FastBlock.remember_panels`), and a few tokens'
attention runs on one thread (`ONE_THREAD_ATTENTION`).

    python bench/bench_between.py [--runs 300] [--threads 2]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from machine import describe_cpu, read_bandwidth, weight_bytes  # bench/ is the script's folder

from core import build_untrained_model
from core.fast import blocks, panel
from core.fast.blocks import FastBlock

INPUTS = {  # the book batch (section 5.1), and a sentence's 15 tokens
    "book batch (2 x 3)": [[16833, 3626, 6100], [40, 1107, 588]],
    "15-token sentence": [list(range(1000, 1015))],
}


def variants(model):
    """name -> a forward pass of model: as LossLens runs it, without each shortcut."""
    block_forward, limit = FastBlock.forward, blocks.ONE_THREAD_ATTENTION

    def asking(self, x):  # check the layers at every call instead of once
        self.remember_panels()
        return block_forward(self, x)

    def run(ask_every_time=False, all_threads=False):
        def forward(idx):
            FastBlock.forward = asking if ask_every_time else block_forward
            blocks.ONE_THREAD_ATTENTION = 0 if all_threads else limit
            try:
                return model(idx)
            finally:
                FastBlock.forward, blocks.ONE_THREAD_ATTENTION = block_forward, limit

        return forward

    return {
        "LossLens": run(),
        "layers asked every call": run(ask_every_time=True),
        "attention on every thread": run(all_threads=True),
        "both undone": run(True, True),
    }


def kernel_calls(model, rows: int):
    """The forward pass's kernel calls alone, back to back, on rows x the layers' widths."""
    d = model.cfg["emb_dim"]
    x, hidden = torch.randn(rows, d), torch.randn(rows, 4 * d)
    calls = []
    for block in model.trf_blocks:
        att, (first, _, last) = block.att, block.ff.layers
        calls += [
            (x, att.W_query.weight, None, 3 * d, {}),
            (x, att.out_proj.weight, att.out_proj.bias, d, {"add": x}),
            (x, first.weight, first.bias, 4 * d, {"gelu": True}),
            (hidden, last.weight, last.bias, d, {"add": x}),
        ]
    calls.append((x, model.out_head.weight, None, model.cfg["vocab_size"], {}))

    def run(_idx):
        for x_, w, b, n, kw in calls:
            panel.linear(x_, w, b, n, **kw)

    return run


def measure(model, runs: int, inputs: dict = INPUTS) -> dict[str, dict[str, list[float]]]:
    """Seconds per run of each variant and of the kernel calls alone, per input, alternating."""
    shuffle, times = random.Random(0).shuffle, {}
    for name, ids in inputs.items():
        idx = torch.tensor(ids)
        fns = variants(model) | {"kernel calls alone": kernel_calls(model, idx.numel())}
        with torch.inference_mode():
            logits = {label: fn(idx) for label, fn in fns.items() if label != "kernel calls alone"}
            first = next(iter(logits.values()))
            if not all(torch.equal(first, other) for other in logits.values()):
                raise AssertionError(f"{name}: the variants' logits differ")
            times[name] = {label: [] for label in fns}
            order = list(fns)
            for _ in range(runs):
                shuffle(order)  # a new order each round: what ran just before a variant varies alike
                for label in order:
                    start = time.perf_counter()
                    fns[label](idx)
                    times[name][label].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build_untrained_model(123)
    if not model.out_head.on_panels(torch.zeros(1, model.cfg["emb_dim"])):
        sys.exit(f"LossLens's kernel is not in use here: {panel.reason}")
    print(describe_cpu())
    times = measure(model, args.runs)
    roofline = weight_bytes(model) / (read_bandwidth(runs=10) * 1e9)
    print(f"roofline (weights / read bandwidth, median of 10 probes): {roofline * 1e3:.1f} ms")
    for name, by_label in times.items():
        ours = by_label["LossLens"]
        print(f"\n{name}, median of {args.runs}, alternating in shuffled order:")
        for label, ts in by_label.items():
            saved = statistics.median(t - o for t, o in zip(ts, ours, strict=True))
            line = f"  {label:26s} {statistics.median(ts) * 1e3:6.2f} ms"
            if label != "LossLens":
                line += f"   LossLens {-saved * 1e3:+.2f} ms against it (paired median)"
            print(line)
        between = statistics.median(ours) - statistics.median(by_label["kernel calls alone"])
        print(f"  between the kernel calls: {between * 1e3:.2f} ms of the forward pass")


if __name__ == "__main__":
    main()
