"""Fast equivalents of the book's LayerNorm, GELU, MultiHeadAttention and TransformerBlock.

Each computes the book module's function (within float32 rounding) with fused kernels: torch's
layer_norm, tanh-GELU and scaled_dot_product_attention, and, where every linear layer of a block
is packed in LossLens's panels, one block-level pass on that kernel. Each takes over the book
module's parameters (`from_book`), and a deep copy is the book's module again (to train).
"""

from __future__ import annotations

import copy
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.book import model as book
from core.fast import panel
from core.fast.linear import PackedLinear

# Up to this b * num_tokens^2, attention runs on one thread: a few tokens' attention is a few
# microseconds of work, which waking a second thread only slows (docs/performance.md).
ONE_THREAD_ATTENTION = 128


def _book_copy(module: nn.Module, book_class: type, memo: dict, drop=()) -> nn.Module:
    """A deep copy of `module` as `book_class`, without the attributes in `drop`."""
    new = book_class.__new__(book_class)
    memo[id(module)] = new
    for key, value in module.__dict__.items():
        if key not in drop:
            new.__dict__[key] = copy.deepcopy(value, memo)
    return new


class FastLayerNorm(book.LayerNorm):
    """The book's (x - mean) / sqrt(biased var + eps) * scale + shift as torch's one op."""

    @classmethod
    def from_book(cls, norm: book.LayerNorm) -> FastLayerNorm:
        new = cls.__new__(cls)
        new.__dict__.update(norm.__dict__)  # the same parameters, eps and mode
        return new

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], self.scale, self.shift, self.eps)

    def __deepcopy__(self, memo):
        return _book_copy(self, book.LayerNorm, memo)


class FastGELU(book.GELU):
    """The book's 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) as torch's one op."""

    def forward(self, x):
        return F.gelu(x, approximate="tanh")

    def __deepcopy__(self, memo):
        return _book_copy(self, book.GELU, memo)


class FastFeedForward(book.FeedForward):
    """The book's FeedForward; on LossLens's kernel the GELU is applied as the first layer's
    outputs are stored (the same bits as the block's direct path)."""

    @classmethod
    def from_book(cls, ff: book.FeedForward) -> FastFeedForward:
        new = cls.__new__(cls)
        new.__dict__.update(ff.__dict__)
        return new

    def forward(self, x):
        if self.on_panels(x):
            first, _, last = self.layers
            return last(panel.linear(x, first.weight, first.bias, first.out_features, gelu=True))
        return self.layers(x)

    def on_panels(self, x) -> bool:
        first, activation, last = self.layers
        return isinstance(activation, book.GELU) and all(
            isinstance(m, PackedLinear) and m.on_panels(x) for m in (first, last)
        )

    def __deepcopy__(self, memo):
        return _book_copy(self, book.FeedForward, memo)


