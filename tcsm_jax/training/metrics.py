"""Metrics to a JSONL file and TensorBoard event files (process 0 only)."""

from __future__ import annotations

import json
import os
from typing import Dict

import jax


class MetricWriter:
  """Appends ``{"step": s, **scalars}`` lines to ``metrics.jsonl`` and TensorBoard."""

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      if tensorboard:
        try:
          from tensorboardX import SummaryWriter
          self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        except ImportError:  # optional dependency
          self._tb = None

  def write(self, step: int, scalars: Dict[str, float]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step)}
    row.update({k: float(v) for k, v in scalars.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, float(v), int(step))

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_jsonl(path: str):
  """All rows of a metrics file (later rows for a step win, as after a resume)."""
  rows = {}
  with open(path) as f:
    for line in f:
      if line.strip():
        r = json.loads(line)
        rows[(r["step"], tuple(sorted(r)))] = r
  return sorted(rows.values(), key=lambda r: r["step"])
