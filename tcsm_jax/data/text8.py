"""Character-level text8 alphabet, cleaning rule and loading.

text8 (Mahoney, 2006) is the first 10^8 characters of English Wikipedia cleaned by
``wikifil.pl`` to 27 symbols: ``a``-``z`` and space. The same rule is applied here to
any raw text (the bundled corpus included), so every character corpus in the project
shares one alphabet:

1. lower-case;
2. each digit is spelled out with spaces around it (``7`` -> `` seven ``);
3. every other character outside ``a``-``z`` becomes a space;
4. runs of spaces collapse to one; leading/trailing spaces are stripped.

Token ids: space = 0, ``a`` = 1, ..., ``z`` = 26 (``VOCAB_SIZE = 27``).

Files are read through ``tcsm_jax.fs`` (local paths and bucket URLs). A file that is
not what it claims to be (a truncated or garbled zip, bytes that are not ASCII text)
raises ``errors.DataError`` naming the file.
"""

from __future__ import annotations

import re
import zipfile
import zlib

import numpy as np

from tcsm_jax import errors, fs
from tcsm_jax.data import base

ALPHABET = " abcdefghijklmnopqrstuvwxyz"
VOCAB_SIZE = len(ALPHABET)  # 27
# Standard text8 split (SEDD / MDLM / MD4): 90M train, 5M validation, 5M test.
TEXT8_SPLITS = {"train": (0, 90_000_000), "validation": (90_000_000, 95_000_000),
                "test": (95_000_000, 100_000_000)}

_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_DIGIT_TABLE = {ord(str(d)): f" {w} " for d, w in enumerate(_DIGITS)}
_NON_ALPHA = re.compile(r"[^a-z]+")
_LUT = np.full(256, -1, dtype=np.int16)
for _i, _c in enumerate(ALPHABET):
  _LUT[ord(_c)] = _i


def clean_text(text: str) -> str:
  """Applies the text8 cleaning rule (module docstring) to raw text."""
  text = text.lower().translate(_DIGIT_TABLE)
  return _NON_ALPHA.sub(" ", text).strip()


def encode(text: str) -> np.ndarray:
  """Maps cleaned text to token ids ``[len(text)]`` (uint8).

  Raises:
    ValueError: naming the first character outside the 27-symbol alphabet.
  """
  raw = np.frombuffer(text.encode("latin-1", errors="replace"), dtype=np.uint8)
  ids = _LUT[raw]
  bad = np.flatnonzero(ids < 0)
  if bad.size:
    i = int(bad[0])
    raise ValueError(
        f"character {text[i]!r} at offset {i} is outside the text8 alphabet "
        f"{ALPHABET!r}; clean the text first with tcsm_jax.data.text8.clean_text")
  return ids.astype(np.uint8)


def encode_text(text: str) -> np.ndarray:
  """Prompt text -> ids with the text8 rule; spaces at the ends are kept."""
  lead = " " if text[:1].isspace() else ""
  trail = " " if text[-1:].isspace() and text.strip() else ""
  return encode(lead + clean_text(text) + trail)


def decode(ids) -> str:
  """Maps token ids ``[..., length]`` back to text (one string per row if 2-D)."""
  ids = np.asarray(ids)
  if ids.ndim > 1:
    return [decode(row) for row in ids]  # type: ignore[return-value]
  if ids.size and (ids.min() < 0 or ids.max() >= VOCAB_SIZE):
    raise ValueError(f"token ids must lie in [0, {VOCAB_SIZE}); got range "
                     f"[{ids.min()}, {ids.max()}]")
  return "".join(ALPHABET[i] for i in ids)


def read_text8(path: str) -> str:
  """Reads text8 from ``text8.zip`` or the extracted ``text8`` file (local or bucket).

  The content must already be in the text8 alphabet (it is validated by ``encode``
  later); use ``clean_text`` for raw text.

  Raises:
    base.DataFileNotFound: if ``path`` does not exist.
    errors.DataError: naming the file, if it is empty, a zip without exactly one
      member, a truncated or garbled zip, or not ASCII text.
  """
  if not fs.exists(path):
    raise base.DataFileNotFound(
        f"text8 path {path!r} does not exist; download text8.zip yourself (this "
        "project never downloads at run time) and set config.data.path")
  try:
    with fs.open_file(path, "rb") as f:
      if zipfile.is_zipfile(f):
        f.seek(0)
        with zipfile.ZipFile(f) as zf:
          names = zf.namelist()
          if len(names) != 1:
            raise errors.DataError(f"{path!r} should hold exactly one member, has "
                                   f"{names}")
          raw = zf.read(names[0])
      else:
        f.seek(0)
        raw = f.read()
        if raw[:4] == b"PK\x03\x04":
          raise zipfile.BadZipFile("a zip without its central directory (truncated?)")
    text = raw.decode("ascii")
  except (zipfile.BadZipFile, zlib.error, EOFError, UnicodeDecodeError) as e:
    raise errors.DataError(f"text8 file {path!r} is corrupt or truncated ({e}); "
                           "download text8.zip again") from e
  if not text.strip():
    raise errors.DataError(f"text8 file {path!r} is empty")
  return text
