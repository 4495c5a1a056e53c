"""An in-memory ``gs://`` for tests: bucket URLs without network or credentials.

``with fake_gcs(): ...`` routes every ``gs://`` path opened through ``etils.epath``
(hence ``tcsm_jax.fs``) to an fsspec in-memory filesystem. Code that wrongly uses the
builtin ``open``/``os.path`` on a bucket URL fails (or writes a local ``gs:`` folder,
which ``leaked_local_dirs`` reports).
"""

import contextlib
import os
from unittest import mock

import fsspec
from etils.epath import backend as backend_lib
from etils.epath import gpath


class _MemoryBackend(backend_lib._FileSystemSpecBackend):  # pylint: disable=protected-access

  def __init__(self):
    self._mem = fsspec.filesystem("memory", skip_instance_cache=True)
    self._mem.store.clear()
    self._mem.pseudo_dirs.clear()
    self._mem.pseudo_dirs.append("")

  def fs(self, path):
    return self._mem

  def glob(self, path):
    return ["gs://" + p.lstrip("/") for p in self._mem.glob(_strip(path))]

  def walk(self, top, *, top_down=True, on_error=None):
    for root, dirs, files in self._mem.walk(_strip(top), topdown=top_down):
      yield "gs://" + root.lstrip("/"), dirs, files


def _strip(p):
  p = os.fspath(p)
  return "/" + p[len("gs://"):] if p.startswith("gs://") else p


class _Stripping(_MemoryBackend):
  """Maps ``gs://bucket/x`` to the memory path ``/bucket/x`` on every call."""

  def fs(self, path):
    return _StripFS(self._mem)


class _StripFS:

  def __init__(self, mem):
    self._mem = mem

  def __getattr__(self, name):
    fn = getattr(self._mem, name)
    if not callable(fn):
      return fn

    def call(*args, **kwargs):
      args = [_strip(a) if isinstance(a, (str, os.PathLike)) else a for a in args]
      return fn(*args, **kwargs)

    return call


@contextlib.contextmanager
def fake_gcs():
  """Routes ``gs://`` to a fresh in-memory filesystem for the ``with`` block."""
  backend = _Stripping()
  table = dict(gpath._PREFIX_TO_BACKEND)  # pylint: disable=protected-access
  table["gs"] = backend
  with mock.patch.object(gpath, "_PREFIX_TO_BACKEND", table), \
       mock.patch.object(gpath, "_is_tf_installed", lambda: False):
    yield backend._mem


def leaked_local_dirs(root="."):
  """Local folders named like a bucket scheme (``gs:``) under ``root``: a leak."""
  return [d for d in os.listdir(root) if d.endswith(":")]
