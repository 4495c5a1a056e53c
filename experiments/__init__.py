"""The command-line binaries (``python -m experiments.<name>``).

Run as ``python -m experiments.X``, this package is imported before the binary and its
heavy imports (jax, flax, orbax: seconds). A SIGTERM that comes that early exits at once
with status 143 and the same one line ``experiments.cli`` prints later
(``terminated (SIGTERM)``); ``cli.run`` then installs its own handler. Imported any
other way (tests, notebooks, ``import experiments.common``), nothing is installed.
"""

import os as _os
import signal as _signal
import sys as _sys
import threading as _threading


def _terminated_while_starting(signum, frame):  # pylint: disable=unused-argument
  try:
    _sys.stdout.flush()
    _sys.stderr.write("terminated (SIGTERM)\n")
    _sys.stderr.flush()
  finally:
    _os._exit(143)       # 128 + SIGTERM; nothing is written yet, nothing to save


def _install_early_sigterm() -> None:
  # ``sys.argv[0]`` is '-m' while ``python -m`` imports the binary's package.
  if (_sys.argv[:1] == ["-m"]
      and _threading.current_thread() is _threading.main_thread()
      and _signal.getsignal(_signal.SIGTERM) is _signal.SIG_DFL):
    _signal.signal(_signal.SIGTERM, _terminated_while_starting)


_install_early_sigterm()
