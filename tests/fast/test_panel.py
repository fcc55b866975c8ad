"""LossLens's own linear kernel (core/fast/panel.py): exact layout, same numbers as F.linear, the same
bits for a row whatever the batch and thread count, and a clean fallback where it cannot be built."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from core.book import model as book
from core.book.model import GPT_CONFIG_124M, GPTModel
from core.fast import memory, panel, swap
from core.fast.blocks import FastAttention, FastFeedForward, FastGELU
from core.fast.linear import PackedLinear, PackedWeight
from core.fast.memory import HUGE_PAGE
from core.serving.frozen import freeze

# Its module fixtures are built once: under pytest-xdist the module runs in one worker.
pytestmark = pytest.mark.xdist_group("panel")

ROOT = Path(__file__).resolve().parents[2]

# Where the kernel is supported and a C compiler exists (as on CI), it must build: no silent skip.
buildable = panel._supported() is None and (shutil.which("cc") or shutil.which("gcc"))
needs_kernel = pytest.mark.skipif(
    not buildable, reason=f"no AVX2 x86-64 CPU or no C compiler: {panel._supported()}"
)


@needs_kernel
def test_the_kernel_builds_here():
    assert panel.library() is not None, panel.reason


@pytest.mark.slow
@needs_kernel
def test_the_kernel_compiles_without_a_warning(tmp_path):
    # A warning here has meant a value the compiler cannot prove set (an accumulator read before
    # its first store): the kernel's errors show as wrong bits in one row out of thousands, so
    # the compiler's own checks come first. The AVX-512 tile builds too (target pragma, any CPU).
    strict = [*panel.FLAGS, "-Wall", "-Wextra", "-Werror"]
    try:
        panel._build(tmp_path, strict)
    except subprocess.CalledProcessError as e:
        pytest.fail(e.stderr.decode(errors="replace")[:3000])


def test_pack_and_unpack_work_in_place_and_round_trip():
    torch.manual_seed(0)
    assert panel.PANEL == 8  # as in the C source
    w = torch.randn(50, 24)  # 6 panels of 8 and 2 rows after them
    want = w.clone()
    flat = panel.pack_(w)
    assert flat.data_ptr() == w.data_ptr() and flat.shape == (50 * 24,)
    # Panel j is [K][8]: element (k, c) is W[8j + c, k]; the tail rows follow row-major.
    assert torch.equal(flat[: 6 * 8 * 24].view(6, 24, 8), want[:48].view(6, 8, 24).transpose(1, 2))
    assert torch.equal(flat[6 * 8 * 24 :], want[48:].reshape(-1))
    copy = panel.unpacked(flat, 50, 24)
    assert torch.equal(copy, want) and copy.data_ptr() != w.data_ptr()
    plain = panel.unpack_(flat, 50, 24)
    assert torch.equal(plain, want) and plain.data_ptr() == w.data_ptr()


@pytest.mark.slow
@needs_kernel
@pytest.mark.parametrize("threads", [1, 2, 3])
# k = 200: 14 rows go in k blocks of 128 (core/fast/kernels/panel_linear.c), the last one partial.
# n = 40: two pairs of panels and an odd last panel; 50257: one row after 6282 panels.
@pytest.mark.parametrize(("n", "k"), [(3072, 768), (768, 3072), (50, 24), (7, 5), (50257, 64), (40, 200)])
@pytest.mark.parametrize("bias", [True, False])
def test_panel_linear_equals_f_linear(n, k, bias, threads):
    torch.manual_seed(n + k)
    w = torch.randn(n, k)
    b = torch.randn(n) if bias else None
    x = torch.randn(2, 7, k)
    want = F.linear(x, w, b)
    flat = panel.pack_(w.clone())
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = panel.linear(x, flat, b, n)
        rows = [panel.linear(x[i, j], flat, b, n) for i in range(2) for j in range(7)]
        x300 = torch.randn(300, k)
        many = panel.linear(x300, flat, b, n)  # several tiles of 6 rows and a rest
        some = [panel.linear(x300[i], flat, b, n) for i in (0, 5, 6, 150, 299)]
        # 7-20 rows: a first tile of 6, the other rows shared out evenly (6 + 4 + 3 for 13)
        firsts = {m: panel.linear(x300[:m], flat, b, n) for m in range(7, 21)}
    finally:
        torch.set_num_threads(before)
    assert got.shape == want.shape and got.is_contiguous()
    # Against float64: within the bound of summing k float32 products in order (k * u * sum |x w|),
    # which F.linear meets too; a wrong panel or row would miss it by orders of magnitude.
    truth = F.linear(x.double(), w.double(), None if b is None else b.double())
    magnitude = F.linear(x.double().abs(), w.double().abs()) + (0 if b is None else b.double().abs())
    bound = k * 2.0**-24 * magnitude
    assert ((got.double() - truth).abs() <= bound).all()
    assert ((want.double() - truth).abs() <= bound).all()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * k**0.5)
    # Each row alone gives the very same bits as within the batch: a sentence's logits never
    # depend on what it is batched with, nor on the thread count (the threads split the outputs).
    assert torch.equal(torch.stack(rows).view_as(got), got)
    assert many.shape == (300, n) and torch.equal(torch.stack(some), many[[0, 5, 6, 150, 299]])
    assert all(torch.equal(first, many[:m]) for m, first in firsts.items())
    alone = panel.linear(x.reshape(-1, k)[:1], flat, b, n)
    assert torch.equal(alone[0], got[0, 0])


@needs_kernel
def test_no_rows_give_an_empty_result():
    flat = panel.pack_(torch.randn(32, 8))
    assert panel.linear(torch.empty(0, 8), flat, None, 32).shape == (0, 32)


def test_a_weight_shared_with_another_tensor_is_not_packed_in_place(monkeypatch):
    """A caller's state dict (or any view) keeps its values: such a weight is left to oneDNN."""
    from core.fast import linear as model_module

    monkeypatch.setattr(model_module.panel, "selected", lambda: True)
    layer = model_module.PackedLinear(24, 50, bias=False).requires_grad_(False)
    mine = layer.weight.detach()  # a second tensor on the same memory
    want = mine.clone()
    layer.pack()
    assert torch.equal(mine, want)
    assert not isinstance(layer.weight, model_module.PackedWeight) or layer.weight.is_mkldnn


