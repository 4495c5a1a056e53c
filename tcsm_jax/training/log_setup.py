"""Keeps the experiment log readable: library INFO chatter (orbax, XLA) is dropped."""

import logging as py_logging

from absl import logging

_NOISY = ("orbax", "jax/_src", "etils", "tensorstore", "xla_bridge")


class _DropLibraryInfo(py_logging.Filter):

  def filter(self, record):
    if record.levelno >= py_logging.WARNING:
      return True
    return not any(n in record.pathname for n in _NOISY)


def quiet_libraries() -> None:
  handler = logging.get_absl_handler()
  handler.addFilter(_DropLibraryInfo())
  logging.set_verbosity(logging.INFO)
