"""A run's workdir: where it is, and the config it was trained with.

Layout (local path or bucket URL): ``checkpoints/`` (orbax), ``config.json`` (the config
of the newest start), ``config.<step>.json`` (the config each start resumed or began at:
the history), ``metrics.jsonl``, ``tensorboard/``, ``samples/``, reports. The config is
written only after the checkpoint restored (or the fresh state was built), atomically.
"""

from __future__ import annotations

import json
from typing import List

import ml_collections

from tcsm_jax import errors, fs
from tcsm_jax.training import config as config_lib

CONFIG = "config.json"


def check(workdir: str, must_exist: bool = False) -> None:
  """Raises ``WorkdirError`` if ``workdir`` is a file (or missing, if ``must_exist``)."""
  if not workdir:
    raise errors.WorkdirError("the workdir is empty: pass --workdir=DIR")
  if fs.exists(workdir) and not fs.isdir(workdir):
    raise errors.WorkdirError(f"workdir {workdir!r} is a file, not a directory")
  if must_exist and not fs.exists(workdir):
    raise errors.WorkdirError(f"workdir {workdir!r} does not exist")


def has_config(workdir: str) -> bool:
  return fs.exists(fs.join(workdir, CONFIG))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was trained with (keys added since then take defaults).

  Raises:
    errors.WorkdirError: no ``config.json`` (not a training workdir).
    errors.ConfigError: ``config.json`` is unreadable or invalid.
  """
  check(workdir, must_exist=True)
  path = fs.join(workdir, CONFIG)
  if not fs.exists(path):
    raise errors.WorkdirError(f"{workdir!r} has no {CONFIG}: not a training workdir "
                              "(train first with experiments.train)")
  try:
    saved = json.loads(fs.read_text(path))
  except (ValueError, UnicodeDecodeError) as e:
    raise errors.ConfigError(f"{path} is not valid JSON: {e}") from None
  if not isinstance(saved, dict):
    kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(saved), "a number")
    raise errors.ConfigError(f"{path} holds {kind}, not a JSON object of config keys: "
                             "not a config this project wrote")
  cfg = config_lib.from_dict(saved)
  config_lib.validate(cfg)
  return cfg


def save_config(workdir: str, config: ml_collections.ConfigDict, step: int) -> None:
  """Writes ``config.json`` and the history entry ``config.<step>.json`` atomically."""
  text = config_lib.to_json(config)
  fs.write_text_atomic(fs.join(workdir, f"config.{int(step)}.json"), text)
  fs.write_text_atomic(fs.join(workdir, CONFIG), text)


def config_history(workdir: str) -> List[int]:
  """Steps at which the run was (re)started, from the ``config.<step>.json`` files."""
  out = []
  for name in fs.listdir(workdir) if fs.isdir(workdir) else []:
    parts = name.split(".")
    if len(parts) == 3 and parts[0] == "config" and parts[2] == "json" and \
        parts[1].isdigit():
      out.append(int(parts[1]))
  return sorted(out)
