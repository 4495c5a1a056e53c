"""What every dataset is: token arrays plus a tokenizer, and the deterministic sampler.

Every dataset is a flat array of token ids per split (an ``np.ndarray`` or a read-only
``np.memmap`` of a prepared shard) cut into fixed-length chunks. Two layouts:

* ``packed`` (default): documents joined by an end-of-document token (MDLM's "wrap");
  a chunk may span documents and nothing is padding.
* ``padded`` (LM1B style): one document per row of exactly ``seq_len`` tokens, the
  document followed by its end token and then the pad id (a document longer than a
  row continues on the next rows). Positions holding ``TokenDataset.pad_id`` are
  excluded from the loss and the NLL bound (``objective``/``likelihood`` take the
  pad id). The flat array is the rows one after another, so the same sampler cuts it.

The sampler is *stateless*: the global batch of step ``s`` is a pure function of
``(seed, s)`` (an epoch-wise permutation of the chunks), so resuming at step ``s``
needs nothing but ``s``, and every host computes the same global index set and reads
only its own contiguous slice of it (fancy indexing a memmap touches only those pages).

**Memory.** Prepared splits are read-only ``np.memmap`` arrays. Reading a row maps its
pages into the process, and recent kernels map whole large page-cache folios (up to
2 MiB) at a time: 800 random rows of a 40M-token shard left 83 MB of it mapped (all
of it). ``ChunkSampler.batch`` therefore reads a whole shard's rows from its file
(``read_rows``: ``preadv`` into the batch, nothing mapped, no page faults; every row
asked for at once with ``POSIX_FADV_WILLNEED`` so that rows not in the page cache are
read in parallel), and ``eval_batches`` (and the sampler on an array that is a view)
copy the rows out of the map and then ``release_pages`` (``madvise(MADV_DONTNEED)``:
unmap, keeping the page cache), so resident memory stays flat however big the corpus.
``python -m experiments.benchmarks.loader`` measures the train batches' tokens/s
(``experiments/results/loader.txt``).

**Ids stay in the vocabulary.** A loader may set ``id_bound`` on a token array it
memory-maps (``prepared`` does: the manifest's vocabulary size). ``ChunkSampler.batch``
and ``eval_batches`` then check every batch they cut on the host (one vectorized
max/min, microseconds) and raise ``DataError`` naming the file and the batch: a shard
whose bytes rotted after its checksum was recorded (same size and mtime, so the cached
verification passes) never hands an out-of-range id to a model.

**Blocks are checked when first read.** A loader may also set ``block_sums`` (a
``BlockSums``: the CRC32 of each 64 KiB block of the shard file, from the manifest) on a
memmapped shard. ``ChunkSampler.batch`` and ``eval_batches`` then check, after the ids,
every block their rows touch that this process has not checked yet (``check_blocks``):
the block is read from the file and its CRC32 compared, once per block and process
(zlib's CRC32 runs at about 6 GB/s on the 2-core CPU, so checking a whole 18 GB
OpenWebText shard costs about 3 s of CPU over a run's first pass). A mismatch -- bit rot
that keeps every id in the vocabulary, same size and mtime -- is a ``DataError``
naming the shard, the block and its byte range.

This module imports nothing else of the data package: loaders import it, and
``pipeline`` imports the loaders (dependencies point one way).
"""

from __future__ import annotations

import dataclasses
import functools
import mmap
import os
import threading
import zlib
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Sequence

import numpy as np

from tcsm_jax import errors

LAYOUTS = ("packed", "padded")


class DataFileNotFound(errors.DataError, FileNotFoundError):
  """A data, tokenizer or prepared file that does not exist (named in the message)."""


def _mmap_of(arr) -> Optional[mmap.mmap]:
  while arr is not None:
    m = getattr(arr, "_mmap", None)
    if isinstance(m, mmap.mmap):
      return m
    arr = getattr(arr, "base", None)
  return None


def advise_random(arr) -> None:
  """Tells the kernel a memmapped array is read at random (no read-ahead)."""
  m = _mmap_of(arr)
  if m is not None and hasattr(mmap, "MADV_RANDOM"):
    m.madvise(mmap.MADV_RANDOM)


def release_pages(arr) -> None:
  """Unmaps the pages a read of a memmapped array mapped (module docstring); no-op for
  an in-memory array. The data stay in the page cache."""
  m = _mmap_of(arr)
  if m is not None and hasattr(mmap, "MADV_DONTNEED"):
    try:
      m.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):   # closed map, or an OS without it: only memory
      pass