class FastAttention(nn.Module):
    """The book's MultiHeadAttention with its softmax(QK^T / sqrt(d)) V as one fused kernel, which
    masks causally by itself: no mask buffer is held (4 MB per layer at GPT-2's 1024 tokens)."""

    @classmethod
    def from_book(cls, att: book.MultiHeadAttention) -> FastAttention:
        new = cls()
        for name in ("d_out", "num_heads", "head_dim", "training"):
            setattr(new, name, getattr(att, name))
        new.context_length = att.mask.shape[0]
        for name, child in att.named_children():
            setattr(new, name, child)
        return new

    def forward(self, x):
        b, num_tokens, _ = x.shape
        if self.joinable(x):  # the three projections in one kernel call, each exactly as alone
            queries, keys, values = self.qkv(x).split(self.d_out, dim=-1)
        else:
            keys, queries, values = self.W_key(x), self.W_query(x), self.W_value(x)
        heads = [
            t.view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
            for t in (queries, keys, values)
        ]
        return self.out_proj(self.attend(*heads))

    def attend(self, queries, keys, values):
        """The heads' causal attention with dropout, combined: [b, num_tokens, d_out]."""
        b, _, num_tokens, _ = queries.shape
        threads = torch.get_num_threads()
        alone = not self.training and threads > 1 and b * num_tokens * num_tokens <= ONE_THREAD_ATTENTION
        if alone:  # the same bits on any thread count: each head's rows are one thread's work
            torch.set_num_threads(1)
        try:
            dropout = self.dropout.p if self.training else 0.0
            context_vec = F.scaled_dot_product_attention(
                queries, keys, values, dropout_p=dropout, is_causal=True
            )
        finally:
            if alone:
                torch.set_num_threads(threads)
        return context_vec.transpose(1, 2).reshape(b, num_tokens, self.d_out)

    def joinable(self, x) -> bool:
        """Whether the query, key and value weights lie side by side in LossLens's panels, so
        that they form one packed [3 d_out, d_in] weight for x."""
        layers = (self.W_query, self.W_key, self.W_value)
        if not all(isinstance(layer, PackedLinear) and layer.on_panels(x) for layer in layers):
            return False
        end = layers[0].weight.data_ptr()
        for layer in layers:
            n, k = layer.weight.plain_shape
            if layer.weight.data_ptr() != end or n % panel.PANEL or k != x.shape[-1]:
                return False
            if (layer.bias is None) != (layers[0].bias is None):
                return False
            end += n * k * 4
        return True

    def qkv(self, x):
        """[queries | keys | values] from one call of LossLens's kernel (where joinable(x))."""
        layers = [self._modules[name]._parameters for name in ("W_query", "W_key", "W_value")]
        bias = None if layers[0]["bias"] is None else torch.cat([layer["bias"] for layer in layers])
        return panel.linear(x, layers[0]["weight"], bias, 3 * self.d_out)

    # State dicts keep the book's keys: the mask is written as the book holds it and not read back.
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        n = self.context_length
        destination[prefix + "mask"] = torch.triu(torch.ones(n, n), diagonal=1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "mask", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def __deepcopy__(self, memo):
        new = _book_copy(self, book.MultiHeadAttention, memo, drop=("context_length",))
        n = self.context_length
        new.register_buffer("mask", torch.triu(torch.ones(n, n), diagonal=1))
        return new


class FastBlock(book.TransformerBlock):
    """The book's TransformerBlock; where all its linear layers run LossLens's kernel, forward
    is one pass on it: the same ops in the same order, without the module calls in between, the
    GELU applied and the shortcuts added as the kernel stores its outputs."""

    @classmethod
    def from_book(cls, block: book.TransformerBlock) -> FastBlock:
        new = cls.__new__(cls)
        new.__dict__.update(block.__dict__)
        new.__dict__.pop("_panels", None)
        return new

    def remember_panels(self) -> bool:
        """Check once whether the block can run on the panels and keep weak references to what was
        checked (`_panels`): asked in full per call, the checks would cost more than the module
        calls they save. A part replaced, unpacked or loaded since: the module path."""
        self.__dict__.pop("_panels", None)
        att, ff = self._modules["att"], self._modules["ff"]._modules["layers"]
        probe = torch.zeros(1, 1, att.W_query.in_features)
        norms = (self._modules["norm1"], self._modules["norm2"])
        layers = (att.W_query, att.W_key, att.W_value, att.out_proj, ff[0], ff[2])
        if not (
            type(att) is FastAttention
            and all(type(n) is FastLayerNorm for n in norms)
            and isinstance(ff[1], book.GELU)
            and all(isinstance(m, PackedLinear) and m.on_panels(probe) for m in layers)
            and att.joinable(probe)
        ):
            return False
        self.__dict__["_panels"] = tuple(weakref.ref(o) for o in self._parts())
        return True

    def _parts(self) -> tuple:
        """The objects the direct path reads: the modules it runs itself and the packed weights."""
        m = self._modules
        att, ff = m["att"], m["ff"]._modules["layers"]._modules
        a = att._modules
        layers = (a["W_query"], a["W_key"], a["W_value"], a["out_proj"], ff["0"], ff["2"])
        return (
            att,
            m["norm1"],
            m["norm2"],
            ff["1"],
            *layers,
            *(layer._parameters["weight"] for layer in layers),
        )

    def forward(self, x):
        kept = self.__dict__.get("_panels")
        if (
            kept is None
            or self.training
            or x.dtype is not torch.float32
            or (torch.is_grad_enabled() and x.requires_grad)
            or torch.is_autocast_enabled("cpu")
        ):
            return super().forward(x)
        parts = self._parts()
        # a part replaced, unpacked or loaded since the check was kept
        if any(part is not ref() for part, ref in zip(parts, kept, strict=False)):
            return super().forward(x)
        att, norm1, norm2, _, _, _, _, out_proj, first, last = parts[:10]
        return self._forward_on_panels(x, att, norm1, norm2, out_proj, first, last)

    def _forward_on_panels(self, x, att, norm1, norm2, out_proj, first, last):
        b, num_tokens, _ = x.shape
        qkv = att.qkv(F.layer_norm(x, x.shape[-1:], norm1.scale, norm1.shift, norm1.eps))
        # [b, num_tokens, 3 num_heads, head_dim] -> [b, 3 num_heads, num_tokens, head_dim], split
        # into queries, keys and values: the views that the book's attention makes
        heads = qkv.view(b, num_tokens, 3 * att.num_heads, att.head_dim).transpose(1, 2)
        context_vec = att.attend(*heads.split(att.num_heads, dim=1))
        p = out_proj._parameters
        x = panel.linear(context_vec, p["weight"], p["bias"], out_proj.out_features, add=x)
        h = F.layer_norm(x, x.shape[-1:], norm2.scale, norm2.shift, norm2.eps)
        p = first._parameters
        hidden = panel.linear(h, p["weight"], p["bias"], first.out_features, gelu=True)
        p = last._parameters
        return panel.linear(hidden, p["weight"], p["bias"], last.out_features, add=x)

    def __getstate__(self):  # a pickle asks again (accelerate): its weights are other objects
        state = super().__getstate__()
        state.pop("_panels", None)
        return state

    def __deepcopy__(self, memo):
        return _book_copy(self, book.TransformerBlock, memo, drop=("_panels",))
