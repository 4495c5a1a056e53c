"""Orbax checkpoints of the train state plus a JSON record of the run.

Orbax writes each step into a temporary directory and renames it when every host has
finished (an atomic commit), so a crash mid-save never leaves a half-written step that
looks valid. Saving is asynchronous: training continues while the arrays are written.
On restore, a step that fails to load (corrupt or incompatible files) is reported and
the next older step is tried; if none loads, ``CheckpointError`` names the directory.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

import jax
import orbax.checkpoint as ocp
from absl import logging

from tcsm_jax import errors


class CheckpointError(errors.UserError, ValueError):
  """No usable checkpoint (corrupt, incompatible or missing)."""


class Checkpointer:
  """Thin wrapper over ``ocp.CheckpointManager`` for ``(state, meta)`` pairs."""

  def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                        enable_async_checkpointing=async_save,
                                        create=True)
    self._mngr = ocp.CheckpointManager(self.directory, options=opts)

  def all_steps(self):
    return sorted(self._mngr.all_steps())

  def latest_step(self) -> Optional[int]:
    return self._mngr.latest_step()

  def save(self, step: int, state, meta: Dict[str, Any], force: bool = True) -> None:
    self._mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)

  def restore(self, abstract_state, step: Optional[int] = None) -> Tuple[Any, Dict, int]:
    """Restores the newest loadable step (or ``step``) into ``abstract_state``'s layout.

    Args:
      abstract_state: pytree of ``jax.ShapeDtypeStruct`` with shardings.
      step: a specific step; default newest.
    Returns:
      ``(state, meta, step)``.
    Raises:
      CheckpointError: when no step can be restored.
    """
    steps = [step] if step is not None else self.all_steps()[::-1]
    if not steps:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    errors = []
    for s in steps:
      try:
        out = self._mngr.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        if errors:
          logging.warning("restored step %d after skipping unreadable steps: %s", s,
                          "; ".join(errors))
        return out.state, out.meta, s
      except Exception as e:  # pylint: disable=broad-except
        msg = f"step {s}: {type(e).__name__}: {str(e)[:300]}"
        logging.error("checkpoint %s is corrupt or incompatible (%s)", self.directory, msg)
        errors.append(msg)
    raise CheckpointError(
        f"no checkpoint in {self.directory} could be restored (corrupt or incompatible "
        f"with this config): " + " | ".join(errors))

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()


def abstract_like(state, shardings):
  """``ShapeDtypeStruct`` tree with the given shardings (restore target)."""
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