def read_ahead(arr, starts: np.ndarray, length: int) -> None:
  """Starts reading the rows ``arr[s:s + length]`` (``s`` in ``starts``) of a memmapped
  1-D array from disk at once (``madvise(MADV_WILLNEED)`` per row), so that a batch's
  rows missing from the page cache are read in parallel rather than one page fault
  after another (a cold shard: 4-8x the tokens/s, ``experiments.benchmarks.loader``).
  Maps nothing into the process; a no-op for an in-memory array."""
  m = _mmap_of(arr)
  if m is None or not hasattr(mmap, "MADV_WILLNEED") or not len(starts):
    return
  try:
    first = np.asarray(arr).ctypes.data - np.frombuffer(m, np.uint8).ctypes.data
    item = arr.dtype.itemsize
    page = mmap.PAGESIZE
    for lo in np.sort(np.asarray(starts, np.int64) * item + first).tolist():
      at = lo - lo % page
      m.madvise(mmap.MADV_WILLNEED, at, lo + length * item - at)
  except (OSError, ValueError):   # closed map, or an OS without it: only speed
    pass


def _file_of(arr) -> Optional[str]:
  """The file whose bytes ``arr`` is, from byte 0 (a whole prepared shard memmapped
  without offset), else None."""
  name = getattr(arr, "filename", None)
  m = _mmap_of(arr)
  if (not name or m is None or arr.ndim != 1 or not arr.flags.c_contiguous
      or getattr(arr, "offset", 0) or not hasattr(os, "preadv")):
    return None
  try:
    if np.asarray(arr).ctypes.data != np.frombuffer(m, np.uint8).ctypes.data:
      return None                   # a view into the middle of the map
  except ValueError:                # a closed map
    return None
  return name


def read_rows(path: str, dtype, starts: np.ndarray, length: int) -> np.ndarray:
  """``[len(starts), length]`` ids of ``dtype`` read from the file at element offsets
  ``starts`` with one ``preadv`` per row into the result (no page faults, nothing
  mapped), after asking the kernel for every row at once (``POSIX_FADV_WILLNEED``) so
  that rows missing from the page cache are read in parallel."""
  dtype = np.dtype(dtype)
  out = np.empty((len(starts), length), dtype)
  nbytes = length * dtype.itemsize
  offsets = (np.asarray(starts, np.int64) * dtype.itemsize).tolist()
  fd = os.open(path, os.O_RDONLY)
  try:
    if hasattr(os, "posix_fadvise"):
      for off in offsets:
        os.posix_fadvise(fd, off, nbytes, os.POSIX_FADV_WILLNEED)
    for r, off in enumerate(offsets):
      if os.preadv(fd, [out[r]], off) != nbytes:
        raise errors.DataError(f"{path!r}: short read of {nbytes} bytes at byte {off} "
                               "(the shard shrank after it was loaded?)")
  finally:
    os.close(fd)
  return out


def _id_bound(arr) -> Optional[int]:
  """The ``id_bound`` a loader set on ``arr`` or on the array it is a view of."""
  while arr is not None:
    bound = getattr(arr, "id_bound", None)
    if bound is not None:
      return int(bound)
    arr = getattr(arr, "base", None)
  return None


def check_ids(batch: np.ndarray, tokens, where: str) -> np.ndarray:
  """``batch`` (cut from ``tokens``) if its ids are in ``[0, tokens' id_bound)``.

  Raises:
    errors.DataError: naming the file of ``tokens`` and ``where`` (the batch).
  """
  bound = _id_bound(tokens)
  if bound is None or not batch.size:
    return batch
  hi, lo = int(batch.max()), int(batch.min())
  if hi >= bound or lo < 0:
    name = getattr(tokens, "filename", None) or "the token array"
    raise errors.DataError(
        f"{name!r}: {where} holds id {hi if hi >= bound else lo}, outside the "
        f"vocabulary of {bound}: the shard changed after it was verified (bit rot?); "
        "`python -m experiments.prepare_data --verify --out=DIR` finds the damage, "
        "prepare the data again")
  return batch


