"""Helpers shared by the evaluate and sample binaries."""

import sys

from tcsm_jax.training import checkpoint as ckpt_lib
from tcsm_jax.training import restore


def load_or_exit(workdir, config=None, use_ema=True):
  """``restore.load_run`` with a one-line message instead of a traceback on failure."""
  try:
    return restore.load_run(workdir, config, use_ema=use_ema)
  except (ckpt_lib.CheckpointError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
