"""Deterministic, seeded, per-host sharded batches that resume at any step.

Every dataset here is a flat array of token ids cut into fixed-length chunks. The
sampler is *stateless*: the global batch of step ``s`` is a pure function of
``(seed, s)`` (an epoch-wise permutation of the chunks), so resuming at step ``s``
needs nothing but ``s``, and every host computes the same global index set and reads
only its own contiguous slice of it.
"""

from __future__ import annotations

import dataclasses
import lzma
import os
from typing import Dict, Iterator, Optional

import ml_collections
import numpy as np

from tcsm_jax.data import text8

BUNDLED_PATH = os.path.join(os.path.dirname(__file__), "bundled", "kjv_text8.txt.xz")


def encode_text(text: str) -> np.ndarray:
  """Prompt text -> ids with the text8 rule; spaces at the ends are kept."""
  lead = " " if text[:1].isspace() else ""
  trail = " " if text[-1:].isspace() and text.strip() else ""
  return text8.encode(lead + text8.clean_text(text) + trail)


@dataclasses.dataclass
class TokenDataset:
  """Token ids split into train/validation plus what a model needs to know."""

  train: np.ndarray
  validation: np.ndarray
  vocab_size: int
  decode: object          # ids [length] -> str
  name: str
  encode: object = None   # str -> ids [length] (prompts); None if not text


def load_bundled(validation_fraction: float = 0.05) -> TokenDataset:
  """The bundled KJV corpus (text8 alphabet); the last 5% is the validation split."""
  with lzma.open(BUNDLED_PATH, "rt", encoding="ascii") as f:
    ids = text8.encode(f.read())
  cut = int(len(ids) * (1 - validation_fraction))
  return TokenDataset(ids[:cut], ids[cut:], text8.VOCAB_SIZE, text8.decode, "kjv",
                      encode_text)


def load_text8(path: str) -> TokenDataset:
  """text8 from ``path`` with the standard 90M/5M/5M split (test split unused here)."""
  ids = text8.encode(text8.read_text8(path))
  if len(ids) < text8.TEXT8_SPLITS["validation"][1]:
    raise ValueError(f"{path!r} holds {len(ids):,} characters; text8 has 100,000,000 "
                     "(truncated file?)")
  a, b = text8.TEXT8_SPLITS["train"]
  c, d = text8.TEXT8_SPLITS["validation"]
  return TokenDataset(ids[a:b], ids[c:d], text8.VOCAB_SIZE, text8.decode, "text8",
                      encode_text)


def load_text_file(path: str, validation_fraction: float = 0.05) -> TokenDataset:
  """Any raw text file, cleaned with the text8 rule (``text8.clean_text``)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"data.path {path!r} does not exist")
  opener = lzma.open if path.endswith(".xz") else open
  with opener(path, "rt", encoding="utf-8", errors="replace") as f:
    clean = text8.clean_text(f.read())
  if not clean:
    raise ValueError(f"{path!r} holds no text after cleaning")
  ids = text8.encode(clean)
  cut = int(len(ids) * (1 - validation_fraction))
  return TokenDataset(ids[:cut], ids[cut:], text8.VOCAB_SIZE, text8.decode,
                      os.path.basename(path), encode_text)


@dataclasses.dataclass(frozen=True)
class ChunkSampler:
  """Epoch-shuffled fixed-length chunks of a token array, sharded across hosts.

  Args:
    tokens: ``[num_tokens]`` ids.
    seq_len: chunk length.
    global_batch: sequences per step over all hosts.
    seed: shuffling seed.
    process_index, process_count: this host's share (``jax.process_index()`` /
      ``jax.process_count()``); ``global_batch`` must divide evenly.
  """

  tokens: np.ndarray
  seq_len: int
  global_batch: int
  seed: int = 0
  process_index: int = 0
  process_count: int = 1

  def __post_init__(self):
    if self.num_chunks < 1:
      raise ValueError(f"{len(self.tokens):,} tokens are fewer than one chunk of "
                       f"{self.seq_len}")
    if self.global_batch % self.process_count:
      raise ValueError(f"global batch {self.global_batch} does not divide over "
                       f"{self.process_count} processes")

  @property
  def num_chunks(self) -> int:
    return len(self.tokens) // self.seq_len

  @property
  def local_batch(self) -> int:
    return self.global_batch // self.process_count

  def _perm(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(self.num_chunks)

  def indices(self, step: int) -> np.ndarray:
    """Chunk indices of this host's share of the batch at ``step``."""
    lo = step * self.global_batch + self.process_index * self.local_batch
    flat = np.arange(lo, lo + self.local_batch)
    epochs, pos = flat // self.num_chunks, flat % self.num_chunks
    out = np.empty_like(flat)
    for e in np.unique(epochs):
      sel = epochs == e
      out[sel] = self._perm(int(e))[pos[sel]]
    return out

  def batch(self, step: int) -> np.ndarray:
    """``[local_batch, seq_len]`` int32 tokens of this host at ``step``."""
    starts = self.indices(step) * self.seq_len
    return self.tokens[starts[:, None] + np.arange(self.seq_len)].astype(np.int32)

  def iterate(self, start_step: int = 0) -> Iterator[np.ndarray]:
    step = start_step
    while True:
      yield self.batch(step)
      step += 1


def eval_batches(tokens: np.ndarray, seq_len: int, batch: int,
                 max_batches: Optional[int] = None, process_index: int = 0,
                 process_count: int = 1) -> Iterator[np.ndarray]:
  """Consecutive non-overlapping chunks of ``tokens`` in order (the standard eval).

  Yields ``[batch // process_count, seq_len]`` per host; the tail that does not fill a
  whole global batch is dropped.
  """
  n = len(tokens) // seq_len
  chunks = tokens[:n * seq_len].reshape(n, seq_len).astype(np.int32)
  local = batch // process_count
  for i, lo in enumerate(range(0, n - batch + 1, batch)):
    if max_batches is not None and i >= max_batches:
      return
    sl = chunks[lo:lo + batch]
    yield sl[process_index * local:(process_index + 1) * local]


def load(config: ml_collections.ConfigDict, workdir: str = "") -> TokenDataset:
  """Loads the dataset named by ``config.data.name`` (``workdir`` keeps a trained
  sentencepiece model for word-piece data)."""
  name = config.data.name
  if name == "bundled":
    return load_bundled()
  if name == "text8":
    return load_text8(config.data.path)
  if name == "text_file":
    return load_text_file(config.data.path)
  if name == "wordpiece":
    from tcsm_jax.data import wordpiece
    return wordpiece.load(config.data, workdir)
  if name == "markov":
    from tcsm_jax.data import synthetic
    return synthetic.load(config.data)
  raise ValueError(f"unknown data.name {name!r}; choose bundled, text8, text_file, "
                   "wordpiece or markov")


def stats(ds: TokenDataset) -> Dict[str, int]:
  return {"train_tokens": int(len(ds.train)), "validation_tokens": int(len(ds.validation)),
          "vocab_size": int(ds.vocab_size)}