class BlockSums:
  """The CRC32 of each ``block_bytes`` block of a shard file (the last one may be
  shorter), checked the first time this process reads a block (module docstring)."""

  def __init__(self, path: str, block_bytes: int, crc32: Sequence[int]):
    self.path, self.block_bytes = path, int(block_bytes)
    self.crc32 = np.asarray(crc32, np.int64)
    self.checked = np.zeros(len(self.crc32), bool)
    self.remaining = len(self.crc32)  # blocks not checked yet (0: nothing left to do)
    self._buf: Optional[bytearray] = None
    self._lock = threading.Lock()     # the prefetch thread and the main one

  def forget(self) -> None:
    """Marks every block unchecked again (the loader benchmark's worst case)."""
    self.checked[:] = False
    self.remaining = len(self.crc32)

  def check(self, byte_starts: np.ndarray, nbytes: int, where: str) -> None:
    """Checks the unchecked blocks under ``[s, s + nbytes)`` for ``s`` in
    ``byte_starts``. Raises ``errors.DataError`` naming the shard and the block."""
    if not self.remaining or nbytes <= 0 or not len(byte_starts):
      return
    s = np.asarray(byte_starts, np.int64)
    lo, hi = s // self.block_bytes, (s + nbytes - 1) // self.block_bytes
    span = int((hi - lo).max())
    if span <= 1 and self.checked[lo].all() and self.checked[hi].all():
      return                       # the common case once the run has warmed up
    blocks = np.unique(lo if span == 0 else
                       (lo[:, None] + np.arange(span + 1)).clip(max=hi[:, None]))
    blocks = blocks[~self.checked[blocks]]
    if not blocks.size:
      return
    with self._lock:
      if self._buf is None:        # one reused buffer: flat memory (glibc keeps freed
        self._buf = bytearray(self.block_bytes)     # reads in its heap otherwise)
      view = memoryview(self._buf)
      fd = os.open(self.path, os.O_RDONLY)
      try:
        for b in blocks.tolist():
          if self.checked[b]:      # checked by another thread meanwhile
            continue
          n = os.preadv(fd, [self._buf], b * self.block_bytes)
          crc = zlib.crc32(view[:n])
          if crc != int(self.crc32[b]):
            end = b * self.block_bytes + n
            raise errors.DataError(
                f"{self.path!r}: block {b} (bytes {b * self.block_bytes:,} to {end:,}) "
                f"has CRC32 {crc:08x}, the manifest says {int(self.crc32[b]):08x}: the "
                f"shard changed after it was prepared (bit rot?) and {where} reads it; "
                "`python -m experiments.prepare_data --verify --out=DIR` checks every "
                "shard, prepare the data again")
          self.checked[b] = True
          self.remaining -= 1
      finally:
        os.close(fd)


def _attr(arr, name: str):
  """Attribute ``name`` a loader set on ``arr`` or on the array it is a view of."""
  while arr is not None:
    value = getattr(arr, name, None)
    if value is not None:
      return value
    arr = getattr(arr, "base", None)
  return None


def check_blocks(tokens, starts: np.ndarray, length: int, where: str) -> None:
  """Checks the blocks of ``tokens``' shard under the rows ``tokens[s:s + length]``
  (``s`` in ``starts``) that this process has not checked (``BlockSums``); a no-op
  for arrays without ``block_sums`` (in memory, or a manifest without checksums)."""
  sums = _attr(tokens, "block_sums")
  if sums is None or not sums.remaining:
    return
  first = 0
  m = _mmap_of(tokens)
  if m is not None:
    try:
      first = np.asarray(tokens).ctypes.data - np.frombuffer(m, np.uint8).ctypes.data
    except ValueError:           # a closed map: nothing can be read through it anyway
      return
  item = tokens.dtype.itemsize
  sums.check(np.asarray(starts, np.int64) * item + first, length * item, where)


@dataclasses.dataclass
class TokenDataset:
  """Token ids split into train/validation plus what a model needs to know.

  Attributes:
    train, validation: ``[num_tokens]`` ids (ndarray or read-only memmap).
    vocab_size: number of token ids the model predicts (pad id included, if any).
    decode: ids ``[length]`` -> str (``[n, length]`` -> list of str); drops padding.
    name: short name for logs and reports.
    encode: str -> ids ``[length]`` (prompts); None if the data are not text.
    pad_id: the padding id of the ``padded`` layout (None: no padding anywhere).
    eos_id: the end-of-document id, if the tokenizer has one.
    layout: ``packed`` or ``padded`` (module docstring).
    tokenizer: the ``tokenizer.Tokenizer`` that made the ids, if known.
    info: what identifies the data (for prepared sets: the manifest's tokenizer
      sha256, source, ...); stored with checkpoints by ``stats``.
  """

  train: np.ndarray
  validation: np.ndarray
  vocab_size: int
  decode: Callable
  name: str
  encode: Optional[Callable] = None
  pad_id: Optional[int] = None
  eos_id: Optional[int] = None
  layout: str = "packed"
  tokenizer: Any = None
  info: Dict[str, Any] = dataclasses.field(default_factory=dict)


