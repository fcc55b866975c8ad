"""The book example, ours against the book's own code, in the same run.

Figure 5.7 on "every effort moves you" / "I really like chocolate" with the untrained
GPT_CONFIG_124M model after torch.manual_seed(123):

- ours: core.lessons.loss.compute_loss, i.e. everything the app needs per request: tokenize, check,
  forward, the six steps, F.cross_entropy, log-softmax surprisal, full-vocabulary ranks, top-k.
- reference: the book's code (PyPI llms-from-scratch, installed with --no-deps):
  llms_from_scratch.ch04.GPTModel, the batch from ch02.create_dataloader_v1 (which calls
  tiktoken.get_encoding("gpt2"), pointed at the same vocab files through TIKTOKEN_CACHE_DIR),
  then as in section 5.1: torch.no_grad forward, softmax, target probas, log, mean, negate,
  F.cross_entropy, and topk.

The two are timed alternately (so a busy machine slows both alike) and their numbers must
agree: loss to 1e-6. Start-up time (imports + tokenizer + model init) and peak RSS are
measured in fresh subprocesses.

The roofline: a forward pass must read every weight but the embeddings (~495 MB in float32)
from memory, so it cannot beat weight bytes / read bandwidth. The bandwidth probe (a sum over
256 MiB, bench/machine.py) runs in the same alternation; the request's ratio to that floor
should stay <= 1.5x. The work beyond the book's (surprisal, full-vocabulary ranks) should cost
<= 10 % of the forward pass.

    pip install --no-deps llms-from-scratch==1.0.19 && pip install matplotlib tqdm
    python bench/bench_loss.py                 # 50 timed runs after 5 warm-up runs
    python bench/bench_loss.py --runs 200 --startup-runs 5
    python bench/bench_loss.py --threads 1        # steadier on a machine shared with other work
    python bench/bench_loss.py --cpu-time         # one thread, timed by its own CPU time: for a
                                                  # machine so busy that wall time means little
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TEXTS = ["every effort moves you", "I really like chocolate"]
TOP_K = 5
SENTENCE = "The loss tells us how far the model is from the text it reads."  # 15 tokens
TARGET_RATIO = 1.5
TARGET_ROOFLINE = 1.5  # request time / (weight bytes / read bandwidth)
TARGET_EXTRA = 0.10  # our work after the forward pass minus the book's, over our forward pass

# Run in a fresh interpreter: time imports + tokenizer + model init, then one request; peak RSS.
# Peak RSS of this process: VmHWM. ru_maxrss would also count the pages of the parent that
# forked it (Linux keeps the pre-exec high-water mark), i.e. this benchmark's two models.
PEAK_RSS = """
import resource

def peak_rss_kib():
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
"""
STARTUP_OURS = (
    PEAK_RSS
    + """
import json, time
t0 = time.perf_counter()
import torch
from core.lessons.loss import compute_loss
from core import build_untrained_model
from core.runtime.tokenizer_files import get_tokenizer
tok = get_tokenizer()
model = build_untrained_model(123)
t1 = time.perf_counter()
result = compute_loss(model, {texts!r}, top_k={top_k})
t2 = time.perf_counter()
"""
    + 'print(json.dumps({{"startup": t1 - t0, "first": t2 - t1, "loss": float(result.loss), '
    + '"maxrss_kib": peak_rss_kib()}}))\n'
)
STARTUP_REFERENCE = (
    PEAK_RSS
    + """
import json, time
t0 = time.perf_counter()
import tiktoken
import torch
from llms_from_scratch.ch04 import GPTModel
tok = tiktoken.get_encoding("gpt2")
torch.manual_seed(123)
model = GPTModel({cfg!r})
model.eval()
t1 = time.perf_counter()
inputs = torch.tensor([tok.encode(t)[:-1] for t in {texts!r}])
targets = torch.tensor([tok.encode(t)[1:] for t in {texts!r}])
with torch.no_grad():
    logits = model(inputs)
loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
t2 = time.perf_counter()
print(json.dumps({{"startup": t1 - t0, "first": t2 - t1, "loss": float(loss), "maxrss_kib": peak_rss_kib()}}))
"""
)


def reference_batch(create_dataloader_v1):
    """The book's loader, one window per text: inputs = tokens[:-1], targets = tokens[1:]."""
    import tiktoken
    import torch

    tok = tiktoken.get_encoding("gpt2")
    inputs, targets = [], []
    for text in TEXTS:
        n = len(tok.encode(text)) - 1
        loader = create_dataloader_v1(
            text, batch_size=1, max_length=n, stride=n, shuffle=False, drop_last=False
        )
        x, y = next(iter(loader))
        inputs.append(x)
        targets.append(y)
    return torch.cat(inputs), torch.cat(targets)


