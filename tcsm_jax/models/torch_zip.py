"""Read ``torch.save`` zip checkpoints (and bf16 safetensors) with NumPy alone.

A ``torch.save`` file (PyTorch >= 1.6) is a zip archive: ``<root>/data.pkl`` is a pickle
whose tensors are ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``
calls and whose storages are *persistent ids* ``("storage", torch.FloatStorage, key,
location, numel)`` naming the raw little-endian bytes in ``<root>/data/<key>``.

``load_bytes`` unpickles with a restricted ``Unpickler``: tensors become NumPy arrays
(bfloat16 through ``ml_dtypes``), ``OrderedDict``/``dict`` stay, and every other global
the pickle names (a Lightning checkpoint's hyper-parameters, optimizer classes) becomes
an inert placeholder: nothing named by the file is ever imported or called, so reading
an untrusted checkpoint runs no code from it. Legacy (non-zip) ``torch.save`` files are
refused with a one-line error asking to re-save them or to use safetensors.
"""

from __future__ import annotations

import collections
import io
import json
import pickle
import struct
import zipfile
from typing import Any, Dict

import ml_dtypes
import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
                       "F64": np.float64, "I64": np.int64, "I32": np.int32,
                       "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


class FormatError(ValueError):
  """Not a checkpoint this reader understands."""


class _Placeholder:
  """Stands for any object the pickle builds from a global this reader does not know."""

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def __setstate__(self, state):
    del state

  def __call__(self, *args, **kwargs):
    return _Placeholder()


class _StorageType:
  def __init__(self, name: str):
    self.dtype = _STORAGE_DTYPES[name]


def _rebuild_tensor(storage, offset, size, stride, *args):
  del args
  storage = np.asarray(storage)
  if not size:
    return storage[offset:offset + 1].reshape(()).copy()
  item = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                         strides=tuple(s * item for s in stride))
  return np.array(view)


def _rebuild_parameter(data, *args):
  del args
  return data


class _Unpickler(pickle.Unpickler):

  def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str):
    super().__init__(io.BytesIO(data))
    self.archive, self.root = archive, root
    self.cache: Dict[str, np.ndarray] = {}

  def find_class(self, module, name):
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    if module == "builtins" and name in ("dict", "list", "tuple", "set", "frozenset"):
      return {"dict": dict, "list": list, "tuple": tuple, "set": set,
              "frozenset": frozenset}[name]
    return _Placeholder

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise FormatError(f"unknown persistent id {pid!r:.60}")
    stype, key = pid[1], str(pid[2])
    if not isinstance(stype, _StorageType):
      raise FormatError(f"storage of an unknown type for key {key}")
    if key not in self.cache:
      raw = self.archive.read(f"{self.root}/data/{key}")
      self.cache[key] = np.frombuffer(raw, dtype=stype.dtype)
    return self.cache[key]


def load_bytes(data: bytes) -> Any:
  """The object a ``torch.save`` zip file holds, tensors as NumPy arrays."""
  try:
    archive = zipfile.ZipFile(io.BytesIO(data))
  except zipfile.BadZipFile as e:
    raise FormatError("not a torch.save zip archive (a legacy pickle checkpoint? "
                      "re-save it with a current torch.save or as safetensors)") from e
  pkls = [n for n in archive.namelist() if n.endswith("/data.pkl")]
  if not pkls:
    raise FormatError("zip archive without data.pkl: not a torch.save checkpoint")
  root = pkls[0][:-len("/data.pkl")]
  try:
    return _Unpickler(archive.read(pkls[0]), archive, root).load()
  except (pickle.UnpicklingError, EOFError, KeyError) as e:
    raise FormatError(f"cannot read {pkls[0]}: {e}") from e


def load_safetensors_bytes(data: bytes) -> Dict[str, np.ndarray]:
  """A safetensors file as NumPy arrays (any dtype the format has, bf16 included);
  used where ``safetensors.numpy`` refuses a dtype NumPy lacks."""
  if len(data) < 8:
    raise FormatError("too short for a safetensors file")
  (n,) = struct.unpack("<Q", data[:8])
  header = json.loads(data[8:8 + n])
  base = 8 + n
  out = {}
  for key, info in header.items():
    if key == "__metadata__":
      continue
    dt = _SAFETENSORS_DTYPES.get(info["dtype"])
    if dt is None:
      raise FormatError(f"tensor {key!r} has dtype {info['dtype']}")
    a, b = info["data_offsets"]
    out[key] = np.frombuffer(data[base + a:base + b], dtype=dt).reshape(info["shape"])
  return out
