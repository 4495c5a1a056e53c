"""Errors caused by the user's input, as opposed to bugs.

The absl binaries (``experiments/cli.py``) print a ``UserError`` as one line
``error: <message>`` and exit with status 2; any other exception is a bug and keeps
its traceback. Raise a subclass with a message that names the offending key, flag,
file or value, and says what would be accepted.
"""


class UserError(Exception):
  """Base class: an input the user can fix (config, flag, path, data, checkpoint)."""


class ConfigError(UserError, ValueError):
  """A bad config key, type, value or combination of values."""


class FlagError(UserError, ValueError):
  """A bad command-line flag of a binary."""


class DataError(UserError, ValueError):
  """Unreadable, corrupt or mismatched data, tokenizer or prepared shards."""


class WorkdirError(UserError, ValueError):
  """A workdir that cannot be used: missing, a file, or holding another run."""


class DiskError(UserError, OSError):
  """A disk or bucket that refuses a write: read-only, full, or no permission."""


class PathEscapeError(UserError, ValueError):
  """A path that would lead out of the directory it belongs to: a name read from a
  manifest that holds ``..``, a separator or is absolute, or a write that follows a
  symlink out of a workdir (``tcsm_jax.fs.confine``)."""
