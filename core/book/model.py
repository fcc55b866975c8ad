"""The book's GPT model (chapter 4): its classes, names, order and parameter init.

Building the submodules in the book's order makes `torch.manual_seed(123);
GPTModel(GPT_CONFIG_124M)` draw exactly the book's weights. The forward pass uses fused
kernels (scaled_dot_product_attention, layer_norm, tanh-GELU) that compute the same
functions as the book's step-by-step code. One addition follows the book's classes:
CpuLinear, an nn.Linear with faster CPU kernels for inference.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import weakref
from collections import Counter

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.fast import panel
from core.serving.priority import pause_point

# Section 5.1 shortens the context to 256 tokens to train on a laptop.
GPT_CONFIG_124M = {
    "vocab_size": 50257,
    "context_length": 256,
    "emb_dim": 768,
    "n_heads": 12,
    "n_layers": 12,
    "drop_rate": 0.1,
    "qkv_bias": False,
}

# OpenAI's released GPT-2 shapes (section 5.5): full 1024 context and biased q/k/v.
GPT2_MODEL_CONFIGS = {
    "gpt2-small (124M)": {"emb_dim": 768, "n_layers": 12, "n_heads": 12},
    "gpt2-medium (355M)": {"emb_dim": 1024, "n_layers": 24, "n_heads": 16},
    "gpt2-large (774M)": {"emb_dim": 1280, "n_layers": 36, "n_heads": 20},
    "gpt2-xl (1558M)": {"emb_dim": 1600, "n_layers": 48, "n_heads": 25},
}
GPT2_SMALL_CONFIG = {
    **GPT_CONFIG_124M,
    **GPT2_MODEL_CONFIGS["gpt2-small (124M)"],
    "context_length": 1024,
    "qkv_bias": True,
}

# Up to this b * num_tokens^2, attention runs on one thread (MultiHeadAttention._attend). In a forward
# pass on two threads: 0.09-0.46 ms faster for 1 x 6-10 and 2 x 3-6 tokens, 0.07 ms slower for 1 x 15
# (AMD EPYC, bench/README.md).
ONE_THREAD_ATTENTION = 128


class MultiHeadAttention(nn.Module):
    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
        super().__init__()
        assert d_out % num_heads == 0, "d_out must be divisible by n_heads"

        self.d_out = d_out
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads  # Reduce the projection dim to match desired output dim

        self.W_query = CpuLinear(d_in, d_out, bias=qkv_bias)
        self.W_key = CpuLinear(d_in, d_out, bias=qkv_bias)
        self.W_value = CpuLinear(d_in, d_out, bias=qkv_bias)
        self.out_proj = CpuLinear(d_out, d_out)  # Linear layer to combine head outputs
        self.dropout = nn.Dropout(dropout)
        # The book's causal-mask buffer is not needed: the fused kernel below masks by itself.
        self.context_length = context_length

    def forward(self, x):
        b, num_tokens, d_in = x.shape

        qkv = self._joined_qkv(x)
        if qkv is not None:  # the three projections in one kernel call, each exactly as alone
            queries, keys, values = qkv.split(self.d_out, dim=-1)
        else:
            keys = self.W_key(x)  # Shape: (b, num_tokens, d_out)
            queries = self.W_query(x)
            values = self.W_value(x)

        # Unroll last dim: (b, num_tokens, d_out) -> (b, num_tokens, num_heads, head_dim)
        keys = keys.view(b, num_tokens, self.num_heads, self.head_dim)
        values = values.view(b, num_tokens, self.num_heads, self.head_dim)
        queries = queries.view(b, num_tokens, self.num_heads, self.head_dim)

        # Transpose: (b, num_tokens, num_heads, head_dim) -> (b, num_heads, num_tokens, head_dim)
        keys = keys.transpose(1, 2)
        queries = queries.transpose(1, 2)
        values = values.transpose(1, 2)

        context_vec = self._attend(queries, keys, values)
        context_vec = self.out_proj(context_vec)  # optional projection

        return context_vec

    def _attend(self, queries, keys, values):
        b, _, num_tokens, _ = queries.shape
        # A few tokens' attention is a few us of work, which a second thread only slows: handing it
        # half and waiting for it took 34-52 us per call where one thread took 23-31 (6 tokens).
        # The same bits on any thread count: each head's rows are one thread's work.
        threads = torch.get_num_threads()
        alone = not self.training and threads > 1 and b * num_tokens * num_tokens <= ONE_THREAD_ATTENTION
        if alone:
            torch.set_num_threads(1)
        try:
            # The book's causal softmax(queries @ keys^T / sqrt(head_dim)) with dropout, times
            # the values, as one fused kernel: (b, num_heads, num_tokens, head_dim)
            context_vec = F.scaled_dot_product_attention(
                queries,
                keys,
                values,
                dropout_p=self.dropout.p if self.training else 0.0,
                is_causal=True,
            )
        finally:
            if alone:
                torch.set_num_threads(threads)
        # Shape: (b, num_tokens, num_heads, head_dim)
        context_vec = context_vec.transpose(1, 2)

        # Combine heads, where self.d_out = self.num_heads * self.head_dim
        return context_vec.reshape(b, num_tokens, self.d_out)

    def joinable(self, x) -> bool:
        """Whether freeze() packed the query, key and value weights side by side for LossLens's
        kernel, so that they form one packed [3 d_out, d_in] weight for x."""
        layers = (self.W_query, self.W_key, self.W_value)
        if not layers[0].on_panels(x):
            return False
        end = layers[0].weight.data_ptr()
        for layer in layers:
            w = layer.weight
            n, k = getattr(w, "plain_shape", (0, 0))  # only LossLens's panels have one
            if n == 0 or w.data_ptr() != end or n % panel.PANEL or k != x.shape[-1]:
                return False
            if (layer.bias is None) != (layers[0].bias is None):
                return False
            end += n * k * 4
        return True

    def _joined_qkv(self, x):
        """[queries | keys | values] from one call of LossLens's kernel where joinable(x), else None.
        Each output is computed exactly as alone; why: 24 fewer calls per pass (~15 us each), and
        one stream of 7 MB instead of three of 2.4 MB."""
        return self._qkv(x) if self.joinable(x) else None

    def _qkv(self, x):
        # The module's dicts, not its attributes: each attribute of a module is a Python call (~1 us)
        layers = [self._modules[name]._parameters for name in ("W_query", "W_key", "W_value")]
        bias = None if layers[0]["bias"] is None else torch.cat([layer["bias"] for layer in layers])
        return panel.linear(x, layers[0]["weight"], bias, 3 * self.d_out)


class LayerNorm(nn.Module):
    def __init__(self, emb_dim):
        super().__init__()
        self.eps = 1e-5
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x):
        # Biased variance, as the book: (x - mean) / sqrt(var + eps) * scale + shift.
        return F.layer_norm(x, x.shape[-1:], self.scale, self.shift, self.eps)


class GELU(nn.Module):
    def forward(self, x):
        # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), the GPT-2 approximation.
        return F.gelu(x, approximate="tanh")


class FeedForward(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.layers = nn.Sequential(
            CpuLinear(cfg["emb_dim"], 4 * cfg["emb_dim"]),
            GELU(),
            CpuLinear(4 * cfg["emb_dim"], cfg["emb_dim"]),
        )

    def forward(self, x):
        if self.on_panels(x):
            first, _, last = self.layers
            # LossLens's kernel applies the GELU as it stores the first layer's outputs: one pass
            # over them and one call fewer per block (same function within float32 rounding).
            return last(panel.linear(x, first.weight, first.bias, first.out_features, gelu=True))
        return self.layers(x)

    def on_panels(self, x) -> bool:
        """Whether both layers run LossLens's kernel, the first with GPT-2's GELU in it."""
        first, activation, last = self.layers
        return isinstance(activation, GELU) and first.on_panels(x) and last.on_panels(x)


class TransformerBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        pause_point()  # a model build on a background thread may wait here for visitors (priority.py)
        self.att = MultiHeadAttention(
            d_in=cfg["emb_dim"],
            d_out=cfg["emb_dim"],
            context_length=cfg["context_length"],
            num_heads=cfg["n_heads"],
            dropout=cfg["drop_rate"],
            qkv_bias=cfg["qkv_bias"],
        )
        self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg["emb_dim"])
        self.norm2 = LayerNorm(cfg["emb_dim"])
        self.drop_shortcut = nn.Dropout(cfg["drop_rate"])

    def forward(self, x):
        layers = None if self.training else self._on_panels(x)
        if layers is not None:
            return self._forward_on_panels(x, *layers)

        # Shortcut connection for attention block
        shortcut = x
        x = self.norm1(x)
        x = self.att(x)  # Shape [batch_size, num_tokens, emb_size]
        x = self.drop_shortcut(x)
        x = x + shortcut  # Add the original input back

        # Shortcut connection for feed forward block
        shortcut = x
        x = self.norm2(x)
        x = self.ff(x)
        x = self.drop_shortcut(x)
        x = x + shortcut  # Add the original input back

        return x

    def _on_panels(self, x):
        """The block's attention module and its feed-forward's two linear layers where every linear
        layer runs LossLens's kernel for x (the query, key and value joined), else None.

        Why remembered: asked of the modules each time, the checks cost ~25 us per block (every
        attribute of a module or a packed weight is a Python call), ~0.4 ms of a sentence's 17 ms
        forward pass. With gradients off (every request), the answer is kept with the exact modules,
        weights and biases that gave it (weak references: nothing is held alive) and each weight's
        address; a layer replaced, unpacked, converted or loaded from a state dict is asked again."""
        att = self._modules["att"]
        ff = self._modules["ff"]._modules["layers"]._modules
        norms = self._modules["norm1"], self._modules["norm2"]
        layers = (*map(att._modules.get, ("W_query", "W_key", "W_value", "out_proj")), ff["0"], ff["2"])
        weights = [layer._parameters["weight"] for layer in layers]
        biases = [layer._parameters["bias"] for layer in layers]
        # oneDNN's opaque weights have no address; they are never on the panels anyway
        addresses = [w.data_ptr() if type(w) is PackedWeight and not w.is_mkldnn else 0 for w in weights]
        objects = (att, ff["1"], *norms, *layers, *weights, *biases)  # ff["1"]: the GELU the kernel applies
        key = (x.shape[-1], *map(id, objects), *addresses)
        quick = (
            x.dtype == torch.float32 and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
        )
        kept = self.__dict__.get("_panels_key")
        if quick and kept is not None and kept[0] == key:  # ids: each object is alive (see below)
            return att, ff["0"], ff["2"]
        if not (
            all(type(norm) is LayerNorm for norm in norms)  # _forward_on_panels runs their op itself
            and att.joinable(x)
            and att.out_proj.on_panels(x)
            and self.ff.on_panels(x)
        ):
            return None
        if quick:
            # An object's id is another object's once it is gone: the first of them to go takes
            # the kept answer with it (a weak reference's callback; nothing is held alive)
            block = weakref.ref(self)

            def forget(_, block=block):
                if (alive := block()) is not None:
                    alive.__dict__.pop("_panels_key", None)

            self.__dict__["_panels_key"] = (key, [weakref.ref(o, forget) for o in objects if o is not None])
        return att, ff["0"], ff["2"]

    def __getstate__(self):  # a copy or a pickle asks again: its weights are other objects
        state = super().__getstate__()
        state.pop("_panels_key", None)
        return state

    def _forward_on_panels(self, x, att, first, last):
        """forward(x) in eval mode with every layer on LossLens's kernel: the same ops in the same
        order, so the same bits, without the module calls and eval-mode dropouts in between
        (0.6-0.9 ms of a 6- or 15-token forward pass, ~3 %, on an Intel Xeon)."""
        out_proj = att._modules["out_proj"]
        b, num_tokens, _ = x.shape
        qkv = att._qkv(_norm(self._modules["norm1"], x))  # _on_panels checked att.joinable(x)
        # [b, num_tokens, 3 num_heads, head_dim] -> [b, 3 num_heads, num_tokens, head_dim], split
        # into queries, keys and values: the views that MultiHeadAttention.forward makes
        heads = qkv.view(b, num_tokens, 3 * att.num_heads, att.head_dim).transpose(1, 2)
        context_vec = att._attend(*heads.split(att.num_heads, dim=1))
        # The shortcuts are added in the kernel, as each output is stored: (x W^T + b) + x
        x = panel.linear(
            context_vec,
            out_proj._parameters["weight"],
            out_proj._parameters["bias"],
            out_proj.out_features,
            add=x,
        )
        hidden = panel.linear(
            _norm(self._modules["norm2"], x),
            first._parameters["weight"],
            first._parameters["bias"],
            first.out_features,
            gelu=True,
        )
        return panel.linear(
            hidden, last._parameters["weight"], last._parameters["bias"], last.out_features, add=x
        )


def _norm(norm: LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """norm(x) without the module call (~5 us): LayerNorm.forward's op on its parameters' dict."""
    return F.layer_norm(x, x.shape[-1:], norm._parameters["scale"], norm._parameters["shift"], norm.eps)


class GPTModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = dict(cfg)
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])

        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg["n_layers"])])

        self.final_norm = LayerNorm(cfg["emb_dim"])
        pause_point()
        self.out_head = CpuLinear(cfg["emb_dim"], cfg["vocab_size"], bias=False, contiguous_output=False)

    def requires_grad_(self, requires_grad: bool = True):
        if requires_grad:  # weights packed for inference (freeze) go back to the plain layout
            for layer in self.modules():
                if isinstance(layer, CpuLinear):
                    layer.unpack()
        return super().requires_grad_(requires_grad)

    @property
    def context_length(self) -> int:
        return self.cfg["context_length"]

    def forward(self, in_idx):
        batch_size, seq_len = in_idx.shape
        if seq_len > self.context_length:
            raise ValueError(f"{seq_len} tokens exceed the context length {self.context_length}")
        tok_embeds = self.tok_emb(in_idx)
        pos_embeds = self.pos_emb(torch.arange(seq_len, device=in_idx.device))
        x = tok_embeds + pos_embeds  # Shape [batch_size, num_tokens, emb_size]
        x = self.drop_emb(x)
        x = self.trf_blocks(x)
        x = self.final_norm(x)
        logits = self.out_head(x)
        return logits


def _onednn_linear_available() -> bool:
    """oneDNN's fused linear on x86-64 (measured there; elsewhere the MKL/F.linear paths stay)."""
    if os.environ.get("LOSSLENS_ONEDNN", "1") == "0" or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


