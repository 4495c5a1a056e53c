"""A run's workdir: where it is, and the config it was trained with.

Layout (local path or bucket URL): ``checkpoints/`` (orbax), ``config.json`` (the config
of the newest start), ``config.<step>.json`` (the config each start resumed or began at:
the history), ``metrics.jsonl``, ``tensorboard/``, ``samples/``, reports. The config is
written only after the checkpoint restored (or the fresh state was built), atomically.

``train.lock`` (``lock``): one trainer per workdir. The primary process of a run holds
it for the whole run, with its host, pid and the pid's start time in it; a second
trainer on the same workdir refuses at once in one line naming the holder. A lock
whose holder is dead (same host, no such process, or the pid now belongs to a process
started later) is stale and taken over; one held on another host cannot be checked
and is refused, saying which file to delete if that run is dead. Locally the lock is
created atomically and whole: its content is written to a temporary file first and
then hard-linked to ``train.lock`` (``link`` fails if the lock exists; filesystems
without hard links fall back to ``O_CREAT | O_EXCL``), so a start that fails half way
(a full disk) leaves no lock at all. A lock that is empty or not JSON (left by a
failed start of an older version, or a garbled disk) and older than
``GARBLED_GRACE_S`` is stale and taken over with a warning. A takeover is serialized
by a second such file, so two starts never both win. A bucket has no atomic create-if-absent
through ``tcsm_jax.fs``: there the lock is written, read back and checked, which stops
a second run started later but not two started within the same second; give each
concurrent run its own bucket workdir.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional

import ml_collections
from absl import logging

from tcsm_jax import errors, fs
from tcsm_jax.training import config as config_lib

CONFIG = "config.json"
LOCK = "train.lock"
GARBLED_GRACE_S = 2.0   # an unreadable lock younger than this may still be written
_NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV,
                  errno.EMLINK, errno.ENOSYS)
# What runs and binaries write in a workdir: each is checked by ``check`` before
# anything is written (a symlink among them leading out of the workdir is refused).
LAYOUT = ("checkpoints", CONFIG, "metrics.jsonl", "tensorboard", "samples", "tokenizer",
          "references.json", "profile", LOCK)


def check(workdir: str, must_exist: bool = False) -> None:
  """Raises ``WorkdirError`` if ``workdir`` is a file (or missing, if ``must_exist``);
  confines later writes under it to it (``fs.confine``: no symlink leads a file of the
  run out of the workdir)."""
  if not workdir:
    raise errors.WorkdirError("the workdir is empty: pass --workdir=DIR")
  fs.confine(workdir)
  if fs.exists(workdir) and not fs.isdir(workdir):
    raise errors.WorkdirError(f"workdir {workdir!r} is a file, not a directory")
  if must_exist and not fs.exists(workdir):
    raise errors.WorkdirError(f"workdir {workdir!r} does not exist")
  for name in LAYOUT:                       # refuse now, not after hours of training
    fs.check_inside(fs.join(workdir, name))


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


# ------------------------------------------------------------------ one trainer per workdir


def _start_time(pid: int) -> Optional[str]:
  """The start time of ``pid`` (Linux ``/proc``; None elsewhere or if gone)."""
  try:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]   # a zombie is dead
  except (OSError, IndexError):
    return None


def _alive(holder: Dict[str, Any]) -> bool:
  """Whether the holder of a lock written on this host still runs."""
  pid = int(holder.get("pid", -1))
  if pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass                     # another user's live process
  if os.path.exists("/proc/self/stat"):
    start = _start_time(pid)
    return start is not None and start == holder.get("start", start)
  return True


def _describe(holder: Dict[str, Any]) -> str:
  when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("time", 0)))
  return f"pid {holder.get('pid')} on host {holder.get('host')!r} (since {when})"


class WorkdirLock:
  """The lock of a workdir (see the module docstring); ``acquire``/``release``."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = fs.join(workdir, LOCK)
    self.mine: Optional[Dict[str, Any]] = None

  def _read(self) -> Optional[Dict[str, Any]]:
    try:
      holder = json.loads(fs.read_text(self.path))
      return holder if isinstance(holder, dict) else {}
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}              # half written or garbled: held, holder unknown

  def _create(self, path, content: str) -> bool:
    """Creates ``path`` with ``content`` unless it exists (atomic locally)."""
    if fs.is_remote(path):
      if fs.exists(path):
        return False
      fs.write_text_atomic(path, content)
      time.sleep(0.5)                         # let a racing writer land, then check
      return fs.read_text(path) == content
    path = os.fspath(path)
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    try:
      self._write_new(tmp, content)           # a full disk fails here: no lock left
      try:
        os.link(tmp, path)                    # atomic, fails if it exists; whole
        return True
      except FileExistsError:
        return False
      except OSError as e:
        if e.errno not in _NO_HARD_LINKS:
          raise
      try:                                    # no hard links here: create in place
        self._write_new(path, content)
        return True
      except FileExistsError:
        return False
    except OSError as e:
      if fs.refusal(e) is None:
        raise
      raise errors.DiskError(fs.refusal(e, path)) from e
    finally:
      if os.path.lexists(tmp):
        os.unlink(tmp)

  @staticmethod
  def _write_new(path: str, content: str) -> None:
    """Creates ``path`` (``FileExistsError`` if it exists) holding ``content``; on a
    failed write (a full disk) the file is removed again."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
      with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(content)
    except BaseException:
      os.unlink(path)
      raise

  def acquire(self) -> None:
    fs.makedirs(self.workdir)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "start":
          _start_time(os.getpid()), "time": time.time(), "nonce": uuid.uuid4().hex}
    text = json.dumps(me)
    for _ in range(3):
      if self._create(self.path, text):
        self.mine = me
        return
      holder = self._read()
      if holder is None:
        continue                              # released meanwhile: try again
      if not holder and self._garbled_age() < GARBLED_GRACE_S:
        time.sleep(GARBLED_GRACE_S)           # maybe being written: look again
        holder = self._read()
        if holder is None:
          continue
      if not holder:                          # empty or garbled: a failed start's
        self._take_over(holder)
        continue
      if holder.get("host") != me["host"] or _alive(holder):
        who = _describe(holder) if holder else "an unknown process (unreadable lock)"
        hint = "" if holder.get("host") == me["host"] else (
            f"; if that run is dead, delete {os.fspath(self.path)}")
        raise errors.WorkdirError(
            f"workdir {self.workdir!r} is in use by another trainer: {who} holds "
            f"{os.fspath(self.path)}; wait for it, stop it, or use another --workdir"
            f"{hint}")
      self._take_over(holder)
    raise errors.WorkdirError(f"could not take the lock {os.fspath(self.path)} (other "
                              "trainers are starting on this workdir)")

  def _garbled_age(self) -> float:
    """Seconds since the (unreadable) lock was last written; 0 when unknown."""
    if fs.is_remote(self.path):
      return GARBLED_GRACE_S       # an object store commits whole objects
    try:
      return time.time() - os.path.getmtime(os.fspath(self.path))
    except OSError:
      return 0.0

  def _take_over(self, stale: Dict[str, Any]) -> None:
    """Removes a stale lock, serialized by ``<lock>.takeover`` so that two starts that
    both found it stale cannot both remove it (the second sees the first's lock)."""
    guard = fs.join(self.workdir, LOCK + ".takeover")
    if not self._create(guard, str(os.getpid())):
      try:
        age = time.time() - os.path.getmtime(os.fspath(guard))
      except (OSError, ValueError):
        age = 0.0
      if age > 60:                            # left by a start killed mid-takeover
        fs.remove(guard)
      return
    try:
      if self._read() == stale:
        logging.warning("taking over the stale lock %s of a trainer that no longer runs "
                        "(%s)", os.fspath(self.path), _describe(stale) if stale else
                        "it is empty or unreadable: left by a start that failed, e.g. "
                        "on a full disk")
        fs.remove(self.path)
    finally:
      fs.remove(guard)

  def release(self) -> None:
    if self.mine is not None and self._read() == self.mine:
      fs.remove(self.path)
    self.mine = None


@contextlib.contextmanager
def lock(workdir: str, primary: bool = True,
         agree: Optional[Callable[[bool], bool]] = None) -> Iterator[None]:
  """Holds the workdir's lock for the block (taken by the ``primary`` process only).

  ``agree(flag)``: a collective returning True on every process if ``flag`` is True on
  any (multi-host runs), so that all processes stop when the primary is refused.
  """
  held = WorkdirLock(workdir) if primary else None
  error = None
  if held is not None:
    try:
      held.acquire()
    except errors.UserError as e:
      error = e
  if agree is not None and agree(error is not None) and error is None:
    error = errors.WorkdirError(f"the primary process could not take the lock of "
                                f"workdir {workdir!r} (its error says why)")
  if error is not None:
    raise error
  try:
    yield
  finally:
    if held is not None:
      held.release()
