"""Frozen models shared by every visitor: a few kept, one built at a time, in arrival order.

Building an untrained 124M model takes seconds of CPU; a storm of new seeds would otherwise
build ten at once, stall everyone and hold ten models in memory. Here a request for a kept model
returns at once, never behind the queue; each waiting build learns how many are ahead of it;
builds run one at a time on a builder thread at lower OS priority, and each part of a build
starts only in a quiet moment (priority.pausing), so visitors whose model is kept keep the CPU;
and pinned models (the book's) are never evicted, so a storm cannot make everyone else wait for a
rebuild of the default.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable
from concurrent.futures import ThreadPoolExecutor

import torch.nn as nn

from core.serving.frozen import building, freeze
from core.serving.priority import FOREGROUND, lower_thread_priority, pausing

WAIT_POLL_S = 0.5  # how often a waiting request hears its place in the queue
BUILD_NICE = 10  # the builder thread's nice value: visitors' requests go first
BUILD_PAUSE_S = 10.0  # at most this long a build waits for busy visitors, in all its parts
BUILD_QUIET_S = 0.5  # a part of a build starts once no visitor's request has run for this long


def describe_wait(what: str, ahead: int) -> str:
    """What a waiting visitor reads: why they wait, for how many, and what to do."""
    requests = "request" if ahead == 1 else "requests"
    return (
        f"{what}; {ahead} {requests} ahead of you. This server builds one model at a time, in the pauses "
        "between other visitors' requests, so that every visitor's views stay quick; yours starts as "
        "soon as those are done. A seed someone already uses (123 is the book's) needs no build."
    )


class ModelPool:
    """`size` models kept besides the `pinned` keys; a build first evicts the least recently used
    unpinned model, so at most len(pinned) + size models are ever in memory, a build included."""

    def __init__(
        self,
        load: Callable[..., object],
        size: int = 2,
        pinned: Collection[tuple] = (),
        nice: int = BUILD_NICE,
        pause_s: float = BUILD_PAUSE_S,
    ):
        self._load, self._size, self._pinned, self._pause_s = load, size, set(pinned), pause_s
        self._models: OrderedDict[Hashable, object] = OrderedDict()
        self._queue: list[Hashable] = []  # keys being built (first) or waiting, in arrival order
        self._cond = threading.Condition()
        self._builder = ThreadPoolExecutor(1, "losslens-model-build", lower_thread_priority, (nice,))

    def kept(self, *key) -> bool:
        with self._cond:
            return key in self._models

    def waiting(self) -> int:
        """Builds running or queued now."""
        with self._cond:
            return len(self._queue)

    def forget(self, match: Callable[[tuple], bool]) -> None:
        with self._cond:
            for key in [k for k in self._models if match(k)]:
                del self._models[key]

    def _make_room(self, keep: int) -> None:
        """Evict the least recently used unpinned models until `keep` are left (a model a request
        still holds is freed when that request ends)."""
        with self._cond:
            unpinned = [k for k in self._models if k not in self._pinned]
            for k in unpinned[: max(0, len(unpinned) - keep)]:
                del self._models[k]

    def get(self, *key, on_wait: Callable[[int], None] | None = None):
        """The model for `key` (the arguments of `load`), built if needed after those ahead.

        on_wait(ahead) is called (outside the lock) while this request waits, with the number of
        builds ahead of it; it is not called when the model is kept or nobody is ahead.
        """
        with self._cond:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            ticket = object()
            self._queue.append(ticket)
        with FOREGROUND.waiting():  # a waiting request is not busy: builds need not wait for it
            return self._wait_and_build(key, ticket, on_wait)

    def _wait_and_build(self, key: tuple, ticket: object, on_wait: Callable[[int], None] | None):
        try:
            while True:
                with self._cond:
                    if key in self._models:  # built by a request ahead of this one
                        self._models.move_to_end(key)
                        return self._models[key]
                    ahead = self._queue.index(ticket)
                    if ahead == 0:
                        break
                if on_wait:
                    on_wait(ahead)
                with self._cond:
                    if self._queue.index(ticket) == ahead:
                        self._cond.wait(WAIT_POLL_S)
            if key not in self._pinned:
                self._make_room(self._size - 1)
            # The lock is not held: kept models stay served meanwhile.
            model = self._builder.submit(self._build, key).result()
            with self._cond:
                self._models[key] = model
                self._models.move_to_end(key)
                self._make_room(self._size)
                return model
        finally:
            with self._cond:
                self._queue.remove(ticket)
                self._cond.notify_all()

    def _build(self, key: tuple):
        # Every module registered on this thread is a point to pause at, the plug-in's swaps too.
        with pausing(FOREGROUND.shared(), self._pause_s, BUILD_QUIET_S), building():
            model = self._load(*key)
            return freeze(model) if isinstance(model, nn.Module) else model
