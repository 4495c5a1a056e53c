"""Prepared token shards: tokenize a corpus once, read it memory-mapped many times.

``prepare(out, source, tokenizer)`` (what ``python -m experiments.prepare_data`` runs)
writes into ``out``:

* ``<split>.bin``: the split's token ids, raw little-endian ``uint16`` when the
  vocabulary has at most 65,536 ids, else ``uint32`` (one shard per split, so every
  split is one ``np.memmap``);
* ``tokenizer.json`` / ``tokenizer.model``: a copy of the tokenizer file (none for
  ``char``), so the directory is self-contained and decodes its own samples;
* ``manifest.json``, written last (its presence means the preparation finished)::

    {"format": "tcsm_jax.prepared/1", "name": ..., "created": ...,
     "source": {"kind": "text8"|"text"|"jsonl"|"tfds", "path"/"tfds_name": ..., ...},
     "tokenizer": {"kind": "char"|"sentencepiece"|"hf", "path": <original path>,
                   "file": "tokenizer.json"|null, "sha256": ..., "vocab_size": ...,
                   "eos_id": ..., "pad_id": ..., "separator": [...], ...},
     "vocab_size": <ids the model predicts; a pad id appended to the tokenizer's
                    vocabulary included>,
     "special_tokens": {"eos": id|null, "pad": id|null, "separator": [...]},
     "dtype": "uint16"|"uint32", "layout": "packed"|"padded",
     "seq_len": <row length of the padded layout; null when packed>,
     "splits": {"train": {"file": "train.bin", "num_tokens": ..., "num_real_tokens": ...,
                          "num_documents": ..., "bytes": ..., "sha256": ...,
                          "block_bytes": 65536, "crc32": <hex: 8 digits per block>},
                "validation": {...}, ["test": {...}]}}

``load(path)`` returns a ``base.TokenDataset`` whose ``train``/``validation`` are
read-only ``np.memmap`` arrays: the sampler's fancy indexing touches only the pages of
the rows it reads, so resident memory stays flat however big the corpus is (tested
with tens of millions of tokens). ``decode``/``encode`` use the manifest's tokenizer.

**Checks.** Every load checks, for each shard it opens, that the file exists, that its
size is ``num_tokens * itemsize`` of the manifest's dtype, that the dtype can hold the
vocabulary, that the tokenizer copy has the manifest's sha256 and vocabulary, and that
the layout and (for ``padded``) the row length match the config; a mismatch is a
``DataError`` naming the file. The sha256 of a shard (hours of reading at OpenWebText
size on a slow disk, a minute on a fast one) is verified according to ``verify``:

* ``once`` (default): on the first load on each machine; the result is recorded in
  ``<dir>/.verified.json`` keyed by the shard's size and mtime, so a later load skips
  the hash unless the file changed. A read-only directory is hashed at every load
  (with a warning). ``python -m experiments.prepare_data --verify --out=DIR`` hashes
  everything up front and writes the record.
* ``always``: hash at every load.
* ``size``: never hash (size, dtype and vocabulary checks only).

Hashing also checks that no id reaches the vocabulary size. Whatever the record says,
every batch cut from a memmapped shard is checked on the host against the vocabulary
(``base.check_ids``: the shard's ``id_bound``), so bytes that rot after verification
(same size and mtime) are a ``DataError`` naming the shard and the batch, never an
out-of-range id in a model.

**Blocks.** The manifest also holds the CRC32 of every 64 KiB block of each shard
(``block_bytes``; ``crc32``: the big-endian CRCs as one hex string, 8 digits per block,
e.g. 2.2 MB of manifest for OpenWebText's 18 GB). 64 KiB, not 1 MiB: a 2 KiB row
costs at most two blocks of checking, so even the first pass over a shard far bigger
than the batches read so far cuts batches at >= 10x what an H200 step consumes
(``experiments/results/loader.txt``, ``batch, blocks unchecked``). A memmapped shard carries them (``base.BlockSums``), and
the loader checks each block the first time the process reads it (the train sampler
and the eval batches, ``base.check_blocks``): bytes that rot with their ids still in
the vocabulary, after the sha256 was recorded (same size and mtime), are a
``DataError`` naming the shard and the block, status 2 in the binaries. A manifest
written before block checksums existed (no ``crc32`` entry) still loads: its shards are
then guarded only by the sha256 (``verify``) and the per-batch id check, and
``python -m experiments.prepare_data --verify --out=DIR`` adds the block checksums to
it once every shard's sha256 matches.

**Buckets.** ``np.memmap`` needs a local file. A prepared directory on a bucket is read
fully into memory (and always hashed) when the splits loaded total at most
``REMOTE_IN_MEMORY_LIMIT`` (256 MiB: evaluation sets, small corpora); a bigger one is a
``DataError`` asking to copy the directory to local disk first (``gsutil -m cp -r``).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import zlib
from typing import Dict, Iterable, List, Optional

import ml_collections
import numpy as np
from absl import logging

from tcsm_jax import errors, fs
from tcsm_jax.data import base, sources, tokenizer as tok_lib

FORMAT = "tcsm_jax.prepared/1"
MANIFEST = "manifest.json"
MARKER = ".verified.json"
VERIFY_MODES = ("once", "always", "size")
REMOTE_IN_MEMORY_LIMIT = 256 << 20
_HASH_CHUNK = 1 << 20
BLOCK_BYTES = 1 << 16       # one CRC32 per block of a shard (module docstring)
_WRITE_TOKENS = 1 << 22


def dtype_for(vocab_size: int) -> str:
  """``uint16`` when every id fits, else ``uint32``."""
  return "uint16" if vocab_size <= 1 << 16 else "uint32"


def special_ids(tok: tok_lib.Tokenizer, layout: str):
  """``(vocab_size, pad_id)`` of a dataset: padded without a tokenizer pad token
  appends one id (``pad_id = tokenizer vocab size``)."""
  if layout == "packed":
    return tok.vocab_size, None
  pad = tok.pad_id if tok.pad_id is not None else tok.vocab_size
  return max(tok.vocab_size, pad + 1), int(pad)


# ----------------------------------------------------------------------------- writing


class BlockCRC:
  """CRC32 of each ``BLOCK_BYTES`` block of a byte stream fed in pieces of any size."""

  def __init__(self):
    self.crcs: List[int] = []
    self._crc, self._fill = 0, 0

  def update(self, data) -> None:
    view, pos = memoryview(data).cast("B"), 0
    while pos < len(view):
      take = min(BLOCK_BYTES - self._fill, len(view) - pos)
      self._crc = zlib.crc32(view[pos:pos + take], self._crc)
      self._fill += take
      pos += take
      if self._fill == BLOCK_BYTES:
        self.crcs.append(self._crc)
        self._crc, self._fill = 0, 0

  def digest(self) -> str:
    """The CRCs as the manifest holds them: big-endian, 8 hex digits per block."""
    crcs = self.crcs + ([self._crc] if self._fill else [])
    return np.asarray(crcs, ">u4").tobytes().hex()


class _ShardWriter:
  """Streams ids into one shard (temporary name, renamed on success for local files),
  hashing as it goes."""

  def __init__(self, path, dtype: str):
    self.path, self.dtype = path, np.dtype(dtype)
    self.tmp = path if fs.is_remote(path) else fs.path(path).parent / (
        f".{fs.path(path).name}.tmp")
    self.f = fs.open_file(self.tmp, "wb")
    self.sha = hashlib.sha256()
    self.blocks = BlockCRC()
    self.num_tokens = 0

  def write(self, ids: np.ndarray) -> None:
    data = np.ascontiguousarray(ids, dtype=self.dtype).tobytes()
    self.f.write(data)
    self.sha.update(data)
    self.blocks.update(data)
    self.num_tokens += int(ids.size)

  def close(self) -> Dict[str, object]:
    self.f.close()
    if self.tmp != self.path:
      fs.path(self.tmp).replace(fs.path(self.path))
    return {"file": fs.path(self.path).name, "num_tokens": self.num_tokens,
            "bytes": self.num_tokens * self.dtype.itemsize, "sha256": self.sha.hexdigest(),
            "block_bytes": BLOCK_BYTES, "crc32": self.blocks.digest()}

  def abort(self) -> None:
    try:
      self.f.close()
    finally:
      fs.remove(self.tmp)


_BATCH_CHARS = 1 << 22   # a batch of documents holds at most about this many characters
CUT_CHARS = 1 << 20      # a long document is tokenized this many characters at a time


def _batches(docs: Iterable[str], n: int):
  """Lists of ``n`` documents (or pieces), fewer when they hold ``_BATCH_CHARS``."""
  buf: List[str] = []
  chars = 0
  for d in docs:
    buf.append(d)
    chars += len(d)
    if len(buf) >= n or chars >= _BATCH_CHARS:
      yield buf
      buf, chars = [], 0
  if buf:
    yield buf


class _Encoder:
  """The ids of a split's documents, in order: ``add(batch)`` returns what to write
  (packed ids, or whole padded rows). A long document (``sources.Piece``s) is
  tokenized ``CUT_CHARS`` characters at a time, cut where ``tok.safe_cut`` says, so
  memory stays bounded and the ids are those of the whole document."""

  def __init__(self, tok: tok_lib.Tokenizer, layout: str, seq_len: int, pad, sep):
    self.tok, self.layout, self.seq_len, self.pad = tok, layout, seq_len, pad
    self.sep = np.asarray(list(sep), np.int32)
    self.real = self.docs = 0
    self.carry: Optional[str] = None    # a long document's text not yet tokenized
    self.long_n = 0                     # ids of the long document so far
    self.rest = np.zeros((0,), np.int32)  # padded: its ids not yet in whole rows

  def add(self, batch: List[str]) -> np.ndarray:
    out, plain = [], []
    for d in batch:
      if isinstance(d, sources.Piece):
        if plain:
          out.append(self._plain(plain))
          plain = []
        out.extend(self._piece(d))
      else:
        plain.append(d)
    if plain:
      out.append(self._plain(plain))
    return np.concatenate(out) if out else np.zeros((0,), np.int32)

  def _plain(self, docs: List[str]) -> np.ndarray:
    self.docs += len(docs)
    encoded = [e for e in self.tok.encode_batch(docs) if e.size]
    if self.layout == "packed":
      ids = base.pack(encoded, self.sep)
      self.real += ids.size
      return ids
    self.real += sum(e.size + self.sep.size for e in encoded)
    return base.pad_rows(encoded, self.seq_len, self.pad, self.sep).reshape(-1)

  def _piece(self, piece: "sources.Piece") -> List[np.ndarray]:
    self.carry = (self.carry or "") + str(piece)
    out = []
    margin = 2 * tok_lib.Tokenizer.SAFE_WINDOW     # the text right of a cut is known
    while len(self.carry) > CUT_CHARS + margin:
      cut = self.tok.safe_cut(self.carry, CUT_CHARS)
      out.append(self._long(self.tok.encode(self.carry[:cut]), False))
      self.carry = self.carry[cut:]
    if piece.last:
      out.append(self._long(self.tok.encode(self.carry), True))
      self.carry = None
      self.docs += 1
    return out

  def _long(self, ids: np.ndarray, last: bool) -> np.ndarray:
    ids = np.asarray(ids, np.int32)
    self.long_n += ids.size
    if last and self.long_n:
      ids = np.concatenate([ids, self.sep])
      self.real += self.long_n + self.sep.size
    n, self.long_n = self.long_n, (0 if last else self.long_n)
    if self.layout == "packed":
      return ids
    self.rest = np.concatenate([self.rest, ids])
    if last and n:
      rows = -(-self.rest.size // self.seq_len)
      self.rest = np.concatenate([self.rest, np.full(
          (rows * self.seq_len - self.rest.size,), self.pad, np.int32)])
    whole = self.rest.size // self.seq_len * self.seq_len
    done, self.rest = self.rest[:whole], self.rest[whole:]
    return done


def prepare(out: str, source: sources.Source, tok: tok_lib.Tokenizer, *,
            layout: str = "packed", seq_len: int = 0, batch_docs: int = 512,
            overwrite: bool = False, progress: bool = True,
            max_dropped: float = sources.MAX_DROPPED_FRACTION) -> Dict[str, object]:
  """Tokenizes every split of ``source`` into ``out`` (module docstring); returns the
  manifest. ``layout='padded'`` needs ``seq_len`` (the row length)."""
  if layout not in base.LAYOUTS:
    raise errors.DataError(f"layout must be one of {base.LAYOUTS}, got {layout!r}")
  if layout == "padded" and seq_len < 1:
    raise errors.DataError("the padded layout needs the row length (--seq_len)")
  if layout == "padded" and source.joined:
    raise errors.DataError(f"{source.name} is one continuous text; it has no documents "
                           "to pad one per row (use the packed layout)")
  fs.confine(out)
  manifest_path = fs.join(out, MANIFEST)
  if fs.exists(manifest_path) and not overwrite:
    raise errors.DataError(f"{os.fspath(out)!r} already holds a prepared dataset; pass "
                           "--overwrite to replace it")
  fs.makedirs(out)
  if fs.exists(manifest_path):
    fs.remove(manifest_path)           # an interrupted overwrite leaves no stale manifest
  vocab, pad = special_ids(tok, layout)
  dtype = dtype_for(vocab)
  sep = [] if source.joined else tok.separator
  tdesc = dict(tok.describe(), file=tok_lib.FILE_NAMES.get(tok.kind))
  if tok.file_bytes() is not None:
    fs.write_bytes_atomic(fs.join(out, tdesc["file"]), tok.file_bytes())
  count_dropped = tok.kind == "char" and bool(source.check_path)
  splits = {}
  for split, docs_fn in source.splits.items():
    writer = _ShardWriter(fs.join(out, f"{split}.bin"), dtype)
    stats = sources.TextStats()
    enc = _Encoder(tok, layout, seq_len, pad, sep)
    try:
      bar = _progress(source.num_docs.get(split), f"{split}", progress)
      for batch in _batches(docs_fn(), batch_docs):
        if source.check_path:
          for d in batch:
            stats.add(d, count_dropped)
          if stats.chars > 1 << 20 or stats.invalid > 1000:
            stats.check(source.check_path)           # fail fast on binary junk
        done = enc.docs
        ids = enc.add(batch)
        if ids.size and (ids.min() < 0 or ids.max() >= vocab):
          raise errors.DataError(f"tokenizer {tok!r} produced id {int(ids.max())} outside "
                                 f"its vocabulary of {vocab}")
        writer.write(ids)
        bar.update(enc.docs - done)
      bar.close()
      n_docs, real = enc.docs, enc.real
      if source.check_path:
        stats.check(source.check_path, max_dropped if count_dropped else None)
    except BaseException:
      writer.abort()
      raise
    entry = writer.close()
    entry.update(num_real_tokens=int(real), num_documents=n_docs)
    if layout == "padded":
      entry["num_rows"] = entry["num_tokens"] // seq_len
    splits[split] = entry
    logging.info("%s: %s documents, %s tokens -> %s", split, f"{n_docs:,}",
                 f"{entry['num_tokens']:,}", entry["file"])
  if not any(s["num_tokens"] for s in splits.values()):
    raise errors.DataError(f"{source.name}: no tokens at all after tokenization")
  manifest = {
      "format": FORMAT, "name": source.name,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "source": source.description, "tokenizer": tdesc, "vocab_size": int(vocab),
      "special_tokens": {"eos": tok.eos_id, "pad": pad, "separator": sep},
      "dtype": dtype, "layout": layout, "seq_len": seq_len if layout == "padded" else None,
      "splits": splits}
  fs.write_text_atomic(manifest_path, json.dumps(manifest, indent=2) + "\n")
  if not fs.is_remote(out):
    _write_marker(out, {e["file"]: _marker_entry(fs.join(out, e["file"]), e["sha256"])
                        for e in splits.values()})
  return manifest


def write_shards(out: str, splits: Dict[str, np.ndarray], tok: tok_lib.Tokenizer, *,
                 layout: str = "packed", seq_len: int = 0, name: str = "",
                 source: Optional[Dict[str, object]] = None,
                 num_documents: Optional[Dict[str, int]] = None,
                 pad_id: Optional[int] = None) -> Dict[str, object]:
  """Writes already tokenized splits (flat id arrays, rows concatenated for ``padded``)
  plus a manifest: for tests and for data tokenized elsewhere."""
  vocab, pad = special_ids(tok, layout)
  if pad_id is not None:
    pad = pad_id
  dtype = dtype_for(vocab)
  fs.makedirs(out)
  tdesc = dict(tok.describe(), file=tok_lib.FILE_NAMES.get(tok.kind))
  if tok.file_bytes() is not None:
    fs.write_bytes_atomic(fs.join(out, tdesc["file"]), tok.file_bytes())
  entries = {}
  for split, ids in splits.items():
    w = _ShardWriter(fs.join(out, f"{split}.bin"), dtype)
    for lo in range(0, len(ids), _WRITE_TOKENS):
      w.write(np.asarray(ids[lo:lo + _WRITE_TOKENS]))
    e = w.close()
    real = e["num_tokens"] if pad is None else int(
        sum(int((np.asarray(ids[lo:lo + _WRITE_TOKENS]) != pad).sum())
            for lo in range(0, len(ids), _WRITE_TOKENS)))
    e.update(num_real_tokens=real, num_documents=(num_documents or {}).get(split))
    entries[split] = e
  manifest = {"format": FORMAT, "name": name or fs.path(out).name,
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                  timespec="seconds"),
              "source": source or {"kind": "arrays"}, "tokenizer": tdesc,
              "vocab_size": int(vocab),
              "special_tokens": {"eos": tok.eos_id, "pad": pad, "separator": tok.separator},
              "dtype": dtype, "layout": layout,
              "seq_len": seq_len if layout == "padded" else None, "splits": entries}
  fs.write_text_atomic(fs.join(out, MANIFEST), json.dumps(manifest, indent=2) + "\n")
  return manifest


class _NoBar:

  def update(self, n):
    pass

  def close(self):
    pass


def _progress(total, desc, enabled):
  if not enabled:
    return _NoBar()
  from tqdm import auto as tqdm_auto
  return tqdm_auto.tqdm(total=total, desc=f"tokenizing {desc}", unit="doc",
                        mininterval=2.0)


# ----------------------------------------------------------------------------- reading


def read_manifest(path: str) -> Dict[str, object]:
  """The manifest of a prepared directory; ``DataError`` if missing or unreadable."""
  mpath = fs.join(path, MANIFEST)
  if not fs.exists(mpath):
    raise base.DataFileNotFound(
        f"{os.fspath(path)!r} is not a prepared dataset (no {MANIFEST}); make one with "
        "`python -m experiments.prepare_data --source=... --tokenizer=... --out=DIR`")
  try:
    m = json.loads(fs.read_text(mpath))
  except (ValueError, UnicodeDecodeError) as e:
    raise errors.DataError(f"{os.fspath(mpath)!r} is not valid JSON: {e}") from e
  if not isinstance(m, dict) or m.get("format") != FORMAT:
    raise errors.DataError(f"{os.fspath(mpath)!r} is not a {FORMAT} manifest "
                           f"(format {m.get('format') if isinstance(m, dict) else None!r})")
  for key in ("tokenizer", "vocab_size", "dtype", "layout", "splits"):
    if key not in m:
      raise errors.DataError(f"{os.fspath(mpath)!r} has no {key!r} entry")
  if not isinstance(m["tokenizer"], dict) or not isinstance(m["splits"], dict) or not all(
      isinstance(e, dict) for e in m["splits"].values()):
    raise errors.DataError(f"{os.fspath(mpath)!r}: 'tokenizer' and each split must be "
                           "JSON objects")
  # Every file it names is a plain name in its own directory (``fs.child``).
  if m["tokenizer"].get("file") is not None:
    fs.child(path, m["tokenizer"]["file"], f"tokenizer file named by {MANIFEST}")
  for s, e in m["splits"].items():
    fs.child(path, e.get("file"), f"shard of split {s!r} named by {MANIFEST}")
  return m


def _marker_entry(p, sha: str) -> Dict[str, object]:
  st = os.stat(fs.local_path(p))
  return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha}


def _read_marker(path) -> Dict[str, Dict[str, object]]:
  p = fs.join(path, MARKER)
  try:
    return json.loads(fs.read_text(p)) if fs.exists(p) else {}
  except (ValueError, OSError):
    return {}


def _write_marker(path, entries: Dict[str, Dict[str, object]]) -> None:
  marker = _read_marker(path)
  marker.update(entries)
  try:
    fs.write_text_atomic(fs.join(path, MARKER), json.dumps(marker, indent=1) + "\n")
  except OSError as e:
    logging.warning("cannot record verified checksums in %s (%s); shards will be "
                    "hashed again at the next load", os.fspath(path), e)


def _hash_file(p, dtype, vocab_size: int, blocks: Optional[BlockCRC] = None):
  """``(sha256, max id, bytes)`` of a shard, read in 1 MiB pieces into one reused
  buffer (flat memory); ``blocks`` also gets every byte (block CRC32s)."""
  del vocab_size
  sha, top, nbytes = hashlib.sha256(), -1, 0
  buf = bytearray(_HASH_CHUNK)
  view = memoryview(buf)
  with fs.open_file(p, "rb") as f:
    while True:
      n = f.readinto(buf)
      if not n:
        break
      sha.update(view[:n])
      if blocks is not None:
        blocks.update(view[:n])
      nbytes += n
      whole = n // dtype.itemsize * dtype.itemsize
      if whole:
        top = max(top, int(np.frombuffer(buf, dtype, whole // dtype.itemsize).max()))
  return sha.hexdigest(), top, nbytes


def _check_hash(p, entry, sha: str, top: int, vocab_size: int) -> None:
  if sha != entry.get("sha256"):
    raise errors.DataError(f"{os.fspath(p)!r} has sha256 {sha[:12]}..., the manifest "
                           f"says {str(entry.get('sha256'))[:12]}...: the shard is "
                           "corrupt or from another preparation; prepare again")
  if top >= vocab_size:
    raise errors.DataError(f"{os.fspath(p)!r} holds id {top}, outside the manifest's "
                           f"vocabulary of {vocab_size}")


def _dtype(m, path) -> np.dtype:
  name = m["dtype"]
  if name not in ("uint16", "uint32"):
    raise errors.DataError(f"{os.fspath(fs.join(path, MANIFEST))!r}: dtype {name!r} is "
                           "not uint16 or uint32")
  dt = np.dtype(name).newbyteorder("<")
  if int(m["vocab_size"]) > np.iinfo(dt).max + 1:
    raise errors.DataError(f"{os.fspath(fs.join(path, MANIFEST))!r}: a vocabulary of "
                           f"{m['vocab_size']} does not fit {name}")
  return dt


def _open_split(path, m, split: str, verify: str, marker: Dict, in_memory: bool):
  entry = m["splits"][split]
  p = fs.child(path, entry["file"], "shard")
  dt = _dtype(m, path)
  n = int(entry["num_tokens"])
  if not fs.exists(p):
    raise base.DataFileNotFound(f"shard {os.fspath(p)!r} named by the manifest does "
                                "not exist")
  if in_memory:
    data = fs.read_bytes(p)
    if len(data) != n * dt.itemsize:
      raise _size_error(p, len(data), n, dt)
    arr = np.frombuffer(data, dt)
    _check_hash(p, entry, hashlib.sha256(data).hexdigest(),
                int(arr.max()) if arr.size else -1, int(m["vocab_size"]))
    return arr, None
  local = fs.local_path(p)
  size = os.path.getsize(local)
  if size != n * dt.itemsize:
    raise _size_error(p, size, n, dt)
  new_marker = None
  if verify != "size":
    rec = marker.get(split)
    st = os.stat(local)
    fresh = (verify == "once" and isinstance(rec, dict) and rec.get("size") == size
             and rec.get("mtime_ns") == st.st_mtime_ns
             and rec.get("sha256") == entry.get("sha256"))
    if not fresh:
      logging.info("verifying the sha256 of %s (%s bytes)", local, f"{size:,}")
      sha, top, _ = _hash_file(p, dt, int(m["vocab_size"]))
      _check_hash(p, entry, sha, top, int(m["vocab_size"]))
      new_marker = {"size": size, "mtime_ns": st.st_mtime_ns, "sha256": sha}
  if n == 0:
    return np.zeros((0,), dt), new_marker
  arr = np.memmap(local, dtype=dt, mode="r", shape=(n,))
  arr.id_bound = int(m["vocab_size"])       # every batch is checked (base.check_ids)
  sums = _block_sums(p, local, entry, size)
  if sums is not None:
    arr.block_sums = sums                   # each block checked when first read
  base.advise_random(arr)
  return arr, new_marker


def _block_sums(p, local: str, entry, size: int) -> Optional[base.BlockSums]:
  """The manifest's block checksums of a shard (None for a manifest without them)."""
  text, block = entry.get("crc32"), entry.get("block_bytes")
  if text is None:
    return None
  crcs = None
  if isinstance(block, int) and block > 0 and isinstance(text, str) and (
      len(text) == 8 * -(-size // block)):
    try:
      crcs = np.frombuffer(bytes.fromhex(text), ">u4")
    except ValueError:
      crcs = None
  if crcs is None:
    raise errors.DataError(f"{os.fspath(p)!r}: the manifest's block checksums do not "
                           f"describe its {size:,} bytes (block_bytes {block!r}, "
                           f"{len(text) if isinstance(text, str) else 0} hex digits); "
                           "prepare the data again")
  return base.BlockSums(local, block, crcs)


def _size_error(p, size, n, dt):
  return errors.DataError(f"{os.fspath(p)!r} has {size:,} bytes; the manifest says "
                          f"{n:,} {dt.name} tokens = {n * dt.itemsize:,} bytes (truncated, "
                          "or a different dtype?)")


def load(path: str, *, seq_len: Optional[int] = None, layout: Optional[str] = None,
         verify: str = "once", expect_tokenizer_sha: Optional[str] = None,
         expect_vocab_size: Optional[int] = None, validation_split: str = "validation",
         need_train: bool = True,
         in_memory_limit: int = REMOTE_IN_MEMORY_LIMIT) -> base.TokenDataset:
  """A prepared directory as a ``TokenDataset`` (memmapped splits; module docstring).

  Args:
    path: the directory (``--out`` of ``experiments.prepare_data``); local or bucket.
    seq_len, layout: what the config expects; a ``padded`` set needs ``seq_len`` equal
      to its row length. None: accept the manifest's.
    verify: ``once`` | ``always`` | ``size`` (module docstring).
    expect_tokenizer_sha, expect_vocab_size: for evaluating a model on a set it was not
      trained on: the set must use the model's tokenizer and vocabulary.
    validation_split: the manifest split returned as ``validation`` (e.g. ``test``).
    need_train: False for evaluation-only sets (``train`` is then empty if absent).
    in_memory_limit: largest bucket-held set (bytes) read into memory.
  """
  if verify not in VERIFY_MODES:
    raise errors.ConfigError(f"data.verify must be one of {VERIFY_MODES}, got {verify!r}")
  m = read_manifest(path)
  mpath = os.fspath(fs.join(path, MANIFEST))
  tok = tok_lib.from_description(m["tokenizer"], path)
  m_layout = m["layout"]
  if m_layout not in base.LAYOUTS:
    raise errors.DataError(f"{mpath!r}: unknown layout {m_layout!r}")
  vocab, pad = special_ids(tok, m_layout)
  if int(m["vocab_size"]) != vocab or m.get("special_tokens", {}).get("pad") != pad:
    raise errors.DataError(f"{mpath!r} says vocab_size {m['vocab_size']} / pad "
                           f"{m.get('special_tokens', {}).get('pad')}, its tokenizer gives "
                           f"{vocab} / {pad}: the tokenizer file does not match")
  if layout is not None and layout != m_layout:
    raise errors.DataError(f"{os.fspath(path)!r} is prepared with layout {m_layout!r}, "
                           f"the config asks for {layout!r} (data.layout)")
  if m_layout == "padded" and seq_len is not None and seq_len != m["seq_len"]:
    raise errors.DataError(f"{os.fspath(path)!r} holds padded rows of {m['seq_len']} "
                           f"tokens; data.seq_len is {seq_len} (prepare again with "
                           f"--seq_len={seq_len}, or set data.seq_len={m['seq_len']})")
  sha = m["tokenizer"].get("sha256")
  if expect_tokenizer_sha and expect_tokenizer_sha != sha:
    raise errors.DataError(f"{os.fspath(path)!r} is tokenized with tokenizer sha256 "
                           f"{str(sha)[:12]}..., the model's is {expect_tokenizer_sha[:12]}"
                           "...: prepare the set with the model's tokenizer")
  if expect_vocab_size is not None and int(expect_vocab_size) != vocab:
    raise errors.DataError(f"{os.fspath(path)!r} has a vocabulary of {vocab} ids "
                           f"(layout {m_layout}); the model has {expect_vocab_size}")
  wanted = (["train"] if need_train or "train" in m["splits"] else []) + [
      validation_split]
  for s in wanted:
    if s not in m["splits"]:
      raise errors.DataError(f"{os.fspath(path)!r} has no {s!r} split (it has "
                             f"{sorted(m['splits'])})")
  remote = fs.is_remote(path)
  if remote:
    total = sum(int(m["splits"][s]["bytes"]) for s in wanted)
    if total > in_memory_limit:
      raise errors.DataError(
          f"{os.fspath(path)!r} is on a bucket and its shards ({total / 2**20:,.0f} MiB) "
          f"are too big to read into memory (limit {in_memory_limit / 2**20:,.0f} MiB); "
          "np.memmap needs local files: copy the directory to local disk (e.g. `gsutil "
          "-m cp -r` it) and point data.path there")
  recorded = {} if remote or verify != "once" else _read_marker(path)
  marker = {s: recorded.get(m["splits"][s]["file"]) for s in wanted}
  arrays, fresh = {}, {}
  for s in wanted:
    arrays[s], rec = _open_split(path, m, s, verify, marker, remote)
    if rec is not None:
      fresh[m["splits"][s]["file"]] = rec
  if fresh and verify == "once":
    _write_marker(path, fresh)
  train = arrays.get("train", np.zeros((0,), _dtype(m, path)))
  if m_layout == "padded":
    for s, a in arrays.items():
      if len(a) % int(m["seq_len"]):
        raise errors.DataError(f"{os.fspath(fs.join(path, m['splits'][s]['file']))!r} "
                               f"holds {len(a)} tokens, not whole rows of {m['seq_len']}")
  skip = () if pad is None else (pad,)
  return base.TokenDataset(
      train, arrays[validation_split], vocab, lambda ids: tok.decode(ids, skip),
      str(m.get("name") or fs.path(path).name), tok.encode, pad_id=pad,
      eos_id=tok.eos_id, layout=m_layout, tokenizer=tok,
      info={"tokenizer_sha256": sha, "tokenizer_kind": tok.kind,
            "prepared_path": os.fspath(path), "source": m.get("source")})


def copy_tokenizer(src: str, dest: str) -> None:
  """Copies the manifest and tokenizer file of a prepared directory (no shards) to
  ``dest`` (e.g. ``WORKDIR/tokenizer``), so that a workdir can decode its samples on a
  machine without the data (``tokenizer_only(dest)``)."""
  m = read_manifest(src)
  f = m["tokenizer"].get("file")
  if f:
    fs.write_bytes_atomic(fs.child(dest, f, "tokenizer file"),
                          fs.read_bytes(fs.child(src, f, "tokenizer file")))
  fs.write_text_atomic(fs.join(dest, MANIFEST), json.dumps(m, indent=2) + "\n")


def tokenizer_only(path: str) -> base.TokenDataset:
  """The vocabulary, special ids and ``decode``/``encode`` of a prepared directory (or
  a ``copy_tokenizer`` copy) with empty splits: reads no shard."""
  m = read_manifest(path)
  tok = tok_lib.from_description(m["tokenizer"], path)
  vocab, pad = special_ids(tok, m["layout"])
  skip = () if pad is None else (pad,)
  empty = np.zeros((0,), _dtype(m, path))
  return base.TokenDataset(empty, empty, vocab, lambda ids: tok.decode(ids, skip),
                           str(m.get("name") or fs.path(path).name), tok.encode,
                           pad_id=pad, eos_id=tok.eos_id, layout=m["layout"],
                           tokenizer=tok, info={"tokenizer_sha256": m["tokenizer"].get(
                               "sha256"), "tokenizer_kind": tok.kind})


def load_from_config(data_cfg: ml_collections.ConfigDict,
                     workdir: str = "") -> base.TokenDataset:
  """``data.name=prepared``: ``data.path`` with ``data.layout``/``data.seq_len``/
  ``data.verify`` from the config."""
  del workdir  # the tokenizer lives with the shards
  if not data_cfg.path:
    raise errors.ConfigError("data.name='prepared' needs data.path (the directory "
                             "written by experiments.prepare_data)")
  layout = data_cfg.get("layout", "packed") or "packed"
  if layout not in base.LAYOUTS:
    raise errors.ConfigError(f"data.layout must be one of {base.LAYOUTS}, got "
                             f"{layout!r}")
  return load(data_cfg.path, seq_len=data_cfg.seq_len, layout=layout,
              verify=data_cfg.get("verify", "once") or "once")


def verify(path: str, progress: bool = True) -> Dict[str, Dict[str, object]]:
  """Hashes every shard of a prepared directory against its manifest (and checks sizes,
  dtype and vocabulary); records the result for ``verify='once'`` loads. Returns per
  split ``{file, bytes, sha256, ok}``; raises ``DataError`` on the first mismatch."""
  m = read_manifest(path)
  tok = tok_lib.from_description(m["tokenizer"], path)
  vocab, _ = special_ids(tok, m["layout"])
  if vocab != int(m["vocab_size"]):
    raise errors.DataError(f"{os.fspath(fs.join(path, MANIFEST))!r} says vocab_size "
                           f"{m['vocab_size']}, its tokenizer gives {vocab}")
  dt = _dtype(m, path)
  out, fresh, added = {}, {}, False
  for split, entry in m["splits"].items():
    p = fs.child(path, entry["file"], "shard")
    if not fs.exists(p):
      raise base.DataFileNotFound(f"shard {os.fspath(p)!r} does not exist")
    if progress:
      print(f"verifying {os.fspath(p)}", flush=True)
    blocks = BlockCRC()
    sha, top, size = _hash_file(p, dt, vocab, blocks)
    if size != int(entry["num_tokens"]) * dt.itemsize:
      raise _size_error(p, size, int(entry["num_tokens"]), dt)
    _check_hash(p, entry, sha, top, vocab)
    out[split] = {"file": entry["file"], "bytes": size, "sha256": sha, "ok": True}
    if "crc32" not in entry:             # an older manifest: add them (sha256 matched)
      entry.update(block_bytes=BLOCK_BYTES, crc32=blocks.digest())
      added = True
      out[split]["block_checksums"] = "added"
    if not fs.is_remote(p):
      fresh[entry["file"]] = _marker_entry(p, sha)
  if added:
    fs.write_text_atomic(fs.join(path, MANIFEST), json.dumps(m, indent=2) + "\n")
  if fresh:
    _write_marker(path, fresh)
  return out

