"""The CPU plug-in's module swap (core.fast.accelerate): PackedLinear's kernels (oneDNN, LossLens's
panels) equal F.linear; a frozen model keeps its numbers, state dicts, copies and pickles; the
plug-in's memory and thread rules."""

from __future__ import annotations

import copy
import gc
import os
import resource
import subprocess
import sys
import threading
import weakref
from pathlib import Path

import pytest
import torch

from core.book.model import GPT_CONFIG_124M, GPTModel
from core.fast import blocks, onednn, panel, swap
from core.fast.linear import PackedLinear as CpuLinear
from core.fast.linear import PackedWeight
from core.serving.frozen import build_untrained_model, freeze

ROOT = Path(__file__).resolve().parents[2]


needs_onednn = pytest.mark.skipif(not onednn.AVAILABLE, reason="oneDNN's linear is used on x86-64 only")


@pytest.fixture
def onednn_packing(monkeypatch):
    """Pack for oneDNN, as on a CPU where LossLens's own kernel (core/fast/panel.py) is not faster."""
    monkeypatch.setattr(panel, "selected", lambda: False)


def packed(p) -> bool:
    return isinstance(p, PackedWeight)


@pytest.fixture(params=["onednn", "panels"])
def kind(request, monkeypatch):
    """freeze() packs for oneDNN, or in LossLens's panels (where its kernel builds)."""
    if request.param == "panels" and panel.library() is None:
        pytest.skip(f"LossLens's kernel: {panel.reason}")
    monkeypatch.setattr(panel, "selected", lambda: request.param == "panels")
    return request.param