def _run(env: dict, code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
        timeout=300,
    )


CHECK = """
import torch
from core.fast import panel
from core.fast.linear import PackedWeight
from core import build_untrained_model
from core.lessons.loss import compute_loss
m = build_untrained_model(123)
w = m.trf_blocks[0].ff.layers[0].weight
print(panel.selected(), isinstance(w, PackedWeight) and not w.is_mkldnn, repr(panel.reason))
print(float(compute_loss(m, ["every effort moves you", "I really like chocolate"]).loss))
"""


@pytest.mark.slow
def test_without_a_compiler_the_model_falls_back_with_a_reason(tmp_path):
    """No C compiler (CC points nowhere, an empty cache): the model still computes the book's
    numbers with torch's kernels, and the reason is kept for the bench."""
    if panel._supported() is not None:
        pytest.skip(panel._supported())
    run = _run({"CC": str(tmp_path / "no-such-cc"), "LOSSLENS_CACHE_DIR": str(tmp_path), "PATH": ""}, CHECK)
    assert run.returncode == 0, run.stderr
    first, loss = run.stdout.splitlines()
    assert first.startswith("False False") and "could not be built" in first, first
    assert float(loss) == pytest.approx(10.7940, abs=5e-5)


@needs_kernel
@pytest.mark.slow
@pytest.mark.parametrize(("setting", "used"), [("0", False), ("1", True)])
def test_the_switch_turns_the_kernel_off_and_on(tmp_path, setting, used):
    run = _run({"LOSSLENS_PANEL": setting, "LOSSLENS_CACHE_DIR": str(tmp_path)}, CHECK)
    assert run.returncode == 0, run.stderr
    first, loss = run.stdout.splitlines()
    assert first.startswith(f"{used} {used}"), first
    assert float(loss) == pytest.approx(10.7940, abs=5e-5)
    # Built into the cache folder it was given.
    assert bool(list((tmp_path / "kernels").glob("panel_linear-*.so"))) == used


