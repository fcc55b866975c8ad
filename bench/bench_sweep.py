"""The temperature sweep's cost after the forward pass, on the book batch.

    python bench/bench_sweep.py

Prints the forward pass, the sweep (27 temperatures + 10 golden-section steps) and their ratio,
alternating the two so a busy machine loads both alike. Target: sweep <= 50 ms.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import build_untrained_model
from core.lessons.sweep import temperature_sweep
from core.lessons.views import forward, predictions

BOOK = ["every effort moves you", "I really like chocolate"]


def main(n: int = 15) -> None:
    model = build_untrained_model(123)
    fwd, sweep = [], []
    for _ in range(n):
        t = time.perf_counter()
        batch, logits = forward(model, BOOK)
        z, y = predictions(logits, batch)
        fwd.append(time.perf_counter() - t)
        t = time.perf_counter()
        temperature_sweep(z, y, current=1.0)
        sweep.append(time.perf_counter() - t)
    f, s = 1000 * statistics.median(fwd[2:]), 1000 * statistics.median(sweep[2:])
    print(f"forward pass (book batch): median {f:.1f} ms")
    print(
        f"temperature sweep after it: median {s:.1f} ms (min {1000 * min(sweep):.1f} ms), "
        f"{s / f:.2f}x the forward pass; target <= 50 ms"
    )


if __name__ == "__main__":
    main()
