"""Shared start-up of the absl binaries: one line for user errors, tracebacks for bugs.

Every binary in ``experiments/`` ends with ``cli.run(main)``. A user-caused error --
any ``tcsm_jax.errors.UserError`` (config, flag, data, workdir, checkpoint, missing
bucket backend), a bad flag or ``--config.x.y=v`` override, a missing or broken
``--config`` file, ``app.UsageError``, or a ``FileNotFoundError`` /
``NotADirectoryError`` / ``IsADirectoryError`` / ``PermissionError`` about a path the
user gave, or a disk that refuses a write anywhere (read-only, full, no permission:
``tcsm_jax.fs.refusal``) -- prints exactly one line ``error: <message>`` on stderr and exits with
status 2. Any other exception is a bug and keeps its traceback. ``--verbose`` or
``TCSM_TRACEBACK=1`` prints the traceback of user errors too. Ctrl-C exits with status
130 and one line.

Compilation cache: ``run`` turns on JAX's persistent compilation cache before ``main``
runs (``use_compile_cache``), so a binary's second start loads its executables from
disk instead of compiling them. The cache lives in ``$TCSM_JAX_CACHE`` or else
``~/.cache/tcsm_jax/jax_cache`` (a bucket URL works too); ``--compile_cache=false`` or
``TCSM_COMPILE_CACHE=0`` turns it off, and a ``JAX_COMPILATION_CACHE_DIR`` set in the
environment is used as it is (JAX's own variable wins). A directory that cannot be
created prints one warning line and the binary runs without the cache.

SIGTERM (a scheduler's preemption) exits with status 143 (128 + 15) and one line,
whenever it comes: before the trainer installs its own handler (imports, restore,
compilation) at once with ``terminated (SIGTERM)``, during training after the
checkpoint it triggers (``exit_if_stopped``). A scheduler therefore never reads a
preempted run as finished; ``launch/slurm.sbatch`` requeues on 143.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import traceback
from typing import Iterable, List, NoReturn, Optional, Tuple

from absl import app, flags

from tcsm_jax import errors, fs

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143      # 128 + SIGTERM: preempted, resumable


class Terminated(BaseException):
  """SIGTERM outside the training loop (a ``BaseException``, like Ctrl-C's)."""


def _raise_terminated(signum, frame):
  raise Terminated()


def _say(line: str) -> None:
  sys.stdout.flush()
  sys.stderr.write(line + "\n")
  sys.stderr.flush()

_VERBOSE = flags.DEFINE_bool("verbose", False, "Print the traceback of user errors too "
                             "(same as the environment variable TCSM_TRACEBACK=1).")

DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "tcsm_jax", "jax_cache")

_OS_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError,
                   PermissionError)

# Paths the user gave besides flag values (e.g. the data path of a workdir's config).
_extra_user_paths: List[str] = []


def one_line(message: str) -> str:
  """``message`` with every line break (and the blanks around it) turned into ``' '``."""
  return re.sub(r"\s*[\r\n]+\s*", " ", str(message)).strip()


def add_user_paths(paths: Iterable[str]) -> None:
  """Registers paths the user chose indirectly (config values), for path errors."""
  _extra_user_paths.extend(p for p in paths if isinstance(p, str) and p)


def show_tracebacks() -> bool:
  """``--verbose`` or ``TCSM_TRACEBACK`` set to anything but ``''``/``0``/``false``."""
  if os.environ.get("TCSM_TRACEBACK", "").strip().lower() not in ("", "0", "false", "no"):
    return True
  if flags.FLAGS.is_parsed():
    return bool(_VERBOSE.value)
  # Flag parsing failed: look at the raw command line.
  return any(a in ("--verbose", "-verbose", "--verbose=true", "--verbose=1",
                   "--verbose=True") for a in sys.argv[1:])


def fail(message: str, exc: Optional[BaseException] = None) -> NoReturn:
  """Prints ``error: <message>`` (one line) and exits with status 2."""
  if exc is not None and show_tracebacks():
    traceback.print_exception(type(exc), exc, exc.__traceback__)
  sys.stdout.flush()
  sys.stderr.write(f"error: {one_line(message)}\n")
  sys.stderr.flush()
  sys.exit(EXIT_USER_ERROR)