@pytest.fixture
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("rows", [1, 6, 11, 300])  # a token, the book batch, a sentence, > MANY_ROWS
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("contiguous_output", [True, False])
@pytest.mark.parametrize("grad", [False, True])  # inference (oneDNN) and training (MKL) paths
def test_cpu_linear_equals_f_linear(rows, bias, contiguous_output, grad, threads):
    torch.manual_seed(1)
    layer = CpuLinear(768, 3072, bias=bias, contiguous_output=contiguous_output)
    x = torch.randn(1, rows, 768, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        got = layer(x)
        want = torch.nn.functional.linear(x, layer.weight, layer.bias)
    assert got.shape == (1, rows, 3072) and got.requires_grad == grad
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # Rows come back contiguous where attention needs them; the out_head may hand over a view.
    assert got.is_contiguous() or not contiguous_output
    if grad:  # the training path still trains: the same gradients as F.linear's
        (w_got,) = torch.autograd.grad(got.square().sum(), layer.weight)
        (w_want,) = torch.autograd.grad(want.square().sum(), layer.weight)
        torch.testing.assert_close(w_got, w_want, rtol=1e-4, atol=1e-3)


@needs_onednn
def test_inference_runs_onednn_and_training_keeps_the_view():
    """The out_head in inference gets oneDNN's rows (no (W @ x^T)^T view for the loss steps to copy);
    with gradients, or with oneDNN switched off, it is the view again."""
    head = CpuLinear(768, 50257, bias=False, contiguous_output=False)
    x = torch.randn(2, 3, 768)
    with torch.inference_mode():
        assert head(x).is_contiguous()
    assert not head(x).is_contiguous()  # weights that need gradients: the MKL view
    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(onednn, "AVAILABLE", False)
        assert not head(x).is_contiguous()


@needs_onednn
@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("rows", [1, 6, 11, 300])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_cpu_linear_equals_f_linear(rows, bias, threads, onednn_packing):
    torch.manual_seed(1)
    layer = CpuLinear(768, 3072, bias=bias).requires_grad_(False)
    plain = layer.weight
    assert layer.pack() and layer.weight.is_mkldnn and not layer.pack()  # once
    x = torch.randn(1, rows, 768)
    with torch.inference_mode():
        got = layer(x)
        want = torch.nn.functional.linear(x, plain, layer.bias)
    assert got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # Fast mode's autocast runs on a bfloat16 copy of the plain weight, kept beside the packed one:
    # a shared model stays packed for everybody's float32 requests.
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast = layer(x)
    assert fast.dtype == torch.bfloat16 and layer.weight.is_mkldnn
    assert torch.equal(layer._autocast_copy, plain.to(torch.bfloat16))
    torch.testing.assert_close(fast.float(), want, rtol=0.05, atol=0.05)
    x.requires_grad_(True)  # a pass that records gradients needs the plain layout: back to it
    (gx,) = torch.autograd.grad(layer(x).sum(), x)
    torch.testing.assert_close(gx, plain.sum(0).expand_as(x), rtol=1e-4, atol=1e-4)
    assert not layer.weight.is_mkldnn and layer._autocast_copy is None
    assert layer.pack()
    with torch.inference_mode():  # unpacked during a request: a normal tensor that autograd can use
        layer.unpack()
    assert torch.equal(layer.weight, plain) and not layer.weight.is_inference()


@pytest.mark.slow
@needs_onednn
def test_freeze_packs_the_weights_in_place_of_the_plain_ones(kind):
    """The app's shared models hold each linear weight once, packed for oneDNN or in LossLens's
    panels; everything that reads weights (state dicts, deep copies, training, .to()) still sees
    the plain ones."""
    cfg = {**GPT_CONFIG_124M, "emb_dim": 64, "n_heads": 4, "n_layers": 2, "vocab_size": 500}
    torch.manual_seed(3)
    model = GPTModel(cfg).eval()  # no dropout
    want = {k: v.clone() for k, v in model.state_dict().items()}
    old = weakref.ref(model.out_head.weight)
    x = torch.randint(0, 500, (2, 7))
    with torch.inference_mode():
        logits = model(x)
    freeze(model)
    gc.collect()
    assert old() is None  # no plain copy kept beside the packed one
    layers = [m for m in model.modules() if isinstance(m, CpuLinear)]
    assert all(packed(m.weight) and m.weight.is_mkldnn == (kind == "onednn") for m in layers)
    with pytest.raises(RuntimeError):  # read as a plain matrix, a packed weight fails loudly
        torch.nn.functional.linear(x.float()[..., :1].expand(2, 7, 64), model.out_head.weight)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), logits, rtol=1e-5, atol=1e-5)
    state = model.state_dict()
    assert state.keys() == want.keys() and all(torch.equal(state[k], v) for k, v in want.items())
    assert not any(packed(v) or v.is_mkldnn for v in state.values())
    # A deep copy (the gradient view trains one) has the book's modules and trains; the original stays packed.
    copy_ = copy.deepcopy(model).requires_grad_(True)
    assert not any(packed(p) for p in copy_.parameters()) and packed(model.out_head.weight)
    assert not any(isinstance(m, CpuLinear) for m in copy_.modules())
    assert torch.equal(copy_.out_head.weight, want["out_head.weight"])
    torch.nn.functional.cross_entropy(copy_(x).flatten(0, 1), x.flatten()).backward()
    assert copy_.out_head.weight.grad is not None
    with pytest.raises(RuntimeError, match="copy.deepcopy"):
        model.out_head.weight.requires_grad_(True)
    # .to() and requires_grad_(True) unpack; a state dict loads into a packed model.
    model.load_state_dict(want)
    assert not packed(model.out_head.weight)
    freeze(model)
    assert model.to(torch.float64).out_head.weight.dtype == torch.float64
    freeze(model.float())
    with pytest.raises(RuntimeError, match="deepcopy"):  # a served model is never trained itself
        model.requires_grad_(True)
    params = dict(copy.deepcopy(model).requires_grad_(True).named_parameters())
    assert not any(packed(p) for p in params.values())
    assert params.keys() == {k for k in want if not k.endswith(".mask")}
    assert all(torch.equal(v, want[k]) for k, v in params.items())  # unpacked to the same values


