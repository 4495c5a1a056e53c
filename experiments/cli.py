"""Shared start-up of the absl binaries: clear errors for bad config overrides."""

import sys

from absl import app, flags


def _parse(argv):
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"FATAL Flags parsing error: {e}")
  except (AttributeError, KeyError) as e:
    bad = [a for a in argv[1:] if a.startswith("--config.")]
    sys.exit(f"error: unknown config key {str(e).strip(chr(34))} in overrides {bad}; "
             "tcsm_jax/training/config.py lists every key")


def run(main) -> None:
  """``app.run(main)``, turning a bad ``--config.x.y=v`` into a one-line error."""
  app.run(main, flags_parser=_parse)