# ----------------------------------------------------------------- user paths


def config_strings(cfg, out: List[str]) -> None:
  try:
    items = cfg.items()
  except Exception:  # pylint: disable=broad-except  (an unloadable config)
    return
  for _, v in items:
    if isinstance(v, str):
      out.append(v)
    elif hasattr(v, "items"):
      config_strings(v, out)


def user_paths() -> List[str]:
  """Strings the user typed or chose: flag values given on the command line, every
  string of a parsed ``--config``, and paths registered with ``add_user_paths``."""
  out = list(_extra_user_paths)
  if not flags.FLAGS.is_parsed():
    return out
  for name in flags.FLAGS:
    flag = flags.FLAGS[name]
    if not flag.present and not _is_config_flag(flag):
      continue
    try:
      filename = getattr(flag, "config_filename", None)
      val = flag.value
    except Exception:  # pylint: disable=broad-except  (a config flag not given)
      continue
    if isinstance(filename, str):
      out.append(filename.split(":", 1)[0])
    if isinstance(val, str):
      out.append(val)
    elif isinstance(val, (list, tuple)):
      out.extend(v for v in val if isinstance(v, str))
    elif _is_config_flag(flag) and not _is_error_config(val):
      config_strings(val, out)
  return [p for p in out if p and p not in (".", "/")]


def _norm(p: str) -> str:
  p = os.fspath(p)
  return p.rstrip("/") if "://" in p else os.path.normpath(os.path.abspath(p))


def _under(candidate: str, root: str) -> bool:
  c, r = _norm(candidate), _norm(root)
  return c == r or c.startswith(r.rstrip("/") + "/")


def is_user_path_error(exc: BaseException) -> bool:
  """Whether an ``OSError`` is about a path the user gave (or a file under it)."""
  if not isinstance(exc, _OS_PATH_ERRORS):
    return False
  candidates = [str(f) for f in (getattr(exc, "filename", None),
                                 getattr(exc, "filename2", None)) if f is not None]
  candidates += re.findall(r"'([^']+)'", str(exc)) + re.findall(r'"([^"]+)"', str(exc))
  roots = user_paths()
  return any(_under(c, r) for c in candidates for r in roots)


def _os_error_message(exc: OSError) -> str:
  if getattr(exc, "filename", None) is not None and exc.strerror:
    return f"{exc.strerror}: {os.fspath(exc.filename)!r}"
  return str(exc)


# ------------------------------------------------------------ config flags


def _is_config_flag(flag) -> bool:
  return type(flag).__name__ == "_ConfigFlag" or hasattr(flag, "config_filename")


def _is_error_config(value) -> bool:
  return type(value).__name__ == "_ErrorConfig"


def _load_failure(flag_name: str, filename: str, reason: str) -> str:
  reason = re.sub(r"^\[Errno \d+\]\s*", "", one_line(reason))
  return f"--{flag_name}: cannot load config file {filename!r}: {reason}"


def _config_file_error(flag) -> Optional[str]:
  """Why a parsed ``--config`` flag holds no config (ml_collections defers a missing
  file to the first access), or ``None``."""
  val = flag.value
  if not _is_error_config(val):
    return None
  err = object.__getattribute__(val, "_error")
  name = getattr(flag, "config_filename", None) or flag.serialize()
  lines = [l.strip() for l in str(err).splitlines() if l.strip()]
  errno_lines = [l for l in lines if "[Errno" in l]
  return _load_failure(flag.name, name, (errno_lines or lines or [repr(err)])[-1])


def _config_args(argv: List[str]) -> List[Tuple[str, str]]:
  """``(flag name, file)`` of the config-file flags on the command line."""
  out = []
  for a in argv[1:]:
    name, eq, value = a.lstrip("-").partition("=")
    if a.startswith("-") and eq and name in flags.FLAGS and _is_config_flag(
        flags.FLAGS[name]):
      out.append((name, value))
  return out