# Switched off by LOSSLENS_ONEDNN=0; bench/bench_loss.py flips it to time both kernels.
ONEDNN_LINEAR = _onednn_linear_available()
# oneDNN keeps a compiled kernel and its buffers per input shape, and every token count is a new
# shape: unbounded, a process grew by ~430 MB over 150 sentence lengths. Re-creating a
# kernel costs well under a millisecond, so a small cache loses no speed. Read at oneDNN's first
# use (after this import); a value set by the user wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")
os.environ.setdefault("LRU_CACHE_CAPACITY", "16")  # ideep's cache in front of oneDNN's


# oneDNN's packing copies a weight before the plain one is freed. The 154 MB out_head (every
# GPT-2's is larger than this) would be held twice for a moment: +154 MB of peak RSS per model
# build, which took a seed storm's server peak from ~2.46 to ~2.8 GB, near a small host's limit.
# LossLens's panels (core/fast/panel.py) pack in place, so they have no such limit.
PACK_MAX_BYTES = 64 * 2**20


class CpuLinear(nn.Linear):
    """nn.Linear (same parameters, same init) with faster CPU kernels for inference.

    Why: MKL's float32 GEMM is slow for a sentence's few rows (on AMD Zen it streams the weights at
    a third of the memory bandwidth) and for the 50257-wide out_head, whose (W @ x^T)^T view then
    costs the loss steps a copy. oneDNN's fused linear was 1.1-1.6x faster for 11-255 tokens and
    on a 2x256 batch (bench/README.md), returns rows, and gives the same bits on any thread count.
    A frozen model's weights are packed (pack): for LossLens's own kernel where it measures faster
    (core/fast/panel.py; ~2x on a sentence here), else for oneDNN's. Where gradients are needed
    (training, the gradient view) it keeps F.linear, or (W @ x^T)^T for a few tokens.
    """

    # From a full window of tokens on, both orientations run at the same speed, and
    # F.linear's output is contiguous without a copy (the out_head keeps W @ x^T).
    MANY_ROWS = 256

    def __init__(self, in_features, out_features, bias=True, contiguous_output=True):
        super().__init__(in_features, out_features, bias=bias)
        # Rows made contiguous again: scaled_dot_product_attention's fused CPU kernel needs
        # unit stride along the head dimension (else it falls back to the slow math path).
        # The out_head turns this off: copying [tokens, 50257] logits costs more than its
        # matmul saves, and the loss steps read either layout.
        self.contiguous_output = contiguous_output

    def forward(self, x):
        weight = self.weight
        if isinstance(weight, PackedWeight):
            if _inference(x, weight):
                if weight.is_mkldnn:
                    return _onednn_linear(x, weight, self.bias)
                return panel.linear(x, weight, self.bias, self.out_features)
            if torch.is_autocast_enabled("cpu") and not (torch.is_grad_enabled() and x.requires_grad):
                weight = self._autocast_weight()  # the fast mode: the plain path below, on its copy
            else:
                # Gradients need the plain layout: back to it for good, since unpacking per call
                # would cost more than it saves (to_dense ~1.3 GB/s here).
                self.unpack()
                weight = self.weight
        if x.device.type != "cpu":
            return F.linear(x, weight, self.bias)
        if ONEDNN_LINEAR and _inference(x, weight):
            return _onednn_linear(x, weight, self.bias)
        if self.contiguous_output and x.numel() >= self.MANY_ROWS * self.in_features:
            return F.linear(x, weight, self.bias)
        x2d = x.reshape(-1, self.in_features).t()
        if self.bias is None:
            y = torch.mm(weight, x2d)
        else:
            y = torch.addmm(self.bias[:, None], weight, x2d)
        y = y.t().contiguous() if self.contiguous_output else y.t()
        return y.reshape(*x.shape[:-1], self.out_features)

    def on_panels(self, x: torch.Tensor) -> bool:
        """Whether forward(x) runs LossLens's kernel (core/fast/panel.py) on a packed weight."""
        w = self.weight
        return isinstance(w, PackedWeight) and not w.is_mkldnn and _inference(x, w)

    def pack(self, panels: bool | None = None, into: torch.Tensor | None = None) -> bool:
        """Hold the weight in a faster kernel's layout, in place of the plain one (no extra memory).

        Where LossLens's own kernel measured faster (core/fast/panel.py), its panels of 8 outputs:
        each panel one contiguous stream, packed in place, so the out_head too. Else oneDNN's
        blocked layout: its kernel works on 16 x 64 blocks; packed that way (AB16b64a) a block is
        4 contiguous KB instead of 64 pieces of 64 bytes in rows 3-12 KB apart, 1.0-1.2x faster
        for 6-40 tokens (bench/README.md). Same logits within float32 rounding. For frozen float32
        models on the CPU only: see freeze(). `panels` overrides the measured choice (the bench
        times both); `into`, room for the panels on huge pages (freeze() gives each layer its part
        of one mapping), else they stay on the weight's own memory."""
        w = self.weight
        if isinstance(w, PackedWeight) or not (
            w.device.type == "cpu" and w.dtype == torch.float32 and not w.requires_grad
        ):
            return False
        if (panel.selected() if panels is None else panels) and w.is_contiguous() and _sole_owner(w):
            flat = panel.pack_(w.detach()) if into is None else panel.pack_into_(w.detach(), into)
            self.weight = PackedWeight(flat, requires_grad=False)
            self.weight.plain_shape = tuple(w.shape)
            return True
        if not ONEDNN_LINEAR or w.numel() * w.element_size() > PACK_MAX_BYTES:
            return False
        packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), None)
        self.weight = PackedWeight(packed, requires_grad=False)
        return True

    def _autocast_weight(self) -> torch.Tensor:
        """The packed weight's plain copy in autocast's dtype (bfloat16: half the float32 bytes),
        made at the fast mode's first call and kept beside the packed weight. Why not unpack for
        good: a frozen model serves every visitor, and one visitor's fast mode would leave
        everybody's float32 requests on the slower plain layout. The same bits as autocast casting
        the plain float32 weight."""
        dtype = torch.get_autocast_dtype("cpu")
        kept = getattr(self, "_autocast_copy", None)
        if kept is None or kept.dtype != dtype:
            with torch.inference_mode(False):  # a normal tensor, as unpack() makes: usable anywhere
                kept = self._autocast_copy = self.weight.plain().to(dtype)  # not a parameter or buffer
        return kept

    def __getstate__(self):  # a copy (the gradient view's) or a pickle leaves the fast mode's copy out
        state = super().__getstate__()
        state.pop("_autocast_copy", None)
        return state

    def unpack(self) -> None:
        self._autocast_copy = None  # the weight may change from here on
        w = self.weight
        if isinstance(w, PackedWeight):
            # A copy, not in place: another request may be reading the packed weight right now.
            with torch.inference_mode(False):  # a normal tensor, which autograd may use later
                self.weight = nn.Parameter(w.plain(), requires_grad=w.requires_grad)

    # A packed weight is an implementation detail: state dicts hold the plain layout, and
    # .to()/.half()/loading a state dict work on the plain weight.
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if isinstance(self.weight, PackedWeight):
            destination[prefix + "weight"] = self.weight.plain()

    def _load_from_state_dict(self, *args, **kwargs):
        self.unpack()
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, recurse=True):
        # Unpack only for a conversion that makes a new tensor (another device or dtype). One that
        # changes nothing (.to("cpu"), .float(), .cpu() on a frozen CPU model) returns its input
        # as is; unpacking there would leave every later pass on the plain layout, ~1.2x slower
        # for the Verdict pass (bench/README.md).
        w = self.weight
        if isinstance(w, PackedWeight):
            probe = torch.empty(0, dtype=w.dtype, device=w.device)
            if fn(probe) is probe:
                try:
                    return super()._apply(fn, recurse)
                except (NotImplementedError, RuntimeError):  # oneDNN's opaque weight: no storage to share
                    pass
            self.unpack()
        return super()._apply(fn, recurse)