@needs_onednn
def test_a_frozen_model_pickles_as_its_plain_weights_and_freezes_again_to_the_same_bits(kind):
    """torch.save(model) and pickle write each weight once, plain: the panels share one mapping,
    which pickle would otherwise write whole for every weight (a 124M model ran out of memory)."""
    import io
    import pickle

    cfg = {**GPT_CONFIG_124M, "emb_dim": 64, "n_heads": 4, "n_layers": 2, "vocab_size": 500}
    torch.manual_seed(11)
    model = freeze(GPTModel(cfg))
    want = {k: v for k, v in model.state_dict().items() if not k.endswith(".mask")}  # no buffer held
    weight_bytes = sum(v.numel() * v.element_size() for v in want.values())
    x = torch.randint(0, 500, (2, 9))
    with torch.inference_mode():
        logits = model(x)
    data = pickle.dumps(model)
    assert weight_bytes < len(data) < weight_bytes * 1.1  # the weights once, and little else
    buffer = io.BytesIO()
    torch.save(model, buffer)
    assert buffer.tell() < weight_bytes * 1.1
    buffer.seek(0)
    for back in (pickle.loads(data), torch.load(buffer, weights_only=False)):
        params = dict(back.named_parameters())
        assert not any(packed(p) for p in params.values()) and not back.training
        assert all(torch.equal(params[k], want[k]) and not params[k].requires_grad for k in params)
        with torch.inference_mode():
            torch.testing.assert_close(back(x), logits, rtol=1e-5, atol=1e-5)
            assert torch.equal(freeze(back)(x), logits)  # packed again: the same bits
        assert all(packed(m.weight) for m in back.modules() if isinstance(m, CpuLinear))
    assert packed(model.out_head.weight)  # the original is untouched


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim is Linux's")
def test_release_free_memory_hands_freed_heap_blocks_back():
    """Packing frees every plain weight, and glibc keeps such blocks in its heap unless trimmed
    (a process building seeds' models grew by ~0.9 GB). Fresh process: glibc's state is known."""
    code = """
import os, torch
from core.fast import release_free_memory
def rss(): return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
big = torch.ones(4 * 2**20); del big  # freeing a 16 MiB mmapped block raises glibc's mmap threshold
blocks = [torch.ones(2**19) for _ in range(200)]  # so these 2 MiB blocks come from the heap
kept = blocks[1::2]; del blocks  # every other one freed: holes the heap cannot shrink around
before = rss(); ok = release_free_memory(); print(ok, before - rss())
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    ok, released_mib = run.stdout.split()
    assert ok == "True" and float(released_mib) > 150, run.stdout  # of the 200 MiB freed


def test_freeze_trims_the_heap_after_packing(kind, monkeypatch):
    calls = []
    monkeypatch.setattr(swap, "release_free_memory", lambda: calls.append(1) or True)
    cfg = {**GPT_CONFIG_124M, "emb_dim": 64, "n_heads": 4, "n_layers": 1, "vocab_size": 500}
    freeze(GPTModel(cfg))
    # After each packed layer (six in the block and the out_head): a plain weight or buffer freed.
    assert len(calls) == 7 * int(kind == "panels" or onednn.AVAILABLE)


@pytest.mark.slow
@needs_onednn
def test_freeze_leaves_a_weight_too_large_to_copy_plain(monkeypatch, onednn_packing):
    """oneDNN's packing holds a weight twice for a moment: not the out_head (server peak RSS)."""
    book = build_untrained_model(123)  # its own: fast-mode tests may have unpacked the shared one
    assert not book.out_head.weight.is_mkldnn and book.trf_blocks[0].ff.layers[0].weight.is_mkldnn
    del book
    monkeypatch.setattr(onednn, "PACK_MAX_BYTES", 100_000)
    cfg = {**GPT_CONFIG_124M, "emb_dim": 64, "n_heads": 4, "n_layers": 1, "vocab_size": 500}
    small = freeze(GPTModel(cfg))  # out_head 128,000 bytes; the largest block layer 65,536
    assert not small.out_head.weight.is_mkldnn
    assert all(m.weight.is_mkldnn for m in small.trf_blocks.modules() if isinstance(m, CpuLinear))