def reference_tokens(tok, texts):
    import torch

    ids = [tok.encode(t) for t in texts]
    return torch.tensor([i[:-1] for i in ids]), torch.tensor([i[1:] for i in ids])


def reference_request(model, tok, texts):
    """Section 5.1 as printed, from the texts to the loss, plus top-k."""
    import torch

    inputs, targets = reference_tokens(tok, texts)
    with torch.no_grad():
        logits = model(inputs)
    return reference_steps(logits, targets)


def reference_steps(logits, targets):
    """The book's steps after the forward pass: softmax, target probas, logs, mean, cross entropy."""
    import torch

    probas = torch.softmax(logits, dim=-1)
    rows = torch.arange(targets.shape[1])
    target_probas = [probas[b, rows, targets[b]] for b in range(targets.shape[0])]
    log_probas = torch.log(torch.cat(target_probas))
    avg_log_probas = torch.mean(log_probas)
    neg_avg_log_probas = avg_log_probas * -1
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    topk = torch.topk(probas, TOP_K, dim=-1)
    return {"logits": logits, "target_probas": torch.stack(target_probas), "log_probas": log_probas,
            "neg_avg_log_probas": neg_avg_log_probas, "loss": loss, "topk_ids": topk.indices}  # fmt: skip


CLOCK = time.perf_counter


def once(fn) -> float:
    t0 = CLOCK()
    fn()
    return CLOCK() - t0