class PackedWeight(nn.Parameter):
    """A weight packed for a faster kernel, for inference only: oneDNN's blocked layout (an opaque
    tensor), or LossLens's panels (a flat tensor, so that reading it as a matrix fails loudly).
    A deep copy, made to train (the gradient view), gets the plain layout. GPTModel.requires_grad_(True)
    unpacks; asking the weight itself for gradients is an error."""

    plain_shape: tuple[int, int]  # the panels' [out_features, in_features]

    def plain(self) -> torch.Tensor:
        """A plain [out_features, in_features] copy."""
        return self.to_dense() if self.is_mkldnn else panel.unpacked(self.detach(), *self.plain_shape)

    def requires_grad_(self, requires_grad=True):
        if requires_grad:
            raise RuntimeError(
                "A packed weight takes no gradients: call model.requires_grad_(True), "
                "which unpacks the model's weights first."
            )
        return super().requires_grad_(False)

    def __deepcopy__(self, memo):
        if id(self) not in memo:
            memo[id(self)] = nn.Parameter(self.plain(), self.requires_grad)
        return memo[id(self)]

    def __reduce_ex__(self, protocol):
        # A pickle (torch.save(model)) holds the plain weight, as a deep copy does: the panels are
        # views of one mapping that pickle would write whole for every weight (a 124M model ran a
        # 24 GB machine out of memory), and a flat panel tensor read back as a plain parameter would
        # be fed to the plain path. freeze() the loaded model to pack it again.
        return nn.Parameter(self.plain(), self.requires_grad).__reduce_ex__(protocol)