def test_freeze_keeps_a_tied_out_head_tied(kind):
    """GPT-2's out_head shares the token embedding: packing it would hold 154 MB twice, or (in
    place) scramble the embedding."""
    cfg = {**GPT_CONFIG_124M, "emb_dim": 64, "n_heads": 4, "n_layers": 1, "vocab_size": 500}
    model = GPTModel(cfg)
    model.out_head.weight = model.tok_emb.weight
    freeze(model)
    assert model.out_head.weight is model.tok_emb.weight and not packed(model.out_head.weight)
    assert packed(model.trf_blocks[0].ff.layers[0].weight) == (kind == "panels" or onednn.AVAILABLE)


def test_cpu_linear_under_autocast_computes_in_bfloat16():
    """Fast mode's autocast must reach the matmul: oneDNN's op has no autocast rule, so it is skipped."""
    layer = CpuLinear(768, 64)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.randn(1, 5, 768)).dtype == torch.bfloat16


def test_cpu_linear_is_plain_f_linear_off_the_cpu():
    """On another device (CUDA, MPS; here the meta device) no CPU kernels: F.linear's layout."""
    with torch.device("meta"):
        layer = CpuLinear(768, 50257, bias=False, contiguous_output=False)
        out = layer(torch.empty(2, 3, 768))
    assert out.device.type == "meta" and out.shape == (2, 3, 50257) and out.is_contiguous()
    cpu = CpuLinear(768, 64, bias=False, contiguous_output=False)
    assert not cpu(torch.randn(2, 3, 768)).is_contiguous()  # the CPU path did run the (W @ x^T)^T view


@needs_onednn
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores to tell one thread from two")
def test_onednn_follows_torch_thread_count_in_a_new_thread():
    """Streamlit runs each script in a new thread, whose OpenMP setting starts at the core count:
    oneDNN must still use torch's one thread there (else every request takes two cores)."""
    head = CpuLinear(768, 50257, bias=False)
    x = torch.randn(1, 64, 768)
    seen = {}

    def work():
        with torch.inference_mode():
            head(x)  # warm-up: creates the kernel
            before_thread = resource.getrusage(resource.RUSAGE_THREAD)
            before_all = resource.getrusage(resource.RUSAGE_SELF)
            for _ in range(3):
                head(x)
            after_thread = resource.getrusage(resource.RUSAGE_THREAD)
            after_all = resource.getrusage(resource.RUSAGE_SELF)
        seen["thread"] = _cpu_s(after_thread) - _cpu_s(before_thread)
        seen["all"] = _cpu_s(after_all) - _cpu_s(before_all)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
    finally:
        torch.set_num_threads(threads)
    # One thread did the work: the process spent about what the calling thread did (two would double it).
    assert seen["all"] < 1.4 * seen["thread"], seen


def _cpu_s(usage) -> float:
    return usage.ru_utime + usage.ru_stime


@pytest.mark.slow
def test_onednn_kernel_caches_are_bounded():
    """Every token count is a new oneDNN kernel; its caches are capped unless the user set them."""
    names = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
    code = f"import os, core.fast; print(*(os.environ[n] for n in {names!r}))"
    env = {k: v for k, v in os.environ.items() if k not in names}

    def capacities():
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
        assert run.returncode == 0, run.stderr
        return run.stdout.split()

    assert capacities() == ["16", "16"]
    env["LRU_CACHE_CAPACITY"] = "64"
    assert capacities() == ["16", "64"]