def startup(script: str, env: dict, runs: int) -> dict:
    results = []
    for _ in range(runs):
        proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600, check=True)  # fmt: skip
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return {
        "startup": statistics.median(r["startup"] for r in results),
        "first": statistics.median(r["first"] for r in results),
        "maxrss_mib": max(r["maxrss_kib"] for r in results) / 1024,
        "loss": results[0]["loss"],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=50, help="timed runs of each (median reported)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--startup-runs", type=int, default=3, help="fresh processes per start-up measurement (0: skip)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads for both (default: torch's choice)"
    )
    parser.add_argument("--cpu-time", action="store_true",
                        help="one torch thread, timed by the CPU time of that thread "
                             "instead of wall time")  # fmt: skip
    args = parser.parse_args(argv)

    import torch

    global CLOCK
    if args.cpu_time:
        args.threads, CLOCK = 1, time.thread_time
    if args.threads:
        torch.set_num_threads(args.threads)

    from machine import describe_cpu, read_bandwidth, weight_bytes

    from core import build_untrained_model
    from core.book.model import GPT_CONFIG_124M
    from core.fast import accelerate, onednn, panel
    from core.lessons.loss import compute_loss, loss_from_logits, prepare_batch
    from core.runtime.tokenizer_files import get_tokenizer, seed_tiktoken_cache

    cache = tempfile.TemporaryDirectory(prefix="losslens-tiktoken-")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(seed_tiktoken_cache(Path(cache.name)))
    try:
        import tiktoken
        from llms_from_scratch.ch02 import create_dataloader_v1
        from llms_from_scratch.ch04 import GPTModel as ReferenceGPTModel
    except ImportError as e:
        print(
            f"reference code missing ({e}): pip install --no-deps llms-from-scratch==1.0.19", file=sys.stderr
        )
        return 2

    print(describe_cpu())
    print(f"clock: {'CPU time of the one torch thread' if args.cpu_time else 'wall time'}")
    tok_ref = tiktoken.get_encoding("gpt2")
    torch.manual_seed(123)
    reference = ReferenceGPTModel(GPT_CONFIG_124M).eval()
    ours = build_untrained_model(123)
    tokenizer = get_tokenizer()

    # Same input and same numbers first.
    ref_inputs, ref_targets = reference_batch(create_dataloader_v1)
    r = compute_loss(ours, TEXTS, top_k=TOP_K, tokenizer=tokenizer)
    ref = reference_request(reference, tok_ref, TEXTS)
    checks = {
        "same inputs and targets": torch.equal(r.batch.inputs, ref_inputs)
        and torch.equal(r.batch.targets, ref_targets),
        "loss equal to 1e-6": abs(float(r.loss) - float(ref["loss"])) <= 1e-6,
        "manual loss equal to 1e-6": abs(float(r.neg_avg_log_probas) - float(ref["neg_avg_log_probas"]))
        <= 1e-6,
        "target probas equal (rel 1e-5)": torch.allclose(
            r.target_probas, ref["target_probas"], rtol=1e-5, atol=0
        ),
        "same top-k ids": torch.equal(r.topk_ids, ref["topk_ids"]),
    }
    print(f"loss: ours {float(r.loss):.7f}, reference {float(ref['loss']):.7f} "
          f"(|diff| {abs(float(r.loss) - float(ref['loss'])):.1e}); max |logit diff| "
          f"{float((r.logits - ref['logits']).abs().max()):.1e}; perplexity {r.perplexity:.1f}")  # fmt: skip
    for name, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")

    # Alternate the two so that load from other processes hits both alike.
    def ours_request():
        compute_loss(ours, TEXTS, top_k=TOP_K, tokenizer=tokenizer)

    def ref_request():
        reference_request(reference, tok_ref, TEXTS)

    def ours_forward():
        with torch.inference_mode():
            ours(ref_inputs)

    def ref_forward():
        with torch.no_grad():
            reference(ref_inputs)

    # The kernels, so a learner sees which one wins on their CPU, on the book batch and on a
    # 15-token sentence: the plug-in with LossLens's panels (core/fast/panel.py, where it measured
    # faster: the app, the CLI), the plug-in with oneDNN's packed weights (elsewhere), and the book's
    # own modules on stock PyTorch (LOSSLENS_FAST=0; a deep copy of the app's model is that).
    sentence = torch.tensor([tokenizer.encode(SENTENCE)])
    use_onednn = onednn.AVAILABLE
    panels = panel.selected()
    plain = copy.deepcopy(ours)  # the book's modules and plain weights
    selected, panel.selected = panel.selected, lambda: False  # oneDNN, as where the panels are not faster
    try:
        dnn = accelerate(copy.deepcopy(ours))
    finally:
        panel.selected = selected

    def kernel_forward(model, inputs):
        def run():
            with torch.inference_mode():
                model(inputs)

        return run

    # After the forward pass, each on its own model's logits (computed once): tokenizing and
    # batching, then the steps; ours adds surprisal, full-vocabulary ranks and the stable log.
    with torch.inference_mode():
        our_logits = ours(ref_inputs)
    with torch.no_grad():
        ref_logits = reference(ref_inputs)

    def ours_after():
        batch = prepare_batch(TEXTS, ours.cfg["context_length"], tokenizer)
        with torch.inference_mode():
            loss_from_logits(our_logits, batch.targets, TOP_K, 1.0, batch)

    def ref_after():
        _, targets = reference_tokens(tok_ref, TEXTS)
        with torch.no_grad():
            reference_steps(ref_logits, targets)

    fns = {"ours": ours_request, "ref": ref_request, "ours_fwd": ours_forward, "ref_fwd": ref_forward}
    fns |= {"ours_after": ours_after, "ref_after": ref_after}
    fns |= {"plain_fwd": kernel_forward(plain, ref_inputs), "app_sentence": kernel_forward(ours, sentence)}
    fns |= {"plain_sentence": kernel_forward(plain, sentence)}
    if use_onednn:
        fns |= {"dnn_fwd": kernel_forward(dnn, ref_inputs), "dnn_sentence": kernel_forward(dnn, sentence)}
    times = {name: [] for name in fns}
    bandwidths = []
    for _ in range(args.warmup):
        for fn in fns.values():
            fn()
    for _ in range(args.runs):
        for name, fn in fns.items():
            times[name].append(once(fn))
        bandwidths.append(read_bandwidth(runs=1, clock=CLOCK))
    t_ours, t_ref = times["ours"], times["ref"]
    m_ours, m_ref = statistics.median(t_ours), statistics.median(t_ref)

    def q(ts):
        qs = statistics.quantiles(ts, n=4)
        return f"p25 {qs[0] * 1e3:6.1f}  p75 {qs[2] * 1e3:6.1f}"

    print(f"\nrequest (tokenize + forward + six steps + cross entropy + top-{TOP_K}), median of {args.runs}:")
    print(f"  ours       {m_ours * 1e3:7.1f} ms   ({q(t_ours)})  also surprisal and full-vocabulary ranks")
    print(f"  reference  {m_ref * 1e3:7.1f} ms   ({q(t_ref)})")
    ratio = m_ref / m_ours
    paired = statistics.median(r / o for r, o in zip(t_ref, t_ours, strict=True))
    print(
        f"  speed-up   {ratio:.2f}x   "
        f"(target >= {TARGET_RATIO}x: {'met' if ratio >= TARGET_RATIO else 'NOT met'})"
    )
    print(f"  median of the paired ratios {paired:.2f}x; best run {min(t_ours) * 1e3:.1f} ms vs "
          f"{min(t_ref) * 1e3:.1f} ms = {min(t_ref) / min(t_ours):.2f}x")  # fmt: skip
    f_ours, f_ref = statistics.median(times["ours_fwd"]), statistics.median(times["ref_fwd"])
    print(f"  of which the forward pass alone: ours {f_ours * 1e3:.1f} ms, reference {f_ref * 1e3:.1f} ms "
          f"= {f_ref / f_ours:.2f}x")  # fmt: skip
    k = {name: statistics.median(times[name]) for name in fns}
    if panels:
        print(
            "  forward pass by kernel (the app's model: the plug-in on LossLens's panels, "
            "core/fast/panel.py):"
        )
    else:
        print(f"  forward pass by kernel (the app's model: the plug-in on oneDNN or torch; LossLens's panels "
              f"off: {panel.reason})")  # fmt: skip
    n = sentence.shape[1]
    for label, app, dnn_t, plain_t in (
        ("book batch", f_ours, k.get("dnn_fwd"), k["plain_fwd"]),
        (f"{n}-token sentence", k["app_sentence"], k.get("dnn_sentence"), k["plain_sentence"]),
    ):
        own = f"panels {app * 1e3:6.1f} ms, " if panels else f"plug-in {app * 1e3:6.1f} ms, "
        dnn_s = f"oneDNN packed {dnn_t * 1e3:6.1f} ms ({dnn_t / app:.2f}x), " if dnn_t else ""
        print(f"    {label:<18} {own}{dnn_s}"
              f"book's modules on stock torch {plain_t * 1e3:6.1f} ms ({plain_t / app:.2f}x)")  # fmt: skip
    after_ours, after_ref = statistics.median(times["ours_after"]), statistics.median(times["ref_after"])
    extra = (after_ours - after_ref) / f_ours
    print(f"  after the forward pass (tokenizing and the steps, timed alone on each model's logits): "
          f"ours {after_ours * 1e3:.2f} ms, reference {after_ref * 1e3:.2f} ms; ours beyond the book "
          f"{extra:+.1%} of the forward pass "
          f"(target <= {TARGET_EXTRA:.0%}: {'met' if extra <= TARGET_EXTRA else 'NOT met'})")  # fmt: skip

    bandwidth = statistics.median(bandwidths)
    wbytes = weight_bytes(ours)
    roofline = wbytes / (bandwidth * 1e9)
    to_roof = m_ours / roofline
    print(f"\nroofline: {wbytes / 1e6:.0f} MB of weights at {bandwidth:.1f} GB/s read bandwidth "
          f"(median of {len(bandwidths)} probes, best {max(bandwidths):.1f}) "
          f"= {roofline * 1e3:.1f} ms")  # fmt: skip
    print(f"  request / roofline {to_roof:.2f}x (target <= {TARGET_ROOFLINE}x: "
          f"{'met' if to_roof <= TARGET_ROOFLINE else 'NOT met'}); "
          f"forward / roofline {f_ours / roofline:.2f}x; "
          f"reference / roofline {m_ref / roofline:.2f}x")  # fmt: skip
    print(f"\n{'request':>10} {'reference':>10} {'roofline':>10} {'ratio':>7}   CPU ({CLOCK.__name__})")
    print(f"{m_ours * 1e3:7.1f} ms {m_ref * 1e3:7.1f} ms {roofline * 1e3:7.1f} ms {to_roof:6.2f}x   "
          f"{describe_cpu()}")  # fmt: skip

    ok = all(checks.values())
    if args.startup_runs > 0:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        s_ours = startup(STARTUP_OURS.format(texts=TEXTS, top_k=TOP_K), env, args.startup_runs)
        s_ref = startup(STARTUP_REFERENCE.format(texts=TEXTS, cfg=GPT_CONFIG_124M), env, args.startup_runs)
        print(
            f"\nstart-up in a fresh process (imports + tokenizer + model init), "
            f"median of {args.startup_runs}:"
        )
        for name, s in (("ours", s_ours), ("reference", s_ref)):
            print(f"  {name:<10} {s['startup']:6.2f} s   first request {s['first'] * 1e3:7.1f} ms   "
                  f"peak RSS {s['maxrss_mib']:7.1f} MiB   loss {s['loss']:.4f}")  # fmt: skip

        ok = ok and abs(s_ours["loss"] - s_ref["loss"]) <= 1e-6
        print(f"\nsummary: numbers {'equal' if ok else 'DIFFER'}; ours {m_ours * 1e3:.1f} ms vs reference "
              f"{m_ref * 1e3:.1f} ms = {ratio:.2f}x; "
              f"start-up {s_ours['startup']:.2f} s vs {s_ref['startup']:.2f} s; "
              f"peak RSS {s_ours['maxrss_mib']:.0f} MiB vs {s_ref['maxrss_mib']:.0f} MiB; "
              f"request / roofline {to_roof:.2f}x")  # fmt: skip
    cache.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
