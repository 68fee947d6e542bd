"""Knowledge distillation from a frozen teacher (Hinton et al. 2015), for pruning runs.

Why: a model being pruned loses capacity step by step, and the unpruned model it started from is
a better target than the hard labels alone: its soft outputs say which wrong classes are nearly
right, which carries more information per example. That matters most when the fine-tuning
budget is short, which is the usual case for a user pruning their own model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Distillation:
    """Mix a task loss with ``weight * T^2 * KL(teacher_T || student_T)``.

    ``teacher`` is evaluated in eval mode without gradients; the ``T^2`` factor keeps the soft
    term's gradient scale independent of the temperature (as in the original paper).
    """

    teacher: nn.Module
    weight: float = 0.5
    temperature: float = 4.0

    @classmethod
    def frozen_copy(cls, model: nn.Module, weight: float, temperature: float) -> "Distillation":
        """A teacher taken from ``model`` as it is now, frozen, so later training cannot move it."""
        teacher = copy.deepcopy(model).eval()
        teacher.requires_grad_(False)
        return cls(teacher, weight, temperature)

    def mix(self, task_loss: torch.Tensor, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``(1 - weight) * task_loss + weight * T^2 * KL`` for the batch ``x``."""
        with torch.no_grad():
            target = self.teacher(x)
        t = self.temperature
        kl = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(target / t, dim=1),
                      reduction="batchmean", log_target=True)
        return (1 - self.weight) * task_loss + self.weight * t * t * kl