def test_model_layers_are_cpu_linear(model):
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 12 * 6 + 1 and all(isinstance(m, CpuLinear) for m in linears)
    assert model.out_head.contiguous_output is False
    assert all(m.contiguous_output for m in linears[:-1])


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(2, 3), (1, 11), (2, 256)])  # the book batch, a sentence, a batch
def test_logits_do_not_depend_on_the_thread_count(model, shape):
    """The app's server runs on one torch thread, the CLI and tests on more: the same numbers, bit
    for bit (a layer whose kernel depends on the thread count would change the last digits of
    sharp results, e.g. the loss at temperature 0.001)."""
    x = torch.randint(0, 50257, shape, generator=torch.Generator().manual_seed(5))
    before = torch.get_num_threads()
    try:
        with torch.inference_mode():
            torch.set_num_threads(1)
            one = model(x)
            torch.set_num_threads(2)
            two = model(x)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


@pytest.mark.slow
def test_a_sentence_s_attention_runs_on_one_thread_with_the_same_bits(model, monkeypatch):
    """Attention over a few tokens runs on one thread (faster than waking a second one), then the
    thread count goes back, also after an error; longer inputs and training keep every thread."""
    import torch.nn.functional as F

    seen = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    short, long = torch.tensor([[16833, 3626, 6100], [40, 1107, 588]]), torch.arange(64)[None] + 1000
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.inference_mode():
            one = model(short)
            assert seen == [1] * 12 and torch.get_num_threads() == 2
            seen.clear()
            model(long)  # 1 x 64^2 > ONE_THREAD_ATTENTION
            assert seen == [2] * 12
            seen.clear()
            limit = blocks.ONE_THREAD_ATTENTION
            monkeypatch.setattr(blocks, "ONE_THREAD_ATTENTION", 0)
            assert torch.equal(model(short), one) and seen == [2] * 12
            monkeypatch.setattr(blocks, "ONE_THREAD_ATTENTION", limit)

            def fails(*args, **kwargs):
                raise RuntimeError("out of memory")

            monkeypatch.setattr(F, "scaled_dot_product_attention", fails)
            with pytest.raises(RuntimeError, match="out of memory"):
                model(short)
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    attention = model.trf_blocks[0].att
    attention.train()  # dropout's random masks: every thread, as the book's training runs
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    seen.clear()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            q = torch.zeros(2, 12, 3, 64)
            attention.attend(q, q, q)
    finally:
        attention.eval()
        torch.set_num_threads(before)
    assert seen == [2]


@pytest.mark.slow
def test_a_conversion_that_changes_nothing_keeps_the_weights_packed(kind):
    """.to("cpu"), .cpu() and .float() on a frozen CPU model return each tensor as it is, so the
    packed weights stay (unpacking there left every later pass on the slower plain layout); a real
    conversion (float64) still unpacks first, and share_memory() works for either kernel."""
    cfg = {**GPT_CONFIG_124M, "emb_dim": 64, "n_heads": 4, "n_layers": 2, "vocab_size": 500}
    torch.manual_seed(3)
    model = freeze(GPTModel(cfg))
    x = torch.randint(0, 500, (2, 7))
    with torch.inference_mode():
        logits = model(x)
    layers = [m for m in model.modules() if isinstance(m, CpuLinear)]
    weights = [m.weight for m in layers]
    same = (lambda m: m.to("cpu"), lambda m: m.cpu(), lambda m: m.float(), lambda m: m.to(torch.float32))
    for convert in same:
        assert convert(model) is model
        assert all(m.weight is w for m, w in zip(layers, weights, strict=True))  # not even repacked
    with torch.inference_mode():
        assert torch.equal(model(x), logits)
    model.share_memory()  # oneDNN's opaque weight has no storage to share: unpacked first
    assert all(packed(m.weight) for m in layers) == (kind == "panels")
    with torch.inference_mode():
        torch.testing.assert_close(model(x), logits, rtol=1e-5, atol=1e-5)
    model.to(torch.float64)
    assert not any(packed(m.weight) for m in layers)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), logits.double(), rtol=1e-5, atol=1e-5)
