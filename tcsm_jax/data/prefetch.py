"""Batches made ahead of the step by a background thread (``train.prefetch``).

``Prefetcher(produce, start, stop, depth)`` calls ``produce(step)`` for ``step = start,
start + 1, ..., stop - 1`` in order on one background thread and keeps up to ``depth``
results waiting; ``get(step)`` hands them out in the same order. The trainer's
``produce`` cuts this host's rows of the global batch (``ChunkSampler.batch``) and
puts them on the devices (``partition.to_global``, which is not a collective, so each
host runs it on its own thread, multi-host safe), so both the host work and the
host-to-device transfer of step ``s + 1`` overlap the devices running step ``s``, also
after the loop blocks on a step's result (logging, eval, checkpoints).

Nothing about the batches changes: ``produce`` is the same pure function of the step,
called for the same steps in the same order, so a run with prefetch trains on exactly
the batches of a run without it (tested bit for bit). ``depth=0`` calls ``produce`` on
the caller's thread (no thread at all).

An exception raised by ``produce`` (a ``DataError`` naming a rotted shard) is raised
by ``get`` of that step, on the caller's thread. ``close()`` (also on leaving a
``with`` block, on an early exit or an error) stops the thread and joins it: nothing
outlives the loop. The thread is a daemon, so a stuck ``produce`` cannot keep the
process alive.

This module imports nothing else of the data package, and no JAX.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, Optional

_POLL = 0.05          # seconds between checks of the stop flag while the queue is full


class _Failed:

  def __init__(self, exc: BaseException):
    self.exc = exc


class Prefetcher:
  """``produce(step)`` for consecutive steps, ``depth`` ahead on a background thread.

  Args:
    produce: step -> item (a pure function of the step).
    start, stop: the steps ``[start, stop)`` that will be asked for, in order.
    depth: items made ahead (0: none, ``produce`` runs inside ``get``).
    name: the thread's name (shown by profilers and ``threading.enumerate()``).
  """

  def __init__(self, produce: Callable[[int], Any], start: int, stop: int,
               depth: int = 2, name: str = "tcsm-prefetch"):
    if depth < 0:
      raise ValueError(f"prefetch depth must be >= 0, got {depth}")
    self.produce, self.start, self.stop, self.depth = produce, start, stop, depth
    self._next = start
    self._closed = False
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None
    if depth and stop > start:
      self._queue: "queue.Queue[Any]" = queue.Queue(maxsize=depth)
      self._thread = threading.Thread(target=self._run, name=name, daemon=True)
      self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=_POLL)
        return True
      except queue.Full:
        continue
    return False

  def _run(self) -> None:
    for step in range(self.start, self.stop):
      if self._stop.is_set():
        return
      try:
        item = self.produce(step)
      except BaseException as e:  # pylint: disable=broad-except  (raised by get)
        self._put(_Failed(e))
        return
      if not self._put(item):
        return

  def get(self, step: int):
    """The item of ``step`` (the steps must be asked for in order)."""
    if self._closed:
      raise ValueError("the prefetcher is closed")
    if step != self._next:
      raise ValueError(f"prefetcher asked for step {step}, expected {self._next}")
    if not self.start <= step < self.stop:
      raise ValueError(f"step {step} is outside [{self.start}, {self.stop})")
    self._next += 1
    if self._thread is None:
      return self.produce(step)
    while True:
      try:
        item = self._queue.get(timeout=1.0)
        break
      except queue.Empty:
        if not self._thread.is_alive() and self._queue.empty():
          raise RuntimeError("the prefetch thread ended without a batch")  # a bug
    if isinstance(item, _Failed):
      self.close()
      raise item.exc
    return item

  def __iter__(self):
    for step in range(self._next, self.stop):
      yield self.get(step)

  def close(self, timeout: float = 60.0) -> None:
    """Stops and joins the thread; the items made ahead are dropped. A ``produce``
    call in progress is waited for (up to ``timeout`` seconds; the thread is a
    daemon)."""
    self._closed = True
    self._stop.set()
    t, self._thread = self._thread, None
    if t is None:
      return
    deadline = time.monotonic() + timeout
    while t.is_alive() and time.monotonic() < deadline:
      try:                      # unblock a put waiting on a full queue
        while True:
          self._queue.get_nowait()
      except queue.Empty:
        pass
      t.join(timeout=_POLL)

  @property
  def alive(self) -> bool:
    return self._thread is not None and self._thread.is_alive()

  def __enter__(self) -> "Prefetcher":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
