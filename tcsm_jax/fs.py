"""One path abstraction for every file the project reads or writes.

Every user-supplied path (workdir, data, tokenizer, prepared shards, outputs) may be a
local path or a bucket URL (``gs://``, ``s3://``, ``az://``). They are opened through
``etils.epath`` (which orbax and tensorflow-datasets already use), never through the
builtin ``open``/``os.path``. A bucket needs its fsspec backend (``gcsfs``, ``s3fs``,
``adlfs``) or TensorFlow's gfile; when neither is installed the first access raises
``BackendMissing``, a one-line error naming the package to install.

Writes are atomic where the backend allows it: local files are written to a temporary
name and renamed; object stores commit a whole object on close.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import IO, Iterator, List, Union

from etils import epath

from tcsm_jax import errors

PathLike = Union[str, os.PathLike]

_BACKEND_PACKAGES = {"gs": "gcsfs", "s3": "s3fs", "az": "adlfs", "hf": "huggingface_hub"}


class BackendMissing(errors.UserError, ValueError):
  """A bucket URL whose filesystem package is not installed."""


def path(p: PathLike) -> epath.Path:
  """``epath.Path`` of a local path or bucket URL."""
  return p if isinstance(p, epath.Path) else epath.Path(p)


def scheme(p: PathLike) -> str:
  """``'gs'``, ``'s3'``, ... for a bucket URL; ``''`` for a local path."""
  s = os.fspath(p)
  return s.split("://", 1)[0] if "://" in s else ""


def is_remote(p: PathLike) -> bool:
  return bool(scheme(p))


def join(p: PathLike, *parts: str) -> epath.Path:
  return path(p).joinpath(*parts)


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
  with _backend_errors(p):
    q = path(p)
    q.mkdir(parents=True, exist_ok=True)
    return q


def listdir(p: PathLike) -> List[str]:
  with _backend_errors(p):
    return sorted(c.name for c in path(p).iterdir())


def remove(p: PathLike) -> None:
  with _backend_errors(p):
    q = path(p)
    if q.is_dir():
      q.rmtree()
    elif q.exists():
      q.unlink()


def open_file(p: PathLike, mode: str = "r") -> IO:
  """Opens ``p`` (local or bucket) like the builtin ``open``."""
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
    finally:
      if tmp.exists():
        tmp.unlink()


def write_text_atomic(p: PathLike, text: str) -> None:
  write_bytes_atomic(p, text.encode("utf-8"))


def append_text(p: PathLike, text: str) -> None:
  """Appends ``text``; on object stores (no append) the object is rewritten."""
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