def _overrides(argv: List[str]) -> List[str]:
  return [a.split("=", 1)[0] for a in argv[1:] if re.match(r"^--?\w+\.", a)]


def _flag_error_message(exc: BaseException) -> str:
  message = str(exc)
  whilst = re.match(r"^flag --(\w+)=(.*?): Error whilst parsing config file", message)
  if whilst:
    # ml_collections embeds the config module's traceback; keep its last line.
    lines = [l for l in message.splitlines() if l.strip()]
    return _load_failure(whilst.group(1), whilst.group(2), lines[-1])
  required = re.match(r"^flag --([\w.]+)=None: Flag --[\w.]+ must have a value other "
                      r"than None\.?$", message)
  if required:
    return f"--{required.group(1)} is required"
  name = getattr(exc, "flagname", None)
  if isinstance(exc, flags.UnrecognizedFlagError) and name and "." in name:
    prefix = name.split(".", 1)[0]
    if prefix in flags.FLAGS and _is_config_flag(flags.FLAGS[prefix]):
      return (f"--{name}: overriding config keys needs --{prefix}=FILE (without it the "
              "config is the workdir's config.json, which is used as saved)")
  return message


def _parse_failure(exc: BaseException, argv: List[str]) -> Optional[str]:
  """The one line for an exception raised while parsing flags, ``None`` for a bug."""
  if isinstance(exc, flags.Error):
    return _flag_error_message(exc)
  overrides = _overrides(argv)
  if isinstance(exc, (AttributeError, KeyError)) and overrides:
    # An override naming a key the config does not have.
    key = str(exc).strip("'\" ")
    hit = [o for o in overrides if key in o.lstrip("-").split(".")[1:]]
    if hit or not _config_args(argv):
      return (f"unknown config key {key!r} in {', '.join(hit or overrides)}; "
              "tcsm_jax/training/config.py lists every key")
  given = _config_args(argv)
  if given:
    # Parsing --config runs the file: a syntax error, no get_config, a missing file
    # combined with overrides, ... Without a config file it is a bug.
    lines = [l.strip() for l in str(exc).splitlines() if l.strip()]
    errno_lines = [l for l in lines if "[Errno" in l]
    reason = (errno_lines or lines or [""])[-1]
    if not errno_lines:
      reason = f"{type(exc).__name__}: {reason}"
    return _load_failure(given[0][0], given[0][1], reason)
  return None


def _parse(argv):
  try:
    rest = flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    msg = _parse_failure(e, argv)
    if msg is None:
      raise
    fail(msg, e)
  for name in flags.FLAGS:
    flag = flags.FLAGS[name]
    if _is_config_flag(flag):
      msg = _config_file_error(flag)
      if msg:
        fail(msg)
  return rest


# --------------------------------------------------------------- running


def user_error_message(exc: BaseException) -> Optional[str]:
  """The one-line message of a user-caused error, ``None`` for a bug."""
  if isinstance(exc, errors.UserError):
    return str(exc) or type(exc).__name__
  if isinstance(exc, (flags.Error, app.UsageError)):
    return _flag_error_message(exc)
  refused = fs.refusal(exc)        # read-only, full or forbidden: wherever it is
  if refused is not None:
    return refused
  if isinstance(exc, _OS_PATH_ERRORS) and is_user_path_error(exc):
    return _os_error_message(exc)
  return None


def _env_off(name: str) -> bool:
  return os.environ.get(name, "").strip().lower() in ("0", "false", "no", "off")


def define_compile_cache_flag() -> None:
  """``--compile_cache`` (bool, default true), unless the binary defines its own flag of
  that name (``experiments.study``: a directory), which then manages the cache."""
  if "compile_cache" not in flags.FLAGS:
    flags.DEFINE_bool(
        "compile_cache", True, "Persistent JAX compilation cache in $TCSM_JAX_CACHE or "
        "~/.cache/tcsm_jax/jax_cache (second starts skip compilation); false or "
        "TCSM_COMPILE_CACHE=0 turns it off.")


