"""Semi-autoregressive generation past the training length (MDLM's long samples).

A sequence of ``length`` tokens is generated in windows of the model's ``block_len``:
window ``k`` ends at ``block_len + k (block_len - overlap)`` (the last one is shifted
left to end at ``length``), and every position of a window that is already known (a
prompt, a suffix, or tokens of the previous window: its last ``overlap`` tokens) is
clamped, so each block is conditioned on the end of the one before. A window whose
positions are all known is skipped: a prompt longer than one block works. With an
end-of-document id, generation stops once every row has produced it outside the
clamped positions; ``truncate_at_eos`` cuts each row after its first one.

The loop runs on the host over one compiled block sampler
``sample_block(key, clamp_tokens [b, block_len], clamp_mask [b, block_len]) ->
tokens [b, block_len]`` (``jit_sampler`` with the clamp arrays as arguments).
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import numpy as np


def windows(length: int, block_len: int, overlap: int):
  """``[(start, end)]`` of the windows covering ``[0, length)``."""
  if block_len < 1 or not 0 <= overlap < block_len:
    raise ValueError(f"need block_len >= 1 and 0 <= overlap < block_len, got "
                     f"block_len={block_len}, overlap={overlap}")
  if length < 1:
    raise ValueError(f"length must be >= 1, got {length}")
  if length <= block_len:
    return [(0, length)]
  out, end = [], block_len
  while True:
    end = min(end, length)
    out.append((end - block_len, end))
    if end == length:
      return out
    end += block_len - overlap


def generate(key, sample_block: Callable, batch: int, length: int, block_len: int,
             overlap: int, clamp_tokens=None, clamp_mask=None,
             eos_id: Optional[int] = None):
  """Generates ``[batch, length]`` tokens block by block (module docstring).

  Args:
    key: PRNG key (block ``k`` uses ``fold_in(key, k)``).
    sample_block: the block sampler (module docstring); the last window may be shorter
      than ``block_len`` only when ``length < block_len``.
    clamp_tokens, clamp_mask: ``[batch, length]`` prompt / infilling clamps.
    eos_id: end-of-document token (``None``: none).
  Returns:
    ``(tokens [batch, length] int32, info)``: ``info['blocks']`` sampler calls made,
    ``info['stopped_at_eos']`` whether generation stopped early (positions after the
    stop are filled with ``eos_id``).
  """
  out = np.zeros((batch, length), np.int32)
  known = np.zeros((batch, length), bool)
  if clamp_mask is not None:
    known[:] = np.asarray(clamp_mask, bool)
    out[known] = np.asarray(clamp_tokens, np.int32)[known]
  given = known.copy()
  done = np.zeros(batch, bool)
  blocks, stopped = 0, False
  for k, (w0, w1) in enumerate(windows(length, block_len, overlap)):
    if known[:, w0:w1].all():
      continue
    tokens = np.asarray(sample_block(jax.random.fold_in(key, k), out[:, w0:w1],
                                     known[:, w0:w1]), np.int32)
    new = ~known[:, w0:w1]
    out[:, w0:w1] = np.where(new, tokens, out[:, w0:w1])
    known[:, w0:w1] = True
    blocks += 1
    if eos_id is not None:
      done |= ((tokens == eos_id) & ~given[:, w0:w1]).any(-1)
      if done.all() and w1 < length:
        out[:, w1:] = np.where(given[:, w1:], out[:, w1:], eos_id)
        stopped = True
        break
  return out, {"blocks": blocks, "stopped_at_eos": stopped}


def truncate_at_eos(tokens, eos_id: int, keep_from: int = 0):
  """Per row, the tokens before the first ``eos_id`` at or after ``keep_from``."""
  rows = []
  for row in np.asarray(tokens):
    hits = np.nonzero(row[keep_from:] == eos_id)[0]
    rows.append(row[:keep_from + hits[0]] if len(hits) else row)
  return rows
