"""LossLens's own linear kernel for inference on x86-64 CPUs with AVX2 (kernels/panel_linear.c).

Why: for a sentence's few rows a linear layer is a stream over its weight, and neither MKL nor
oneDNN streams it at the memory's speed. This kernel reads each weight as contiguous panels of 8
outputs, two at a time, with a prefetch ahead; AVX2, so AMD and Intel alike, and where the CPU has
AVX-512 a 16-wide tile takes the rows where it measures faster (the same bits either way).

It is used only where it measures faster than oneDNN on the machine itself (`selected()`).
Without a C compiler, on another CPU, or slower there, the plug-in keeps oneDNN; `LOSSLENS_PANEL=0`
switches it off, `=1` on without measuring. The C source is compiled once per machine into
LossLens's cache folder.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from core.fast import onednn
from core.fast.memory import HUGE_OUTPUT, discard, large_output

SOURCE = Path(__file__).with_name("kernels") / "panel_linear.c"
FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC"]
PANEL = 8  # outputs per panel, as in the C source (a tile reads two neighbouring panels)
# On a CPU with AVX-512, the 16-wide tile (four panels at a time) may run from WIDE_FEW_ROWS rows on,
# past one AVX2 tile, or from WIDE_MANY_ROWS, past the AVX2 tile's k blocks: selected() measures which.
WIDE_FEW_ROWS = 7
WIDE_MANY_ROWS = 49
ALIGN = 16  # floats: each layer's panels start on a 64-byte cache line
ENV = "LOSSLENS_PANEL"
COMPARISONS = 3  # selected(): how many times the kernel may measure against oneDNN before losing

# Why the kernel is off, once known (None while on or not yet asked): bench/bench_loss.py prints it.
reason: str | None = None
wide_rows = 0  # from how many rows the AVX-512 tile runs, 0: never (selected() measures; bench prints)


def _supported() -> str | None:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"{platform.machine()} is not x86-64"
    if sys.platform not in ("linux", "darwin"):
        return f"not built on {sys.platform}"
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):  # both imply AVX2 + FMA
        return f"the CPU has no AVX2 ({torch.backends.cpu.get_cpu_capability()})"
    return None


def _build(out_dir: Path, flags: list[str] = FLAGS) -> Path:
    """Compile the C source into out_dir (named by its hash, so an edit rebuilds); atomic rename,
    so concurrent processes never load a half-written file."""
    source = SOURCE.read_bytes()
    found = shutil.which("cc") or shutil.which("gcc")
    compiler = shlex.split(os.environ.get("CC", "")) or ([found] if found else [])  # CC may carry flags
    if not compiler:
        raise OSError("no C compiler (cc or gcc) on PATH")
    digest = hashlib.sha256(source + " ".join([*compiler, *flags]).encode()).hexdigest()[:16]
    target = out_dir / f"panel_linear-{digest}.so"
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        subprocess.run(
            [*compiler, *flags, str(SOURCE), "-o", tmp], check=True, capture_output=True, timeout=60
        )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernel, or None (with `reason` set) where it cannot be built or loaded."""
    global reason
    reason = _supported()
    if reason:
        return None
    from core.runtime.paths import cache_dir

    try:
        try:
            path = _build(cache_dir() / "kernels")
        except OSError:  # an unwritable cache folder: build in the temp folder
            path = _build(Path(tempfile.gettempdir()) / "losslens-kernels")
        return _load(path)
    except (OSError, subprocess.SubprocessError) as e:
        err = getattr(e, "stderr", b"") or b""
        reason = f"the kernel could not be built: {e} {err.decode(errors='replace')[:300]}".strip()
        return None


def _load(path: Path) -> ctypes.CDLL:
    """A built kernel, its functions typed for ctypes."""
    lib = ctypes.CDLL(str(path))
    fn = lib.losslens_panel_linear
    fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_long] * 3 + [ctypes.c_int] * 2
    fn.restype = None
    lib.losslens_set_wide_rows.argtypes = [ctypes.c_long]
    lib.losslens_set_wide_rows.restype = ctypes.c_int
    lib.losslens_wide_rows.restype = ctypes.c_long
    return lib


