"""Keeps the experiment log readable: library INFO chatter (orbax, XLA) is dropped."""

import logging as py_logging
import os
import sys

from absl import logging

from tcsm_jax import fs

_NOISY = ("orbax", "jax/_src", "etils", "tensorstore", "xla_bridge")


class _DropLibraryInfo(py_logging.Filter):
  """Drops libraries' INFO records; a library's error about a disk that refused a
  write (orbax's background threads log each with its traceback) keeps one line:
  the binary's ``error:`` line says what happened (``TCSM_TRACEBACK=1``: traceback)."""

  def filter(self, record):
    if record.levelno >= py_logging.WARNING:
      if _refused(record) and os.environ.get("TCSM_TRACEBACK", "") in ("", "0"):
        if "asyncio" in record.pathname:
          return False      # "Task exception was never retrieved": the same failure
        record.exc_info, record.exc_text = None, None
      return True
    return not any(n in record.pathname for n in _NOISY)


def _refused(record) -> bool:
  exc = record.exc_info[1] if record.exc_info else None
  return (exc is not None and any(n in record.pathname for n in _NOISY + ("asyncio",))
          and fs.refused_errno(exc) is not None)


def _quiet_unraisable(unraisable) -> None:
  """Drops tensorstore's callbacks into the event loop orbax closed after a failed
  save ("Event loop is closed"); everything else goes to Python's hook."""
  if isinstance(unraisable.exc_value, RuntimeError) and str(
      unraisable.exc_value) == "Event loop is closed":
    return
  sys.__unraisablehook__(unraisable)


def quiet_libraries() -> None:
  handler = logging.get_absl_handler()
  handler.addFilter(_DropLibraryInfo())
  sys.unraisablehook = _quiet_unraisable
  logging.set_verbosity(logging.INFO)
