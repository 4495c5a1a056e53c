"""Character corpora in the text8 alphabet: the bundled KJV, text8, any raw text file.

Each is read whole into memory (at most ~100M one-byte ids) through ``tcsm_jax.fs``, so
paths may be bucket URLs. ``data.name=prepared`` is the streaming alternative for
bigger corpora (``experiments.prepare_data``). Raw text files are checked
(``sources.check_text``): not text, or more than ``data.max_dropped_fraction``
(default 20%) of the non-space characters dropped by cleaning, is a ``DataError``
naming the file.
"""

from __future__ import annotations

import lzma
import os

from tcsm_jax import errors, fs
from tcsm_jax.data import base, sources, text8, tokenizer

BUNDLED_PATH = os.path.join(os.path.dirname(__file__), "bundled", "kjv_text8.txt.xz")


_CHAR = tokenizer.CharTokenizer()
# What identifies the tokenizer (checkpoint metadata; zero-shot evaluation compares it
# with a prepared set's, e.g. one prepared with --tokenizer=char).
_INFO = {"tokenizer_sha256": _CHAR.sha256, "tokenizer_kind": "char"}


def _char_dataset(train, validation, name) -> base.TokenDataset:
  return base.TokenDataset(train, validation, text8.VOCAB_SIZE, text8.decode, name,
                           text8.encode_text, tokenizer=_CHAR, info=dict(_INFO))


def _dataset(ids, validation_fraction, name) -> base.TokenDataset:
  cut = int(len(ids) * (1 - validation_fraction))
  return _char_dataset(ids[:cut], ids[cut:], name)


def load_bundled(validation_fraction: float = 0.05) -> base.TokenDataset:
  """The bundled KJV corpus (text8 alphabet); the last 5% is the validation split."""
  with fs.open_file(BUNDLED_PATH, "rb") as raw, lzma.open(raw, "rb") as f:
    ids = text8.encode(f.read().decode("ascii"))
  return _dataset(ids, validation_fraction, "kjv")


def load_text8(path: str) -> base.TokenDataset:
  """text8 from ``path`` with the standard 90M/5M/5M split (test split unused here)."""
  text = text8.read_text8(path)
  try:
    ids = text8.encode(text)
  except ValueError as e:
    raise errors.DataError(f"{os.fspath(path)!r} is not text8: {e}") from e
  if len(ids) < text8.TEXT8_SPLITS["validation"][1]:
    raise errors.DataError(f"{os.fspath(path)!r} holds {len(ids):,} characters; text8 "
                           "has 100,000,000 (truncated file?)")
  a, b = text8.TEXT8_SPLITS["train"]
  c, d = text8.TEXT8_SPLITS["validation"]
  return _char_dataset(ids[a:b], ids[c:d], "text8")


def load_text_file(path: str, validation_fraction: float = 0.05,
                   max_dropped: float = sources.MAX_DROPPED_FRACTION
                   ) -> base.TokenDataset:
  """Any raw text file (``.xz``/``.gz``/``.bz2`` too), cleaned with the text8 rule."""
  if not fs.exists(path):
    raise base.DataFileNotFound(f"data.path {os.fspath(path)!r} does not exist")
  raw = sources.read_text(path)
  st = sources.TextStats()
  st.add(raw, count_dropped=True)
  st.check(path)                       # not text at all
  clean = text8.clean_text(raw)
  if not clean:
    raise errors.DataError(f"{os.fspath(path)!r} holds no text after cleaning")
  st.check(path, max_dropped)          # text, but mostly not in the alphabet
  return _dataset(text8.encode(clean), validation_fraction,
                  os.path.basename(os.fspath(path)))