def set_wide_rows(rows: int) -> int:
    """Run the AVX-512 tile from `rows` rows on (0: never); the rows set, or 0 where the CPU or the
    kernel has no such tile. The bits are the same either way: only the speed differs."""
    lib = library()
    return rows if lib and lib.losslens_set_wide_rows(rows) else 0


def _transpose_panels_(
    flat: torch.Tensor, n: int, k: int, rows: int, cols: int, out: torch.Tensor | None = None
) -> None:
    """Transpose each full panel of `flat`, seen as [rows, cols], a few MB at a time: in place, or
    into `out`, handing each part of `flat` back to the OS once read (flat is then used up)."""
    step = max(1, (4 << 20) // (PANEL * k * 4))
    with torch.no_grad():
        for j in range(0, n // PANEL, step):
            e = min(n // PANEL, j + step)
            part = slice(j * PANEL * k, e * PANEL * k)
            panels = flat[part].view(e - j, rows, cols).transpose(1, 2)
            if out is None:
                flat[part].copy_(panels.reshape(-1))  # reshape copies: source and target overlap
            else:
                out[part].view(e - j, cols, rows).copy_(panels)
                discard(flat[part])


def pack_(w: torch.Tensor) -> torch.Tensor:
    """Pack a contiguous [N, K] float32 weight into panels in place, a few MB at a time (no second
    copy, even of the out_head); returns it flat ([N * K])."""
    n, k = w.shape
    flat = w.view(-1)
    _transpose_panels_(flat, n, k, PANEL, k)
    return flat


def pack_into_(w: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Pack a contiguous [N, K] float32 weight into `out` ([N * K], e.g. from huge_empty) and
    return it. w is used up, as by pack_: each part of its memory goes back to the OS once read."""
    n, k = w.shape
    src = w.reshape(-1)
    _transpose_panels_(src, n, k, PANEL, k, out)
    tail = n // PANEL * PANEL * k
    with torch.no_grad():
        out[tail:].copy_(src[tail:])
    return out


def unpack_(flat: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """The inverse of pack_, in place: the plain [N, K] weight, on the same memory."""
    _transpose_panels_(flat, n, k, k, PANEL)
    return flat.view(n, k)


def unpacked(flat: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """A plain [N, K] copy of a packed weight (for state dicts and deep copies)."""
    return unpack_(flat.detach().clone(), n, k)


def linear(
    x: torch.Tensor,
    flat: torch.Tensor,
    bias: torch.Tensor | None,
    n: int,
    gelu: bool = False,
    add: torch.Tensor | None = None,
) -> torch.Tensor:
    """x @ W^T + bias with W packed by pack_: rows out, float32, on torch's thread count. With
    `gelu`, GPT-2's GELU of that (within float32 rounding of F.gelu(approximate="tanh")), applied
    as the outputs are stored; with `add` (the output's shape), (x @ W^T + bias) + add, the same
    bits as adding it afterwards. With n beyond flat's outputs, the kernel reads on past its end:
    the packed weights that lie right after it (attention's query, key and value)."""
    k = x.shape[-1]
    x = x if x.is_contiguous() else x.contiguous()
    b = None if bias is None else bias.contiguous()  # held: the C call reads its memory
    if add is not None:
        if gelu or add.shape != (*x.shape[:-1], n) or add.dtype != torch.float32:
            raise ValueError(f"add must be float32 of shape {(*x.shape[:-1], n)}, without gelu")
        add = add.contiguous()
    rows = math.prod(x.shape[:-1])
    # An output past glibc's largest heap block (a batch's logits) is a fresh mapping each call,
    # faulted in 4 KB at a time: on huge pages instead, and in a pass one mapping again and again.
    y = large_output(rows * n) if rows * n * 4 >= HUGE_OUTPUT else None
    y = torch.empty(*x.shape[:-1], n) if y is None else y.view(*x.shape[:-1], n)
    if y.numel():
        library().losslens_panel_linear(
            x.data_ptr(),
            flat.data_ptr(),
            None if b is None else b.data_ptr(),
            None if add is None else add.data_ptr(),
            y.data_ptr(),
            rows,
            k,
            n,
            torch.get_num_threads(),
            gelu,
        )
    return y


def _best(runs, reps: int) -> list[float]:
    """Seconds of each callable, alternated, best of reps after a warm-up round: noise only adds."""
    best = [float("inf")] * len(runs)
    with torch.inference_mode():
        for _ in range(reps + 1):
            for i, run in enumerate(runs):
                t = time.perf_counter()
                run()
                best[i] = min(best[i], time.perf_counter() - t)
    return best


def measure(rows: int, layers: int, reps: int) -> tuple[float, float]:
    """Seconds for one pass over `layers` GPT-2-sized layers (3072 x 768; four exceed
    most L3 caches, so they are read from memory as in a model) with `rows` rows: this kernel, then
    oneDNN on its packed weights."""
    weights = [torch.randn(3072, 768) for _ in range(layers)]
    packed = [onednn.reorder(w) for w in weights]
    if any(w is None for w in packed):
        raise RuntimeError("oneDNN's linear is not available")
    panels = [pack_(w) for w in weights]
    x = torch.randn(rows, 768)
    ours, theirs = _best(
        (
            lambda: [linear(x, p, None, 3072) for p in panels],
            lambda: [onednn.linear(x, w, None) for w in packed],
        ),
        reps,
    )
    return ours, theirs


def measure_wide(rows: int, layers: int, reps: int) -> tuple[float, float]:
    """Seconds for a pass over `layers` 3072 x 768 layers with `rows` rows: the AVX-512 tile, then
    the AVX2 one."""
    panels, x = [pack_(torch.randn(3072, 768)) for _ in range(layers)], torch.randn(rows, 768)
    on, off = _best(
        (
            lambda: set_wide_rows(1) and [linear(x, p, None, 3072) for p in panels],
            lambda: set_wide_rows(0) or [linear(x, p, None, 3072) for p in panels],
        ),
        reps,
    )
    return on, off


@functools.cache
def selected() -> bool:
    """Whether PackedLinear packs weights for this kernel: on, built, and faster here than oneDNN for
    a sentence (8 rows, by >= 10 %) and not much slower for a full window (256 rows, where an
    AVX-512 CPU's oneDNN kernels run 16 wide). With AVX-512, the kernel's own 16-wide tile runs
    from a sentence's rows or from many rows on, where it measures faster than the AVX2 one
    (`wide_rows`): a trick for one CPU costs no other."""
    global reason, wide_rows
    setting = os.environ.get(ENV, "auto")
    if setting == "0":
        reason = f"{ENV}=0"
        return False
    if library() is None:
        return False
    try:  # once per process, on a CPU with AVX-512 only
        if set_wide_rows(WIDE_FEW_ROWS):
            few_on, few_off = measure_wide(12, layers=4, reps=5)  # from memory on most CPUs
            many_on, many_off = measure_wide(256, layers=1, reps=3)
            rows = WIDE_MANY_ROWS if many_on < many_off else 0
            wide_rows = set_wide_rows(WIDE_FEW_ROWS if rows and few_on < few_off else rows)
        if setting == "1":
            return True
        # Up to COMPARISONS times on a CPU where it loses: the choice holds for the process's life,
        # and one busy moment on a shared host could leave a server on the slower kernel.
        for _ in range(COMPARISONS):
            ours_few, onednn_few = measure(8, layers=4, reps=7)
            ours_many, onednn_many = measure(256, layers=1, reps=5)
            if ours_few <= 0.9 * onednn_few and ours_many <= 1.25 * onednn_many:
                return True
    except (RuntimeError, AttributeError) as e:  # no oneDNN to compare with: keep torch's kernels
        reason = f"could not be compared with oneDNN: {e}"
        return False
    reason = (
        f"not faster than oneDNN on this CPU: {ours_few * 1e3:.2f} vs {onednn_few * 1e3:.2f} ms for 8 rows, "
        f"{ours_many * 1e3:.1f} vs {onednn_many * 1e3:.1f} ms for 256 (last of {COMPARISONS} comparisons)"
    )
    return False