@functools.lru_cache(maxsize=2)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The epoch's chunk order, computed once per epoch (not at every step) and held as
  int32 when it fits: 4 bytes per chunk (35 MB for OpenWebText at 1024 tokens), the
  only memory of the sampler that grows with the corpus. Same values as
  ``default_rng([seed, epoch]).permutation(n)``."""
  ids = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
  perm = np.random.default_rng([seed, epoch]).permutation(ids)
  perm.flags.writeable = False
  return perm


@dataclasses.dataclass(frozen=True)
class ChunkSampler:
  """Epoch-shuffled fixed-length chunks of a token array, sharded across hosts.

  Args:
    tokens: ``[num_tokens]`` ids (ndarray or memmap; only the rows of a batch are read).
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
    return _permutation(self.seed, epoch, self.num_chunks)

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
    """``[local_batch, seq_len]`` int32 tokens of this host at ``step``.

    A memmapped shard's rows are read from its file (``read_rows``: one ``preadv``
    per row, every row asked for at once; no page faults and nothing left mapped);
    an in-memory array's (or a view's) rows are copied whole from a
    ``[num_chunks, seq_len]`` view. The ids are checked in the stored dtype, then
    widened. Same values as indexing ``tokens`` (tested);
    ``experiments.benchmarks.loader`` measures the tokens/s."""
    n, L = self.num_chunks, self.seq_len
    idx = self.indices(step)
    path = _file_of(self.tokens)
    if path is not None:     # a whole shard: read the rows, map nothing
      raw = read_rows(path, self.tokens.dtype, idx * L, L)
    else:
      read_ahead(self.tokens, idx * L, L)
      rows = np.asarray(self.tokens)[:n * L].reshape(n, L)   # a view: reads nothing
      raw = np.take(rows, idx, axis=0)
      release_pages(self.tokens)
    where = f"the train batch of step {step}"
    check_ids(raw, self.tokens, where)
    check_blocks(self.tokens, idx * L, L, where)
    return raw.astype(np.int32, copy=False)

  def iterate(self, start_step: int = 0) -> Iterator[np.ndarray]:
    step = start_step
    while True:
      yield self.batch(step)
      step += 1


def eval_batches(tokens: np.ndarray, seq_len: int, batch: int,
                 max_batches: Optional[int] = None, process_index: int = 0,
                 process_count: int = 1) -> Iterator[np.ndarray]:
  """Consecutive non-overlapping chunks of ``tokens`` in order (the standard eval).

  Yields ``[batch // process_count, seq_len]`` int32 per host; the tail that does not
  fill a whole global batch is dropped. Only the rows of each batch are read (and
  converted), so a memmapped split stays on disk.
  """
  n = len(tokens) // seq_len
  chunks = tokens[:n * seq_len].reshape(n, seq_len)
  local = batch // process_count
  for i, lo in enumerate(range(0, n - batch + 1, batch)):
    if max_batches is not None and i >= max_batches:
      return
    sl = chunks[lo + process_index * local:lo + (process_index + 1) * local]
    out = np.array(sl, dtype=np.int32)
    release_pages(tokens)
    check_ids(out, tokens, f"eval batch {i}")
    check_blocks(tokens, np.asarray([(lo + process_index * local) * seq_len]),
                 local * seq_len, f"eval batch {i}")
    yield out


def stats(ds: TokenDataset) -> Dict[str, Any]:
  """Sizes (and, where known, layout, padding and tokenizer identity) of a dataset."""
  out: Dict[str, Any] = {"train_tokens": int(len(ds.train)),
                         "validation_tokens": int(len(ds.validation)),
                         "vocab_size": int(ds.vocab_size)}
  if ds.layout != "packed":
    out["layout"] = ds.layout
  if ds.pad_id is not None:
    out["pad_id"] = int(ds.pad_id)
  if ds.info.get("tokenizer_sha256"):
    out["tokenizer_sha256"] = ds.info["tokenizer_sha256"]
  return out


def pack(docs: Iterable[np.ndarray], separator: Sequence[int] = ()) -> np.ndarray:
  """Documents' ids joined, each followed by ``separator`` (e.g. ``[eos]``): int32."""
  sep = np.asarray(list(separator), np.int32)
  parts = []
  for d in docs:
    parts.append(np.asarray(d, np.int32))
    if sep.size:
      parts.append(sep)
  return np.concatenate(parts) if parts else np.zeros((0,), np.int32)


def pad_rows(docs: Iterable[np.ndarray], seq_len: int, pad_id: int,
             separator: Sequence[int] = ()) -> np.ndarray:
  """One document per row: ``[rows, seq_len]`` int32, each document followed by
  ``separator`` and padded with ``pad_id``; longer documents continue on more rows."""
  sep = np.asarray(list(separator), np.int32)
  rows = []
  for d in docs:
    ids = np.concatenate([np.asarray(d, np.int32), sep])
    if not ids.size:
      continue
    n = -(-len(ids) // seq_len)
    r = np.full((n * seq_len,), pad_id, np.int32)
    r[:len(ids)] = ids
    rows.append(r.reshape(n, seq_len))
  return np.concatenate(rows) if rows else np.zeros((0, seq_len), np.int32)
