"""Training speed (section 5.2) on this machine: ours against the book's own model, same run.

For each preset, the training step of core.models.training (core.book.model.GPTModel + core.book.loss's
calc_loss_batch + AdamW) and the same step with the book's llms_from_scratch.ch04.GPTModel
and its cross entropy are timed alternately on the same batches, so a busy machine slows
both alike. Then core.models.presets.estimate_time's count of steps, evaluations and samples turns
the step time into seconds per epoch and for the whole preset. The book reports about
5 minutes for its 10 epochs on an M3 MacBook Air (section 5.2).

    pip install --no-deps llms-from-scratch==1.0.19
    python bench/bench_train.py                      # both presets, 5 timed steps each
    python bench/bench_train.py --preset book --steps 3 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def time_steps(model, batches, steps, loss_fn):
    import torch

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0004, weight_decay=0.1)
    times = []
    for i in range(steps + 1):  # the first step warms up (allocations, AdamW state)
        x, y = batches[i % len(batches)]
        t = time.perf_counter()
        optimizer.zero_grad()
        loss_fn(x, y, model).backward()
        optimizer.step()
        if i:
            times.append(time.perf_counter() - t)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=["quick", "book", "both"], default="both")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--device",
        action="append",
        default=None,
        help="time the estimate on this device (repeatable; default: every device present)",
    )
    ap.add_argument(
        "--corpus", default=None, help="a UTF-8 text file (default: The Verdict that ships with LossLens)"
    )
    ap.add_argument("--fast", action="store_true", help="also time bfloat16 steps (the fast mode)")
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from core.book.loss import calc_loss_batch
    from core.book.model import GPTModel
    from core.models.corpus import load_verdict
    from core.models.presets import estimate_time, get_preset
    from core.models.training import make_train_loaders
    from core.runtime.device import available_devices, describe, resolve_device
    from core.runtime.precision import bf16_unavailable

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        from llms_from_scratch.ch04 import GPTModel as BookGPTModel
    except ImportError:
        BookGPTModel = None
    text = load_verdict(args.corpus)
    from machine import describe_cpu

    print(describe_cpu())

    def ours(x, y, model):
        return calc_loss_batch(x, y, model, "cpu")

    def book(x, y, model):
        return F.cross_entropy(model(x).flatten(0, 1), y.flatten())

    for name in ["quick", "book"] if args.preset == "both" else [args.preset]:
        preset = get_preset(name)
        train_loader, _ = make_train_loaders(text, preset.settings)
        torch.manual_seed(0)
        batches = [b for _, b in zip(range(3), train_loader, strict=False)]
        torch.manual_seed(preset.seed)
        model = GPTModel(preset.cfg)
        ref = None
        if BookGPTModel is not None:
            torch.manual_seed(preset.seed)
            ref = BookGPTModel(preset.cfg)
        t_ours, t_ref = [], []
        for _ in range(2):  # alternate: a busy machine slows both alike
            t_ours += time_steps(model, batches, max(1, args.steps // 2), ours)
            if ref is not None:
                t_ref += time_steps(ref, batches, max(1, args.steps // 2), book)
        step = statistics.median(t_ours)
        B, L = preset.settings.batch_size, preset.settings.context_length
        print(f"\n[{name}] {preset.description}")
        print(f"  training step ({B} x {L} tokens): ours {step:.3f} s (median of {len(t_ours)})", end="")
        if t_ref:
            r = statistics.median(t_ref)
            print(f", the book's model {r:.3f} s -> ours is {r / step:.2f}x the book's speed")
        else:
            print("  (llms-from-scratch not installed: no reference)")
        del model, ref
        for device in [resolve_device(d) for d in (args.device or available_devices())]:
            e = estimate_time(preset, text, steps=2, device=device)
            print(
                f"  on {describe(device)}: estimate_time {e['step_s']:.3f} s per step, "
                f"eval batch {e['eval_batch_s']:.3f} s, sample {e['sample_s']:.2f} s"
            )
            print(
                f"  {e['steps_per_epoch']} steps per epoch -> {e['epoch_s']:.1f} s per epoch; "
                f"{preset.num_epochs} epochs ({e['total_steps']} steps, with evaluation every "
                f"{preset.eval_freq} steps over {preset.eval_iter} batches and a sample per epoch): "
                f"{e['total_s']:.0f} s = {e['total_s'] / 60:.1f} min"
            )
            if args.fast:
                f = estimate_time(get_preset(name, fast=True), text, steps=2, device=device)
                why = bf16_unavailable(device)
                print(
                    f"  bfloat16 (fast mode): {f['step_s']:.3f} s per step, "
                    f"{e['step_s'] / f['step_s']:.2f}x the float32 step; "
                    f"offered by the app: {'yes' if why is None else 'no, ' + why}"
                )
            if name == "book":
                print(
                    f"  the book, M3 MacBook Air: about 5 min for 10 epochs -> {describe(device)} here "
                    f"is {e['total_s'] / 300:.1f}x that"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
