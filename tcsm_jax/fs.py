"""One path abstraction for every file the project reads or writes.

Every user-supplied path (workdir, data, tokenizer, prepared shards, outputs) may be a
local path or a bucket URL (``gs://``, ``s3://``, ``az://``). They are opened through
``etils.epath`` (which orbax and tensorflow-datasets already use), never through the
builtin ``open``/``os.path``. A bucket needs its fsspec backend (``gcsfs``, ``s3fs``,
``adlfs``) or TensorFlow's gfile; when neither is installed the first access raises
``BackendMissing``, a one-line error naming the package to install.

Writes are atomic where the backend allows it: local files are written to a temporary
name and renamed; object stores commit a whole object on close.

A disk that says no -- read-only (``EROFS``), full (``ENOSPC``, ``EDQUOT``, or
tensorstore's ``RESOURCE_EXHAUSTED`` under orbax) or forbidden (``EACCES``, ``EPERM``) --
is not a bug: ``refusal(exc)`` names it and the path in one line, and the binaries print
it as ``error: ...`` with status 2 (``errors.DiskError``).

**Nothing leaves its directory.** A file name read from a file the project wrote (a
prepared set's manifest names its shards and tokenizer copy) is taken through
``child(directory, name)``: one plain name (no separator, no ``..``, not absolute), or
``errors.PathEscapeError`` in one line. A directory the binaries write into (a workdir,
an output directory: ``confine(root)``, called by ``training.workdir.check`` and
``experiments.common``'s directory checks) confines every later local write under it:
``write_bytes_atomic``, ``append_text``, ``makedirs``, ``open_file`` for writing,
``remove``, and ``check_inside`` (what orbax and TensorBoard are handed) refuse a path
whose real location (symlinks resolved) is outside the real ``root``: a symlinked
``samples/``, ``metrics.jsonl``, ``config.json`` or ``checkpoints/`` pointing elsewhere
is one ``error:`` line and nothing is written there. The root itself may be a symlink
(a workdir on another disk); links inside it may point anywhere inside it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import uuid
from typing import IO, Iterator, List, Optional, Union

from etils import epath

from tcsm_jax import errors

PathLike = Union[str, os.PathLike]

_BACKEND_PACKAGES = {"gs": "gcsfs", "s3": "s3fs", "az": "adlfs", "hf": "huggingface_hub"}


class BackendMissing(errors.UserError, ValueError):
  """A bucket URL whose filesystem package is not installed."""


class UnknownScheme(errors.UserError, ValueError):
  """A URL whose scheme (``memory://``, ``foo://``) no filesystem here handles."""


def path(p: PathLike) -> epath.Path:
  """``epath.Path`` of a local path or bucket URL (``UnknownScheme`` for others)."""
  if isinstance(p, epath.Path):
    return p
  try:
    return epath.Path(p)
  except KeyError:
    if not is_remote(p):
      raise
    raise UnknownScheme(
        f"{os.fspath(p)!r}: unknown scheme {scheme(p)}://; use a local path or a bucket "
        f"URL ({', '.join(s + '://' for s in _BACKEND_PACKAGES)})") from None


def scheme(p: PathLike) -> str:
  """``'gs'``, ``'s3'``, ... for a bucket URL; ``''`` for a local path."""
  s = os.fspath(p)
  return s.split("://", 1)[0] if "://" in s else ""


def is_remote(p: PathLike) -> bool:
  return bool(scheme(p))


def join(p: PathLike, *parts: str) -> epath.Path:
  return path(p).joinpath(*parts)


def child(directory: PathLike, name, what: str = "file") -> epath.Path:
  """``directory/name`` for a ``name`` read from a file (a manifest): one plain file
  name, else ``errors.PathEscapeError`` naming it and ``what`` (module docstring)."""
  ok = (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
        and "\\" not in name and "\0" not in name and "://" not in name
        and not os.path.isabs(name))
  if not ok:
    raise errors.PathEscapeError(
        f"{os.fspath(directory)!r}: the {what} {name!r} is not a plain file name in "
        "that directory (a path with '..', '/' or a drive leads out of it); refusing to "
        "read or write it")
  return join(directory, name)


# ------------------------------------------------- writes stay inside their directory

_confined: tuple = ()      # absolute (not resolved) roots given to ``confine``


def confine(root: PathLike) -> None:
  """Confines every later local write under ``root`` to ``root`` (module docstring).
  Process-wide (a binary confines the directories its flags name); bucket URLs have no
  symlinks and are not tracked."""
  global _confined
  if not root or is_remote(root):
    return
  r = os.path.abspath(os.fspath(root))
  if r not in _confined:
    _confined = _confined + (r,)


def _under(p: str, root: str) -> bool:
  return p == root or p.startswith(root.rstrip(os.sep) + os.sep)


def check_inside(p: PathLike) -> None:
  """``errors.PathEscapeError`` if writing ``p`` would follow a symlink out of a
  confined root it lies in (``confine``); a no-op for bucket URLs and other paths."""
  if is_remote(p):
    return
  a = os.path.abspath(os.fspath(p))
  for root in _confined:
    if not _under(a, root):
      continue
    real_root, real = os.path.realpath(root), os.path.realpath(a)
    if not _under(real, real_root):
      raise errors.PathEscapeError(
          f"refusing to write {a!r}: a symlink leads it out of {root!r} to {real!r} "
          "(files a run writes stay in its directory; remove the link)")


@contextlib.contextmanager
def _backend_errors(p: PathLike) -> Iterator[None]:
  try:
    yield
  except (ImportError, NotImplementedError) as e:
    s = scheme(p)
    pkg = _BACKEND_PACKAGES.get(s)
    if not s or pkg is None and not isinstance(e, NotImplementedError):
      raise
    hint = f"`pip install {pkg}` (or TensorFlow for gfile)" if pkg else (
        "use a local path or one of gs://, s3://, az://")
    raise BackendMissing(f"cannot access {os.fspath(p)!r}: no filesystem for "
                         f"{s}:// is installed; {hint}") from e


def exists(p: PathLike) -> bool:
  with _backend_errors(p):
    return path(p).exists()


def isdir(p: PathLike) -> bool:
  with _backend_errors(p):
    return path(p).is_dir()


def makedirs(p: PathLike) -> epath.Path:
  check_inside(p)
  with _backend_errors(p):
    q = path(p)
    q.mkdir(parents=True, exist_ok=True)
    return q


def listdir(p: PathLike) -> List[str]:
  with _backend_errors(p):
    return sorted(c.name for c in path(p).iterdir())


def remove(p: PathLike) -> None:
  """Removes a file or a directory tree; a symlink is unlinked, never followed."""
  if not is_remote(p) and os.path.islink(os.fspath(p)):
    check_inside(os.path.dirname(os.path.abspath(os.fspath(p))))
    os.unlink(os.fspath(p))
    return
  check_inside(p)
  with _backend_errors(p):
    q = path(p)
    if q.is_dir():
      q.rmtree()
    elif q.exists():
      q.unlink()


def open_file(p: PathLike, mode: str = "r") -> IO:
  """Opens ``p`` (local or bucket) like the builtin ``open`` (writes: ``check_inside``)."""
  if any(c in mode for c in "wax+"):
    check_inside(p)
  with _backend_errors(p):
    return path(p).open(mode)


def read_text(p: PathLike, encoding: str = "utf-8") -> str:
  with _backend_errors(p):
    return path(p).read_bytes().decode(encoding)


def read_bytes(p: PathLike) -> bytes:
  with _backend_errors(p):
    return path(p).read_bytes()


def write_bytes_atomic(p: PathLike, data: bytes) -> None:
  """Writes the whole file or nothing: a reader never sees a partial file."""
  check_inside(p)
  with _backend_errors(p):
    q = path(p)
    q.parent.mkdir(parents=True, exist_ok=True)
    if is_remote(q):
      q.write_bytes(data)       # object stores commit the object on close
      return
    tmp = q.parent / f".{q.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
      tmp.write_bytes(data)
      tmp.replace(q)
    except OSError as e:
      if e.errno not in _REFUSED:
        raise
      raise errors.DiskError(refusal(e, q)) from e
    finally:
      if tmp.exists():
        tmp.unlink()


def write_text_atomic(p: PathLike, text: str) -> None:
  write_bytes_atomic(p, text.encode("utf-8"))


def append_text(p: PathLike, text: str) -> None:
  """Appends ``text``; on object stores (no append) the object is rewritten."""
  check_inside(p)
  with _backend_errors(p):
    q = path(p)
    if is_remote(q):
      old = q.read_bytes() if q.exists() else b""
      q.write_bytes(old + text.encode("utf-8"))
      return
    q.parent.mkdir(parents=True, exist_ok=True)
    with open(os.fspath(q), "a", encoding="utf-8") as f:
      f.write(text)


def local_path(p: PathLike) -> str:
  """The local filesystem path of ``p``; ``ValueError`` for a bucket URL.

  For the few readers that need a real file (``np.memmap``, sentencepiece's loader
  reads bytes instead): they call this and say so in their error.
  """
  if is_remote(p):
    raise ValueError(f"{os.fspath(p)!r} must be a local path here (bucket URLs are "
                     "not supported for this file)")
  return os.fspath(p)


# ---------------------------------------------------------------- disks that say no

_REFUSED = {errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on device",
            errno.EDQUOT: "disk quota exceeded", errno.EACCES: "permission denied",
            errno.EPERM: "operation not permitted"}


def _chain(exc: BaseException) -> Iterator[BaseException]:
  seen = set()
  while exc is not None and id(exc) not in seen and len(seen) < 16:
    seen.add(id(exc))
    yield exc
    exc = exc.__cause__ or exc.__context__


def refused_errno(exc: BaseException) -> Optional[int]:
  """The errno of a disk refusal in ``exc`` or its causes (an ``OSError``, or a
  tensorstore/orbax message with ``os_error_code`` or ``RESOURCE_EXHAUSTED``)."""
  for e in _chain(exc):
    if isinstance(e, OSError) and e.errno in _REFUSED:
      return e.errno
    text = str(e)
    m = re.search(r"os_error_code='?(\d+)", text)
    if m and int(m.group(1)) in _REFUSED:
      return int(m.group(1))
    if "RESOURCE_EXHAUSTED" in text or "No space left on device" in text:
      return errno.ENOSPC
  return None


def refusal(exc: BaseException, where: Optional[PathLike] = None) -> Optional[str]:
  """``'<reason> (<ERRNO>): <path>'`` for a disk refusal in ``exc``, else ``None``;
  the path is ``where`` if given, else the one the error names."""
  code = refused_errno(exc)
  if code is None:
    return None
  where = None if where is None else os.fspath(where)
  for e in _chain(exc if where is None else None):
    if isinstance(e, OSError) and getattr(e, "filename", None) is not None:
      where = os.fspath(e.filename)
      break
    quoted = re.findall(r"""["']((?:/|[a-z0-9]+://)[^"']+)["']""", str(e))
    if quoted:
      where = quoted[-1]
      break
  reason = f"{_REFUSED[code]} ({errno.errorcode[code]})"
  return f"{reason}: {where!r}" if where else f"{reason}: {exc}"
