"""LossLens's own linear kernel (core/panel.py): exact layout, same numbers as F.linear, the same
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

from core import panel

ROOT = Path(__file__).resolve().parents[1]

# Where the kernel is supported and a C compiler exists (as on CI), it must build: no silent skip.
buildable = panel._supported() is None and (shutil.which("cc") or shutil.which("gcc"))
needs_kernel = pytest.mark.skipif(
    not buildable, reason=f"no AVX2 x86-64 CPU or no C compiler: {panel._supported()}"
)


@needs_kernel
def test_the_kernel_builds_here():
    assert panel.library() is not None, panel.reason


def test_pack_and_unpack_work_in_place_and_round_trip():
    torch.manual_seed(0)
    w = torch.randn(50, 24)  # 3 panels of 16 and 2 rows after them
    want = w.clone()
    flat = panel.pack_(w)
    assert flat.data_ptr() == w.data_ptr() and flat.shape == (50 * 24,)
    # Panel j is [K][16]: element (k, c) is W[16j + c, k]; the tail rows follow row-major.
    assert torch.equal(flat[: 3 * 16 * 24].view(3, 24, 16), want[:48].view(3, 16, 24).transpose(1, 2))
    assert torch.equal(flat[3 * 16 * 24 :], want[48:].reshape(-1))
    copy = panel.unpacked(flat, 50, 24)
    assert torch.equal(copy, want) and copy.data_ptr() != w.data_ptr()
    plain = panel.unpack_(flat, 50, 24)
    assert torch.equal(plain, want) and plain.data_ptr() == w.data_ptr()


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2, 3])
# k = 200: 14 rows go in k blocks of 128 (core/kernels/panel_linear.c), the last one partial.
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
    alone = panel.linear(x.reshape(-1, k)[:1], flat, b, n)
    assert torch.equal(alone[0], got[0, 0])


@needs_kernel
def test_no_rows_give_an_empty_result():
    flat = panel.pack_(torch.randn(32, 8))
    assert panel.linear(torch.empty(0, 8), flat, None, 32).shape == (0, 32)


def test_a_weight_shared_with_another_tensor_is_not_packed_in_place(monkeypatch):
    """A caller's state dict (or any view) keeps its values: such a weight is left to oneDNN."""
    from core import model as model_module

    monkeypatch.setattr(model_module.panel, "selected", lambda: True)
    layer = model_module.CpuLinear(24, 50, bias=False).requires_grad_(False)
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
from core import panel
from core.model import PackedWeight, build_untrained_model
from core.loss import compute_loss
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
    from core import model as model_module

    monkeypatch.setattr(model_module.panel, "selected", lambda: True)
    layer = model_module.CpuLinear(24, 50).requires_grad_(False)
    plain = layer.weight.detach().clone()
    assert layer.pack()
    held = layer.weight
    x = torch.randn(3, 24)
    before = panel.linear(x, held, layer.bias, 50)
    layer.unpack()
    assert torch.equal(layer.weight, plain)
    assert torch.equal(panel.linear(x, held, layer.bias, 50), before)
