"""A visitor's requests: the lesson computations as the app serves them.

A forward pass for a visitor counts as a request, so that a training run or a model build in the
background waits for it (priority.py); a pass over a data set writes each batch's logits into the
last one's memory where the fast plug-in runs (core.fast.reusing_outputs).
"""

from __future__ import annotations

import contextlib

from core.lessons import dataset, loss
from core.serving.frozen import fast_enabled
from core.serving.priority import FOREGROUND


def compute_loss(*args, **kwargs) -> loss.LossResult:
    """core.lessons.loss.compute_loss, counted as a visitor's request."""
    with FOREGROUND.request():
        return loss.compute_loss(*args, **kwargs)


def evaluate_dataset(*args, **kwargs) -> dataset.DatasetLosses:
    """core.lessons.dataset.evaluate_dataset, each batch's logits in the last one's memory."""
    with _reusing_outputs():
        return dataset.evaluate_dataset(*args, **kwargs)


def _reusing_outputs():
    if not fast_enabled():
        return contextlib.nullcontext()
    from core import fast  # the plug-in, as core.serving.frozen installs it

    return fast.reusing_outputs()
