"""PackedLinear: an nn.Linear of a frozen model with its weight packed for a faster CPU kernel.

A frozen model's weight is packed once (`from_linear`): in LossLens's panels where that kernel
measured faster (panel.selected), else in oneDNN's blocked layout, else it stays plain and runs
oneDNN's or torch's linear. Packing is an implementation detail: state dicts, deep copies and
pickles hold the plain weight, and a deep copy is a plain nn.Linear again (to train).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.fast import onednn, panel
from core.fast.memory import unshared


class PackedWeight(nn.Parameter):
    """A weight packed for a faster kernel, for inference only: oneDNN's blocked layout (an opaque
    tensor), or LossLens's panels (a flat tensor, so that reading it as a matrix fails loudly)."""

    plain_shape: tuple[int, int]  # the panels' [out_features, in_features]

    def plain(self) -> torch.Tensor:
        """A plain [out_features, in_features] copy."""
        return self.to_dense() if self.is_mkldnn else panel.unpacked(self.detach(), *self.plain_shape)

    def requires_grad_(self, requires_grad=True):
        if requires_grad:
            raise RuntimeError(
                "A packed weight takes no gradients: train copy.deepcopy(model), which holds the "
                "book's plain modules."
            )
        return super().requires_grad_(False)

    def __deepcopy__(self, memo):
        if id(self) not in memo:
            memo[id(self)] = nn.Parameter(self.plain(), self.requires_grad)
        return memo[id(self)]

    def __reduce_ex__(self, protocol):
        # A pickle holds the plain weight, as a deep copy does: the panels are views of one mapping
        # that pickle would otherwise write whole for every weight.
        return nn.Parameter(self.plain(), self.requires_grad).__reduce_ex__(protocol)


def inference(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """No gradient to record, no autocast to apply, float32 throughout: the kernels have neither."""
    return (
        x.dtype == weight.dtype == torch.float32
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and not torch.is_autocast_enabled("cpu")
    )


class PackedLinear(nn.Linear):
    """nn.Linear (same parameters) computing x @ W^T + b on a packed weight where it can."""

    def __init__(self, in_features, out_features, bias=True, contiguous_output=True, device=None):
        super().__init__(in_features, out_features, bias=bias, device=device)
        # The out_head hands over the (W @ x^T)^T view: copying [tokens, 50257] logits costs more
        # than it saves, and the loss steps read either layout.
        self.contiguous_output = contiguous_output

    @classmethod
    def from_linear(cls, layer: nn.Linear, contiguous_output=True, pack=True, panels=None, into=None):
        """`layer` with its own parameters (no copy), its weight packed where possible (`pack`)."""
        new = cls(layer.in_features, layer.out_features, layer.bias is not None, contiguous_output, "meta")
        new.weight, new.bias, new.training = layer.weight, layer.bias, layer.training
        if pack:
            new.pack(panels, into)
        return new

    def forward(self, x):
        weight = self.weight
        if isinstance(weight, PackedWeight):
            if inference(x, weight):
                if weight.is_mkldnn:
                    return onednn.linear(x, weight, self.bias)
                return panel.linear(x, weight, self.bias, self.out_features)
            if torch.is_autocast_enabled("cpu") and not (torch.is_grad_enabled() and x.requires_grad):
                weight = self._autocast_weight()  # the app's fast mode, on a bfloat16 copy
            else:
                self.unpack()  # gradients need the plain layout: back to it for good
                weight = self.weight
        if x.device.type != "cpu":
            return F.linear(x, weight, self.bias)
        if onednn.AVAILABLE and inference(x, weight):
            return onednn.linear(x, weight, self.bias)
        if self.contiguous_output:
            return F.linear(x, weight, self.bias)
        x2d = x.reshape(-1, self.in_features).t()
        y = torch.mm(weight, x2d) if self.bias is None else torch.addmm(self.bias[:, None], weight, x2d)
        return y.t().reshape(*x.shape[:-1], self.out_features)

    def on_panels(self, x: torch.Tensor) -> bool:
        """Whether forward(x) runs LossLens's kernel on a packed weight."""
        w = self.weight
        return isinstance(w, PackedWeight) and not w.is_mkldnn and inference(x, w)

    def pack(self, panels: bool | None = None, into: torch.Tensor | None = None) -> bool:
        """Hold the weight in a faster kernel's layout, in place of the plain one: LossLens's
        panels (packed in place, or into `into`, the layer's part of a huge-page arena), or
        oneDNN's blocked layout. `panels` overrides the measured choice (the benches time both).
        Only a frozen float32 CPU weight that no other tensor shares is packed."""
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
        packed = onednn.reorder(w)
        if packed is None:
            return False
        self.weight = PackedWeight(packed, requires_grad=False)
        return True

    def _autocast_weight(self) -> torch.Tensor:
        """The packed weight's plain copy in autocast's dtype, made at the fast mode's first call and
        kept beside the packed one: a shared model stays packed for everybody's float32 requests."""
        dtype = torch.get_autocast_dtype("cpu")
        kept = getattr(self, "_autocast_copy", None)
        if kept is None or kept.dtype != dtype:
            with torch.inference_mode(False):  # a normal tensor, usable anywhere
                kept = self._autocast_copy = self.weight.plain().to(dtype)  # not a parameter or buffer
        return kept

    def unpack(self) -> None:
        self._autocast_copy = None  # the weight may change from here on
        w = self.weight
        if isinstance(w, PackedWeight):
            # A copy, not in place: another request may be reading the packed weight right now.
            with torch.inference_mode(False):
                self.weight = nn.Parameter(w.plain(), requires_grad=w.requires_grad)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if isinstance(self.weight, PackedWeight):
            destination[prefix + "weight"] = self.weight.plain()

    def _load_from_state_dict(self, *args, **kwargs):
        self.unpack()
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, recurse=True):
        # Unpack only for a conversion that makes a new tensor (another device or dtype): one that
        # changes nothing (.to("cpu"), .float()) returns its input, and the packed weight stays.
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

    def __deepcopy__(self, memo):
        """A plain nn.Linear with copies of the plain weights: what a copy is made for is training."""
        new = nn.Linear(self.in_features, self.out_features, self.bias is not None, device="meta")
        memo[id(self)] = new
        new.training = self.training
        new.weight = copy.deepcopy(self.weight, memo)
        new.bias = None if self.bias is None else copy.deepcopy(self.bias, memo)
        return new

    def __getstate__(self):  # a pickle leaves the fast mode's copy out
        state = super().__getstate__()
        state.pop("_autocast_copy", None)
        return state


def _sole_owner(w: torch.Tensor) -> bool:
    """No other tensor shares w's memory (a caller's state dict, a tied layer): packing in place
    would change that tensor too."""
    return w._base is None and unshared(w)