def _sole_owner(w: torch.Tensor) -> bool:
    """No other tensor shares w's memory (a caller's state dict, a tied layer): packing in place
    would change that tensor too."""
    return w._base is None and panel.unshared(w)


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    # oneDNN sizes its OpenMP team from this thread's setting, which a new thread (a Streamlit
    # script run, a worker) starts at the core count: follow torch's count.
    torch.set_num_threads(torch.get_num_threads())
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")


def _inference(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """No gradient to record, no autocast to apply, float32 throughout: oneDNN's op has neither."""
    return (
        x.dtype == weight.dtype == torch.float32
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and not torch.is_autocast_enabled("cpu")
    )


def build_untrained_model(seed: int = 123, cfg: dict | None = None) -> GPTModel:
    """The book's untrained model: seed, build, eval mode, frozen (safe to share)."""
    torch.manual_seed(seed)
    model = GPTModel(cfg or GPT_CONFIG_124M)
    return freeze(model)


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: inference only, so one copy can serve every session. On an
    x86-64 CPU, each linear layer's weight is packed for a faster kernel (CpuLinear.pack); a weight
    shared with another layer (GPT-2's tied out_head) stays plain, or it would be held twice."""
    model.eval()
    model.requires_grad_(False)
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    layers = [m for m in model.modules() if isinstance(m, CpuLinear) and uses[id(m.weight)] == 1]
    # LossLens's panels go side by side on huge pages (panel.huge_empty): one mapping per model.
    # A part that a layer does not take (oneDNN's, or a plain weight) is never touched, so never held.
    sizes = [-(-m.weight.numel() // panel.ALIGN) * panel.ALIGN for m in layers]  # 64-byte aligned
    arena = panel.huge_empty(sum(sizes)) if layers and panel.selected() else None
    offset = 0
    for layer, size in zip(layers, sizes, strict=True):
        into = None if arena is None else arena[offset : offset + layer.weight.numel()]
        offset += size
        if layer.pack(into=into):
            release_free_memory()  # a freed plain weight or packing buffer, before the next layer
            pause_point()
    return model


def release_free_memory() -> bool:
    """Hand the heap's free pages back to the OS (glibc's malloc_trim); False where there is none.

    Why: packing frees each plain weight after its packed copy is made, and glibc keeps such
    blocks in its heaps. Building eight seeds' models with three kept, a process grew from 2.1 to
    3.0 GB without this and stayed at 2.1 GB with it; trimmed after each layer, a build's peak is
    its final RSS + 9 MB instead of + 190 MB. A call takes ~0.1-0.2 ms."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # another C library (musl): nothing to trim with
        return False
    return True