@needs_kernel
def test_unpacking_leaves_the_packed_weight_intact_for_a_request_still_reading_it(monkeypatch):
    """Fast mode unpacks a shared model's layer while another visitor's pass may still be reading
    the packed weight: the plain weight is a copy, the packed one is left as it was."""
    from core.fast import linear as model_module

    monkeypatch.setattr(model_module.panel, "selected", lambda: True)
    layer = model_module.PackedLinear(24, 50).requires_grad_(False)
    plain = layer.weight.detach().clone()
    assert layer.pack()
    held = layer.weight
    x = torch.randn(3, 24)
    before = panel.linear(x, held, layer.bias, 50)
    layer.unpack()
    assert torch.equal(layer.weight, plain)
    assert torch.equal(panel.linear(x, held, layer.bias, 50), before)


on_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="huge pages: Linux's madvise")


def _mapping_flags(address: int) -> list[str]:
    """The VmFlags of the mapping that holds `address` (/proc/self/smaps); "hg" is MADV_HUGEPAGE."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(a, 16) for a in head.split("-"))
            inside = lo <= address < hi
        elif inside and head == "VmFlags:":
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


@on_linux
def test_huge_empty_is_aligned_writable_memory_advised_for_huge_pages():
    t = memory.huge_empty(3_000_000)  # 12 MB: several 2 MB pages
    assert t.dtype == torch.float32 and t.shape == (3_000_000,)
    assert t.data_ptr() % HUGE_PAGE == 0
    t.fill_(2.5)
    assert float(t.sum()) == 7_500_000.0
    assert "hg" in _mapping_flags(t.data_ptr())
    assert "hg" not in _mapping_flags(torch.empty(3_000_000).data_ptr())  # torch's own: plain pages
    assert memory.huge_empty(0) is None


@on_linux
@needs_kernel
def test_a_pass_reuses_a_large_output_only_once_nothing_holds_it():
    """Inside reusing_outputs(), an output from HUGE_OUTPUT bytes on (a batch's logits) goes to the
    last one's mapping if it is free, never to one a caller still holds (nor a view of it)."""
    torch.manual_seed(9)
    n, k = 2**17, 8  # 64 rows x 2^17 outputs: 32 MB
    flat, x = panel.pack_(torch.randn(n, k)), torch.randn(2, 64, k)
    want = [panel.linear(x[i], flat, None, n) for i in range(2)]  # outside: fresh mappings
    assert want[0].numel() * 4 >= memory.HUGE_OUTPUT
    with memory.reusing_outputs():
        first = panel.linear(x[0], flat, None, n)
        held = first.flatten()[5:]  # a view holds the memory as well
        address = first.data_ptr()
        del first
        second = panel.linear(x[1], flat, None, n)
        assert second.data_ptr() != address  # held: not overwritten
        assert torch.equal(held, want[0].flatten()[5:]) and torch.equal(second, want[1])
        del held, second
        with memory.reusing_outputs():  # nested: the same pool
            third = panel.linear(x[0], flat, None, n)
        last = third.data_ptr()
        del third
        blocker = memory.huge_empty(n * 64)  # a fresh mapping could not land where third's was
        fourth = panel.linear(x[1], flat, None, n)
        assert fourth.data_ptr() == last != blocker.data_ptr()  # free again: the same mapping
        assert torch.equal(fourth, want[1])
        small = panel.linear(x[0, :3], flat, None, 1000)  # below HUGE_OUTPUT: torch's heap
        assert small.data_ptr() != last
    assert memory._outputs.pool is None  # let go on leaving


def test_pack_into_gives_pack_s_layout_and_hands_the_weight_s_pages_back():
    torch.manual_seed(3)
    w = torch.randn(50257 // 8, 768)  # 15 MB: several parts, and a tail after the last panel
    want = panel.pack_(w.clone())
    out = torch.full((w.numel(),), float("nan"))
    assert panel.pack_into_(w, out) is out
    assert torch.equal(out, want)
    if sys.platform.startswith("linux"):  # read parts went back to the OS: they read as zeros now
        assert int((w == 0).sum()) > 0.9 * w.numel()


@on_linux
def test_freeze_lays_every_panel_side_by_side_on_huge_pages(monkeypatch):
    """One mapping per model, advised for huge pages; the same logits as panels packed in place."""
    if panel.library() is None:
        pytest.skip(f"LossLens's kernel: {panel.reason}")
    monkeypatch.setattr(panel, "selected", lambda: True)
    cfg = {**GPT_CONFIG_124M, "emb_dim": 64, "n_heads": 4, "n_layers": 2, "vocab_size": 500}
    torch.manual_seed(5)
    model = freeze(GPTModel(cfg))
    torch.manual_seed(5)
    with monkeypatch.context() as mp:  # no arena: each weight packed on its own memory
        mp.setattr(swap, "huge_empty", lambda numel: None)
        in_place = freeze(GPTModel(cfg))
    assert all(isinstance(m.weight, PackedWeight) for m in in_place.modules() if isinstance(m, PackedLinear))
    weights = [m.weight for m in model.modules() if isinstance(m, PackedLinear)]
    assert all(isinstance(w, PackedWeight) and not w.is_mkldnn for w in weights)
    starts = [w.data_ptr() for w in weights]
    assert starts[0] % HUGE_PAGE == 0
    padded = [-(-w.numel() // panel.ALIGN) * panel.ALIGN * 4 for w in weights]  # 64-byte multiples
    assert [b - a for a, b in zip(starts, starts[1:], strict=False)] == padded[:-1]
    assert {"hg"} <= set(_mapping_flags(starts[-1]))
    x = torch.randint(0, 500, (2, 9))
    with torch.inference_mode():
        assert torch.equal(model(x), in_place(x))


def test_without_huge_pages_freeze_packs_each_weight_in_place(monkeypatch):
    """An OS without MADV_HUGEPAGE (macOS, a kernel without THP): the panels stay on each weight's
    own memory, with the same logits."""
    monkeypatch.setattr(panel, "selected", lambda: True)
    monkeypatch.delattr(memory.mmap, "MADV_HUGEPAGE", raising=False)
    assert memory.huge_empty(1000) is None
    cfg = {**GPT_CONFIG_124M, "emb_dim": 64, "n_heads": 4, "n_layers": 1, "vocab_size": 500}
    torch.manual_seed(6)
    plain = GPTModel(cfg).eval().requires_grad_(False)
    before = {m.weight.data_ptr() for m in plain.modules() if isinstance(m, torch.nn.Linear)}
    x = torch.randint(0, 500, (1, 7))
    with torch.inference_mode():
        want = plain(x)
    freeze(plain)
    layers = [m for m in plain.modules() if isinstance(m, PackedLinear)]
    assert all(isinstance(m.weight, PackedWeight) for m in layers)
    assert {m.weight.data_ptr() for m in layers} == before  # each on its own memory
    if panel.library() is not None:
        with torch.inference_mode():
            torch.testing.assert_close(plain(x), want, rtol=1e-5, atol=1e-5)


@needs_kernel
@pytest.mark.parametrize("rows", [1, 6, 15, 300])  # one tile; k blocks of 128; many tiles
def test_gelu_goes_once_over_each_finished_output(rows):
    """`gelu=True` gives GPT-2's GELU of the linear layer's outputs, panels and tail rows alike, the
    same bits on any thread count; on partial sums (k blocks) or twice, it would miss by far."""
    torch.manual_seed(rows)
    n, k = 50, 200  # 6 panels and 2 tail rows
    w, b, x = torch.randn(n, k) * 3 / k**0.5, torch.randn(n), torch.randn(rows, k)
    flat = panel.pack_(w.clone())
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        plain = panel.linear(x, flat, b, n)
        fused = panel.linear(x, flat, b, n, gelu=True)
        torch.set_num_threads(1)
        alone = panel.linear(x, flat, b, n, gelu=True)
    finally:
        torch.set_num_threads(before)
    assert fused.shape == (rows, n) and (plain < -2).any() and (plain > 2).any()
    # Near torch's own, whose 1 + tanh(u) loses digits for v < -3 (hence the absolute 5e-7).
    torch.testing.assert_close(fused, F.gelu(plain, approximate="tanh"), rtol=1e-6, atol=5e-7)
    assert torch.equal(alone, fused)
    assert torch.equal(panel.linear(x[-1:], flat, b, n, gelu=True)[0], fused[-1])


@needs_kernel
def test_the_kernel_s_gelu_is_gpt2_s_function_to_float32_rounding():
    """Against float64: v / (1 + e^(-2u)), which is 0.5 v (1 + tanh(u)) exactly, from -12 to 12."""
    v = torch.linspace(-12, 12, 48_001)
    x = torch.zeros(v.numel(), 16)
    x[:, 0] = v
    got = panel.linear(x, panel.pack_(torch.eye(16)), None, 16, gelu=True)
    assert torch.equal(got[:, 1:], torch.zeros(v.numel(), 15))  # GELU(0) = 0
    d = v.double()
    truth = d / (1 + torch.exp(-2 * (2 / torch.pi) ** 0.5 * (d + 0.044715 * d**3)))
    rel = (got[:, 0].double() - truth).abs() / truth.abs()
    assert float(rel[d >= -3].max()) < 1e-6  # a few float32 ulps
    # Below, e^(-2u) magnifies the rounding of u: still ~1e-5, where torch's F.gelu gives 0.
    assert float(rel[truth.abs() > 1e-37].max()) < 5e-5
    assert float(got[0, 0]) <= 0 and float(got[-1, 0]) == 12.0


def _tiny_frozen_model(monkeypatch, qkv_bias: bool):
    monkeypatch.setattr(panel, "selected", lambda: True)
    cfg = {**GPT_CONFIG_124M, "emb_dim": 64, "n_heads": 4, "n_layers": 2, "vocab_size": 500}
    torch.manual_seed(7)
    return freeze(GPTModel({**cfg, "qkv_bias": qkv_bias}))


def _same_model(model, qkv_bias: bool):
    """A frozen model with model's weights, built afresh (its blocks check their layers anew)."""
    other = GPTModel({**model.cfg, "qkv_bias": qkv_bias})
    other.load_state_dict(model.state_dict())
    return freeze(other)


def _distinct_qkv_biases(model):
    """Large biases, different in every layer, so that a mix-up of query, key and value shows."""
    with torch.no_grad():
        for block in model.trf_blocks:
            for layer in (block.att.W_query, block.att.W_key, block.att.W_value):
                layer.bias.normal_()
    return model


@needs_kernel
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_a_block_s_query_key_and_value_come_from_one_kernel_call_with_the_same_bits(monkeypatch, qkv_bias):
    model = _tiny_frozen_model(monkeypatch, qkv_bias)
    if qkv_bias:
        _distinct_qkv_biases(model)
    calls = []
    real = panel.linear

    def counted(x, flat, bias, n, **kw):
        calls.append(n)
        return real(x, flat, bias, n, **kw)

    monkeypatch.setattr(panel, "linear", counted)
    x = torch.randint(0, 500, (2, 9))
    with torch.inference_mode():
        joined = model(x)
        assert calls == [3 * 64, 64, 4 * 64, 64] * 2 + [500]  # one call per block for q, k and v
        # A model whose query, key and value are not side by side (a block checks its layers when
        # the model is accelerated, so a fresh copy of the model is checked)
        monkeypatch.setattr(FastAttention, "joinable", lambda self, x: False)
        model = _same_model(model, qkv_bias)
        calls.clear()
        separate = model(x)
    assert calls == [64, 64, 64, 64, 4 * 64, 64] * 2 + [500]
    assert torch.equal(joined, separate)


@needs_kernel
def test_the_feed_forward_s_gelu_runs_in_the_kernel_for_inference_only(monkeypatch):
    model = _tiny_frozen_model(monkeypatch, qkv_bias=False)
    x = torch.randint(0, 500, (1, 12))
    gelu_calls = []
    real_gelu = FastGELU.forward
    monkeypatch.setattr(FastGELU, "forward", lambda self, t: gelu_calls.append(1) or real_gelu(self, t))
    with torch.inference_mode():
        fused = model(x)
        assert gelu_calls == []  # the kernel applied it
        monkeypatch.setattr(FastAttention, "joinable", lambda self, t: False)
        monkeypatch.setattr(FastFeedForward, "on_panels", lambda self, t: False)
        apart = _same_model(model, qkv_bias=False)(x)
    assert len(gelu_calls) == 2  # once per block, as a module
    torch.testing.assert_close(fused, apart, rtol=1e-5, atol=1e-5)
    assert not torch.equal(fused, torch.zeros_like(fused))


@needs_kernel
def test_a_block_takes_the_module_path_whenever_a_weight_or_layer_changes(monkeypatch):
    import copy

    model = _tiny_frozen_model(monkeypatch, qkv_bias=True)
    x = torch.randint(0, 500, (1, 7))
    calls = []
    real_linear = panel.linear
    monkeypatch.setattr(
        panel, "linear", lambda x, flat, bias, n, **kw: calls.append(n) or real_linear(x, flat, bias, n, **kw)
    )
    on_panels = [3 * 64, 64, 4 * 64, 64] * 2 + [500]
    with torch.inference_mode():
        first = model(x)
        assert calls == on_panels and torch.equal(model(x), first)

    # A layer replaced (here by a plain one with the same weights): that block runs the modules;
    # read as panels, a plain weight would give other numbers
    block = model.trf_blocks[0]
    plain = torch.nn.Linear(64, 64)
    plain.load_state_dict(block.att.out_proj.state_dict())
    block.att.out_proj = plain.requires_grad_(False).eval()
    calls.clear()
    with torch.inference_mode():
        torch.testing.assert_close(model(x), first, rtol=1e-5, atol=1e-5)
    assert calls == [3 * 64, 4 * 64, 64] + on_panels[4:]  # block 0's out_proj off the kernel

    # Weights unpacked by a state dict: no kernel call at all, the same numbers; accelerated again:
    # the very same bits as at first
    model.load_state_dict(model.state_dict())
    calls.clear()
    with torch.inference_mode():
        torch.testing.assert_close(model(x), first, rtol=1e-5, atol=1e-5)
        assert calls == []
        freeze(model)
        assert torch.equal(model(x), first)
        assert calls == on_panels

    # A deep copy (to train, as the gradient view does) holds the book's modules and plain weights
    twin = copy.deepcopy(model)
    assert all(type(b) is book.TransformerBlock and "_panels" not in b.__dict__ for b in twin.trf_blocks)
    assert not any(isinstance(m, PackedLinear) for m in twin.modules())
    with torch.inference_mode():
        torch.testing.assert_close(twin(x), first, rtol=1e-5, atol=1e-5)


@needs_kernel
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_a_block_on_the_kernel_skips_the_module_calls_with_the_same_bits(monkeypatch, qkv_bias):
    from torch import nn

    model = _tiny_frozen_model(monkeypatch, qkv_bias)
    x = torch.randint(0, 500, (2, 9))
    called = []
    for cls in (FastAttention, nn.Dropout):
        real_forward = cls.forward
        monkeypatch.setattr(cls, "forward", lambda self, t, f=real_forward: called.append(self) or f(self, t))
    with torch.inference_mode():
        direct = model(x)
        assert len(called) == 1  # the embeddings' dropout only: no attention module, no block dropout
        monkeypatch.setattr(FastAttention, "joinable", lambda self, x: False)  # the modules' path
        model = _same_model(model, qkv_bias)
        called.clear()
        modules = model(x)
        assert len(called) == 1 + 2 * (1 + 2)  # per block: the attention module, two shortcut dropouts
    assert torch.equal(direct, modules)
    model.train()  # dropout on: the book's code (and its random masks), never the direct path
    with torch.no_grad():
        called.clear()
        model(x)
    assert len(called) > 1


SIMDE = [Path(d, "simde", "x86", "avx512.h") for d in ("/usr/include", "/usr/local/include")]


@pytest.fixture(scope="session")
def emulated_kernel(tmp_path_factory):
    """The kernel built with SIMDe's AVX-512 in AVX2 (tests/fast/kernels/avx512_emulated.h): the
    AVX-512 tile's code on any AVX2 CPU, so its bits are checked on every machine, not only on
    those with AVX-512. Needs Debian's libsimde-dev (header-only), which .ci/run installs."""
    if not buildable:
        pytest.skip(f"no AVX2 x86-64 CPU or no C compiler: {panel._supported()}")
    if not any(p.exists() for p in SIMDE) and not os.environ.get("CI"):
        pytest.skip("no SIMDe headers to emulate AVX-512 with: sudo apt-get install libsimde-dev")
    shim = ROOT / "tests" / "fast" / "kernels" / "avx512_emulated.h"
    flags = [*panel.FLAGS, "-DLOSSLENS_AVX512_EMULATED", "-include", str(shim)]
    return panel._load(panel._build(tmp_path_factory.mktemp("kernel"), flags))


@pytest.fixture(params=["native", "emulated"])
def wide_tile(request, monkeypatch):
    """The AVX-512 tile: on this CPU's own AVX-512 (else skipped), or emulated on its AVX2 (the
    emulated build stands in for the process's kernel). The process's measured choice of the
    AVX-512 tile is restored afterwards (it is one setting of the loaded kernel)."""
    if request.param == "emulated":
        lib = request.getfixturevalue("emulated_kernel")
        monkeypatch.setattr(panel, "library", lambda: lib)
    if not (buildable and panel.set_wide_rows(panel.WIDE_FEW_ROWS)):
        pytest.skip("no AVX-512 on this CPU: the AVX2 tile runs every row count")
    yield
    panel.set_wide_rows(panel.wide_rows)


@pytest.mark.slow
@needs_kernel
@pytest.mark.parametrize("threads", [1, 2, 3])
# n = 40: one quad of panels and one panel left; 56: a quad and a pair and a panel; 7: no panel at
# all; 50257: 1570 quads, a pair and one row after the panels.
@pytest.mark.parametrize(("n", "k"), [(3072, 768), (768, 3072), (40, 200), (56, 24), (7, 5), (50257, 64)])
@pytest.mark.parametrize("bias", [True, False])
def test_the_avx512_tile_gives_the_avx2_tile_s_bits(wide_tile, n, k, bias, threads):
    torch.manual_seed(n + k)
    flat = panel.pack_(torch.randn(n, k))
    b = torch.randn(n) if bias else None
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        # one row; one tile of 12 and less; many tiles in blocks of 96 rows, the last a whole tile or not
        for rows in (1, panel.WIDE_FEW_ROWS, 13, 300, 203):
            x = torch.randn(rows, k)
            for gelu, add in ((False, None), (True, None), (False, torch.randn(rows, n))):
                panel.set_wide_rows(1)
                wide = panel.linear(x, flat, b, n, gelu=gelu, add=add)
                panel.set_wide_rows(0)
                narrow = panel.linear(x, flat, b, n, gelu=gelu, add=add)
                assert torch.equal(wide, narrow), (rows, gelu)
                # A row alone (the AVX2 tile, below WIDE_FEW_ROWS) has the batch's bits either way.
                panel.set_wide_rows(panel.WIDE_FEW_ROWS)
                last = panel.linear(x[-1:], flat, b, n, gelu=gelu, add=None if add is None else add[-1:])
                assert torch.equal(last[0], wide[-1])
    finally:
        torch.set_num_threads(before)
    want = F.linear(x, panel.unpacked(flat, n, k), b) + add
    torch.testing.assert_close(wide, want, rtol=1e-4, atol=1e-4 * k**0.5)  # and the right numbers


@needs_kernel
def test_the_avx512_tile_s_gelu_gives_the_avx2_one_s_bits_over_every_range(wide_tile):
    """gelu16 and exp16 do gelu8's and exp8's operations lane for lane, through the clamps where
    e^x saturates and on to overflow: each of 32 outputs (a quad) from -200 to 200, tiny and
    huge ones, and infinities, the same bits on either tile."""
    v = torch.linspace(-100, 100, 20_001)
    v = torch.cat([v, torch.tensor([-3e38, -1e4, -1e-30, 0.0, 1e-30, 1e4, 3e38])])
    flat = panel.pack_(torch.linspace(-2, 2, 32)[:, None].contiguous())  # output n = v * w_n
    panel.set_wide_rows(1)
    wide = panel.linear(v[:, None], flat, None, 32, gelu=True)
    panel.set_wide_rows(0)
    narrow = panel.linear(v[:, None], flat, None, 32, gelu=True)
    assert torch.equal(wide, narrow)
    assert wide.isinf().any() and (wide == 0).any() and not wide.isnan().any()


@needs_kernel
def test_a_frozen_model_s_logits_are_the_same_bits_on_either_tile(wide_tile, monkeypatch):
    """The whole frozen path on the AVX-512 tile: the joined query, key and value (read on past
    one weight's end), the GELU and the shortcuts in the kernel, the out_head's leftover panels
    and rows; each batch's logits are the AVX2 tile's, bit for bit."""
    model = _distinct_qkv_biases(_tiny_frozen_model(monkeypatch, qkv_bias=True))
    rows = []
    real = panel.linear
    monkeypatch.setattr(
        panel, "linear", lambda x, *a, **kw: rows.append(x.numel() // x.shape[-1]) or real(x, *a, **kw)
    )
    # one row, a sentence, a tile of 12 and a rest, and two blocks of 96 rows (2 x 60)
    for shape in ((1, 1), (1, 9), (2, 19), (2, 60)):
        x = torch.randint(0, 500, shape)
        with torch.inference_mode():
            panel.set_wide_rows(1)
            rows.clear()
            wide = model(x)
            assert rows == [x.numel()] * 9  # every layer of both blocks and the out_head on the kernel
            panel.set_wide_rows(0)
            narrow = model(x)
        assert torch.equal(wide, narrow), shape


@needs_kernel
# (AVX-512 tile faster for 12 rows, for 256 rows) -> from how many rows it runs
@pytest.mark.parametrize(
    ("few", "many", "rows"),
    [
        (True, True, panel.WIDE_FEW_ROWS),
        (False, True, panel.WIDE_MANY_ROWS),
        (True, False, 0),
        (False, False, 0),
    ],
)
def test_the_avx512_tile_runs_only_where_it_measured_faster(wide_tile, monkeypatch, few, many, rows):
    def measure_wide(rows, layers, reps):
        faster = few if rows < panel.WIDE_MANY_ROWS else many
        return (1.0, 2.0) if faster else (2.0, 1.0)

    monkeypatch.setenv(panel.ENV, "auto")
    monkeypatch.setattr(panel, "measure_wide", measure_wide)
    monkeypatch.setattr(panel, "measure", lambda rows, layers, reps: (1.0, 2.0))  # the kernel: faster
    monkeypatch.setattr(panel, "wide_rows", panel.wide_rows)  # restored after the test
    assert panel.selected.__wrapped__() is True
    assert panel.wide_rows == rows
    assert panel.library().losslens_wide_rows() == rows


@pytest.mark.parametrize(("faster_from", "selected"), [(1, True), (3, True), (None, False)])
def test_the_kernel_loses_to_onednn_only_when_every_comparison_says_so(monkeypatch, faster_from, selected):
    """A single comparison taken in a busy moment must not leave the process on oneDNN for life."""
    calls = []

    def measure(rows, layers, reps):
        calls.append(rows)
        comparison = (len(calls) + 1) // 2  # 8 rows, then 256 rows, per comparison
        return (1.0, 2.0) if faster_from is not None and comparison >= faster_from else (3.0, 2.0)

    monkeypatch.setenv(panel.ENV, "auto")
    monkeypatch.setattr(panel, "measure", measure)
    monkeypatch.setattr(panel, "set_wide_rows", lambda rows: 0)  # no AVX-512 tile to choose
    monkeypatch.setattr(panel, "reason", None)
    assert panel.selected.__wrapped__() is selected
    assert len(calls) == 2 * (faster_from or panel.COMPARISONS)
    assert (panel.reason is None) == selected
    if not selected:
        assert "not faster than oneDNN" in panel.reason and "3000.00 vs 2000.00 ms for 8 rows" in panel.reason
