"""Metrics to ``metrics.jsonl`` and TensorBoard event files (process 0 only).

Both live in the workdir, local or on a bucket (``tcsm_jax.fs``). On a local workdir
rows are appended as they come. On a bucket (no appends on object stores) rows are
buffered and the file is rewritten on ``flush()`` (the trainer flushes at every eval,
checkpoint and at the end). TensorBoard events are written by tensorboardX into a
local staging folder and copied to ``<workdir>/tensorboard/`` on every ``flush()``, so
``tensorboard --logdir=gs://...`` works without TensorFlow or gcsfs on the trainer;
the staging folder is logged once.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Dict, List

import jax
from absl import logging

from tcsm_jax import fs, strict_json


class MetricWriter:
  """Appends ``{"step": s, **scalars}`` rows to ``metrics.jsonl`` and TensorBoard."""

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.path = fs.join(workdir, "metrics.jsonl")
    self._remote = fs.is_remote(workdir)
    self._pending: List[str] = []
    self._tb = None
    self._tb_local = None
    self._tb_remote = fs.join(workdir, "tensorboard")
    if not self.enabled:
      return
    fs.makedirs(workdir)
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      except ImportError:  # optional dependency
        return
      if self._remote:
        self._tb_local = tempfile.mkdtemp(prefix="tcsm_tensorboard_")
        logging.info("TensorBoard events are staged in %s and copied to %s at every "
                     "flush", self._tb_local, self._tb_remote)
        self._tb = SummaryWriter(self._tb_local)
      else:
        fs.check_inside(self._tb_remote)    # tensorboardX writes here, not through fs
        self._tb = SummaryWriter(os.fspath(self._tb_remote))

  def write(self, step: int, scalars: Dict[str, float]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step)}
    row.update({k: float(v) for k, v in scalars.items()})
    line = strict_json.dumps(row) + "\n"     # a NaN loss is written as null
    if self._remote:
      self._pending.append(line)
    else:
      fs.append_text(self.path, line)
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, float(v), int(step))

  def flush(self) -> None:
    if not self.enabled:
      return
    if self._pending:
      fs.append_text(self.path, "".join(self._pending))
      self._pending = []
    if self._tb is not None:
      self._tb.flush()
      if self._tb_local is not None:
        for name in sorted(os.listdir(self._tb_local)):
          with open(os.path.join(self._tb_local, name), "rb") as f:
            fs.write_bytes_atomic(fs.join(self._tb_remote, name), f.read())

  def close(self) -> None:
    self.flush()
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_jsonl(path) -> List[Dict[str, float]]:
  """All rows of a metrics file (later rows for a step win, as after a resume)."""
  rows = {}
  for line in fs.read_text(path).splitlines():
    if line.strip():
      r = strict_json.nan_for_null(json.loads(line))
      rows[(r["step"], tuple(sorted(r)))] = r
  return sorted(rows.values(), key=lambda r: r["step"])
