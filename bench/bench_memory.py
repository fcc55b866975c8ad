"""Peak memory of the dataset loss on a large corpus: windows are made lazily, and only one
batch's logits exist at a time, so RSS stays flat however long the text is.

Builds a ~10 MB text (The Verdict repeated), runs evaluate_dataset with the book's settings
on the first --num-batches batches of each split, and prints peak RSS at each stage and the
resident size after every batch (flat = bounded). For comparison it also builds the book's
GPTDatasetV1 (ch02: every window stored twice as tensors) on the same text, in a child
process, with --reference.

    python bench/bench_memory.py [--corpus PATH] [--megabytes 10] [--num-batches 8] [--reference]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.models.corpus import load_verdict


def peak_mb() -> float:
    # VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's peak.
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def big_text(base: str, megabytes: float) -> str:
    copies = max(1, round(megabytes * 1e6 / len(base.encode("utf-8"))))
    return "\n\n".join([base] * copies)


REFERENCE_CHILD = """
import os, sys, time
from llms_from_scratch.ch02 import GPTDatasetV1
import tiktoken
text = open(sys.argv[1], encoding="utf-8").read()
t = time.perf_counter()
ds = GPTDatasetV1(text, tiktoken.get_encoding("gpt2"), 256, 256)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(len(ds), time.perf_counter() - t, hwm / 1024)
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--corpus", help="The Verdict's path (default: $LOSSLENS_VERDICT_PATH, else the packaged copy)"
    )
    p.add_argument("--megabytes", type=float, default=10.0)
    p.add_argument("--num-batches", type=int, default=8, help="batches per split (a full pass takes hours)")
    p.add_argument(
        "--reference", action="store_true", help="also measure the book's GPTDatasetV1 in a child process"
    )
    args = p.parse_args()

    import torch
    from machine import describe_cpu

    from core import build_untrained_model
    from core.models.loaders import LoaderSettings
    from core.serving.requests import evaluate_dataset

    print(describe_cpu())
    text = big_text(load_verdict(args.corpus), args.megabytes)
    print(f"text: {len(text.encode('utf-8')) / 1e6:.1f} MB, {len(text):,} characters")
    print(f"after reading the text:     peak RSS {peak_mb():7.0f} MB")
    model = build_untrained_model(123)
    print(f"after building the model:   peak RSS {peak_mb():7.0f} MB")

    samples = []

    def progress(done, total, split):
        samples.append(rss_mb())

    t = time.perf_counter()
    with torch.inference_mode():
        r = evaluate_dataset(model, text, LoaderSettings(), num_batches=args.num_batches, progress=progress)
    elapsed = time.perf_counter() - t
    d = r.data
    print(
        f"tokens {d.tokens:,}; windows train {d.train.windows:,} / val {d.val.windows:,}; "
        f"batches train {d.train.batches:,} / val {d.val.batches:,}"
    )
    print(
        f"evaluated {len(r.train_batch_losses)} + {len(r.val_batch_losses)} batches in {elapsed:.1f} s: "
        f"train loss {r.train_loss:.4f}, val loss {r.val_loss:.4f}"
    )
    print("RSS after each batch (MB): " + " ".join(f"{x:.0f}" for x in samples[1:]))
    print(f"after the evaluation:       peak RSS {peak_mb():7.0f} MB   (limit ~2048 MB)")

    if args.reference:
        from core.runtime.tokenizer_files import seed_tiktoken_cache

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "big.txt"
            path.write_text(text, encoding="utf-8")
            env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(seed_tiktoken_cache(Path(tmp) / "tiktoken"))}
            out = subprocess.run(
                [sys.executable, "-c", REFERENCE_CHILD, str(path)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
        print(
            f"book's GPTDatasetV1 (windows stored): {int(out[0]):,} windows in {float(out[1]):.1f} s, "
            f"peak RSS {float(out[2]):.0f} MB (dataset only, no model)"
        )
    return 0 if peak_mb() < 2048 else 1


if __name__ == "__main__":
    sys.exit(main())
