"""Hard masks for masked retraining: pruned weights and their gradients stay exactly zero.

Three mechanisms, because each alone leaks: a gradient hook zeroes the gradient of pruned
entries (so the optimizer never sees a non-zero there), and re-applying the mask after every
optimizer step catches what the gradient cannot (weight decay, momentum built up earlier, an
optimizer that adds noise). Together they make "pruned" an invariant, which tests check.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..errors import InputError
from .spec import spec_masks


class MaskEnforcer:
    """Keep a model's pruned weights at exactly zero during training.

    Use ``after_step`` as the training loop's ``after_step`` callback; call ``remove()`` (or use
    as a context manager) when training ends to unregister the gradient hooks.
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor]):
        modules = dict(model.named_modules())
        self._params: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        self._hooks = []
        for name, mask in masks.items():
            m = modules.get(name)
            if m is None or not hasattr(m, "weight"):
                raise InputError(f"mask for layer {name!r}: no such layer with a weight in the model")
            w = m.weight
            if tuple(mask.shape) != tuple(w.shape):
                raise InputError(f"mask for layer {name!r} has shape {tuple(mask.shape)}, "
                                 f"weight has {tuple(w.shape)}")
            mask = mask.to(device=w.device, dtype=w.dtype)
            self._params.append((w, mask))
            self._hooks.append(w.register_hook(lambda g, mask=mask: g * mask))
        self.apply()

    @classmethod
    def from_spec(cls, model: nn.Module, spec: Mapping) -> "MaskEnforcer":
        return cls(model, spec_masks(spec))

    def apply(self) -> None:
        """Zero every pruned weight in place."""
        with torch.no_grad():
            for w, mask in self._params:
                w.mul_(mask)

    def after_step(self, model: nn.Module | None = None) -> None:
        """Training-loop callback: re-apply the masks after the optimizer step."""
        self.apply()

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def __enter__(self) -> "MaskEnforcer":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