def _flag_enabled() -> Optional[bool]:
  """``--compile_cache``'s value; ``None`` when the binary's own flag manages it."""
  if "compile_cache" not in flags.FLAGS or not flags.FLAGS.is_parsed():
    return True
  value = flags.FLAGS["compile_cache"].value
  return value if isinstance(value, bool) else None


def compile_cache_dir() -> str:
  """The compilation cache directory a binary uses ('' = off): off with
  ``--compile_cache=false`` or ``TCSM_COMPILE_CACHE=0``; else ``JAX_COMPILATION_CACHE_DIR``
  when set, ``$TCSM_JAX_CACHE``, or ``~/.cache/tcsm_jax/jax_cache``."""
  enabled = _flag_enabled()
  if not enabled or _env_off("TCSM_COMPILE_CACHE"):
    return ""
  path = (os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.environ.get("TCSM_JAX_CACHE")
          or DEFAULT_CACHE_DIR)
  return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def use_compile_cache() -> str:
  """Turns JAX's persistent compilation cache on (``compile_cache_dir``) or off; returns
  the directory ('' = off).

  Every executable that took at least 0.1 s to compile is stored (the train, eval and
  sampling steps; not the many tiny ones, whose disk round trip would cost more than
  compiling them).
  """
  import jax  # pylint: disable=g-import-not-at-top  (binaries import it anyway)
  if _flag_enabled() is None:          # the binary's own --compile_cache decides
    return jax.config.jax_compilation_cache_dir or ""
  path = compile_cache_dir()
  if path and "://" not in path:
    try:
      os.makedirs(path, exist_ok=True)
    except OSError as e:
      _say(f"warning: compilation cache off: cannot create {path!r} "
           f"({e.strerror or e}); set TCSM_JAX_CACHE or --compile_cache=false")
      path = ""
  if not path:
    jax.config.update("jax_enable_compilation_cache", False)
    return ""
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs",
                    float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                                         0.1)))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                    int(os.environ.get("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", 0)))
  return path


def _guarded(main):

  def wrapped(argv):
    try:
      use_compile_cache()
      if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]} (flags are written "
                             "--name=value)")
      return main(argv)
    except KeyboardInterrupt:
      _say("interrupted (Ctrl-C)")
      sys.exit(EXIT_INTERRUPTED)
    except Terminated:
      _say("terminated (SIGTERM)")
      sys.exit(EXIT_TERMINATED)
    except Exception as e:  # pylint: disable=broad-except
      msg = user_error_message(e)
      if msg is None:
        raise
      fail(msg, e)

  return wrapped


def exit_if_stopped(result: dict, workdir: str) -> None:
  """Exits when a signal stopped training (``result['stopped_by']``) after its
  checkpoint: Ctrl-C with status 130, SIGTERM (here or on another process of the run)
  with 143, each with one line; returns otherwise."""
  by = result.get("stopped_by")
  if not by:
    return
  if by == "SIGINT":
    _say(f"interrupted: checkpoint saved in {workdir}; re-run the same command to resume")
    sys.exit(EXIT_INTERRUPTED)
  what = "SIGTERM" if by == "SIGTERM" else "a signal to another process of the run"
  _say(f"preempted ({what}): checkpoint saved in {workdir}; re-run the same command to "
       f"resume (exit status {EXIT_TERMINATED})")
  sys.exit(EXIT_TERMINATED)


def run(main) -> None:
  """``app.run(main)`` with one-line user errors (status 2), quiet Ctrl-C (130) and
  SIGTERM (143)."""
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _raise_terminated)
  define_compile_cache_flag()
  try:
    app.run(_guarded(main), flags_parser=_parse)
  except KeyboardInterrupt:
    # Ctrl-C during flag parsing or absl start-up.
    _say("interrupted (Ctrl-C)")
    sys.exit(EXIT_INTERRUPTED)
  except Terminated:
    _say("terminated (SIGTERM)")
    sys.exit(EXIT_TERMINATED)
