"""Where documents come from: text files, JSONL, text8, locally prepared tfds datasets.

Every reader goes through ``tcsm_jax.fs`` (local paths and bucket URLs); ``.xz``,
``.gz`` and ``.bz2`` files are decompressed on the fly. Nothing is ever downloaded.

**Text validation** (what ``check_text`` enforces, with a ``DataError`` naming the
file):

* *not text*: more than ``MAX_INVALID_FRACTION`` (0.1%) of the characters are bytes
  that are not UTF-8 or control characters (NUL and friends; tab, newline, carriage
  return, form feed and vertical tab are text). Random bytes fail this at once.
* *mostly dropped by cleaning* (character corpora only, where the text8 rule keeps
  letters and digits): more than ``MAX_DROPPED_FRACTION`` (20%) of the non-space
  characters are neither ASCII letters nor digits, so cleaning would turn them into
  spaces. English prose drops 2-5% (punctuation); a file of another script, of
  markup or of binary junk drops far more. ``data.max_dropped_fraction`` (or the
  ``max_dropped`` argument) raises the limit for a corpus where that is intended.

**Long documents in bounded memory.** A text file is read in pieces of
``LONG_DOC_CHARS`` characters, never a whole line or document at once: a document
longer than that (a 2 GB file without blank lines, or without any newline) is yielded
as consecutive ``Piece`` strings (``piece.last`` marks the one that ends it), which
``prepared.prepare`` tokenizes one safe cut at a time (``tokenizer.Tokenizer.safe_cut``)
into the same ids as the whole document (tested for every tokenizer kind). Shorter
documents are plain strings, as before. ``whole_documents`` joins the pieces again for
the few readers that need whole documents in memory.

``Source``: the splits of a corpus as re-iterable document streams, plus a
description for manifests. ``joined`` sources (text8) are one text cut into pieces:
their pieces are concatenated without a separator and cannot be padded per document.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import io
import json
import lzma
import os
import re
import zlib
from typing import Callable, Dict, Iterable, Iterator, List, Optional

from tcsm_jax import errors, fs
from tcsm_jax.data import base, text8

LONG_DOC_CHARS = 1 << 20     # documents longer than this come as Pieces
MAX_INVALID_FRACTION = 0.001
MAX_DROPPED_FRACTION = 0.2
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f\ufffd]")
_SPACE = re.compile(r"\s+")
_NOT_KEPT = re.compile(r"[^A-Za-z0-9]+")
_COMPRESSED = {".xz": lzma.open, ".gz": gzip.open, ".bz2": bz2.open}
_DECOMPRESS_ERRORS = (lzma.LZMAError, EOFError, OSError, zlib.error)


@dataclasses.dataclass
class TextStats:
  """Counts that decide whether a stream of text is text (module docstring)."""

  chars: int = 0
  invalid: int = 0
  non_space: int = 0
  dropped: int = 0

  def add(self, text: str, count_dropped: bool = False) -> None:
    self.chars += len(text)
    self.invalid += len(text) - len(_CONTROL.sub("", text))
    if count_dropped:
      non_space = _SPACE.sub("", text)
      self.non_space += len(non_space)
      self.dropped += len(non_space) - len(_NOT_KEPT.sub("", non_space))

  def check(self, path: str, max_dropped: Optional[float] = None) -> None:
    if self.chars and self.invalid > MAX_INVALID_FRACTION * self.chars:
      raise errors.DataError(
          f"{os.fspath(path)!r} is not valid UTF-8 text: {self.invalid:,} of its "
          f"{self.chars:,} characters are undecodable bytes or control characters "
          f"(limit {MAX_INVALID_FRACTION:.1%}); is it a binary or compressed file?")
    if max_dropped is not None and self.non_space and (
        self.dropped > max_dropped * self.non_space):
      raise errors.DataError(
          f"cleaning {os.fspath(path)!r} to the text8 alphabet would drop "
          f"{self.dropped / self.non_space:.0%} of its non-space characters (limit "
          f"{max_dropped:.0%}; they are neither ASCII letters nor digits): not English "
          "text? Raise data.max_dropped_fraction if this is intended")


def check_text(path: str, text: str, max_dropped: Optional[float] = None) -> None:
  """Raises ``DataError`` naming ``path`` if ``text`` is not text (module docstring)."""
  st = TextStats()
  st.add(text, count_dropped=max_dropped is not None)
  st.check(path, max_dropped)


def _require(path: str) -> None:
  if not fs.exists(path):
    raise base.DataFileNotFound(f"data file {os.fspath(path)!r} does not exist")


def open_text(path: str) -> io.TextIOBase:
  """A text stream of ``path`` (local or bucket; ``.xz``/``.gz``/``.bz2`` decompressed).

  Undecodable bytes become U+FFFD, which ``TextStats`` counts as invalid.
  """
  _require(path)
  raw = fs.open_file(path, "rb")
  opener = _COMPRESSED.get(os.path.splitext(os.fspath(path))[1])
  if opener is not None:
    raw = opener(raw, "rb")
  return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline=None)


def read_text(path: str) -> str:
  """The whole text of ``path``; a corrupt compressed file is a ``DataError``."""
  try:
    with open_text(path) as f:
      return f.read()
  except _DECOMPRESS_ERRORS as e:
    if isinstance(e, FileNotFoundError):
      raise
    raise errors.DataError(f"{os.fspath(path)!r} is corrupt or truncated: {e}") from e


class Piece(str):
  """Part of a document longer than ``LONG_DOC_CHARS`` (module docstring): the
  document is the concatenation of its pieces; ``last`` is True on its final one."""

  last: bool = False


def _piece(text: str, last: bool) -> Piece:
  p = Piece(text)
  p.last = last
  return p


def document_count(items: Iterable[str]) -> int:
  """Documents in a stream of documents and pieces (a long document counts once)."""
  return sum(1 for d in items if not isinstance(d, Piece) or d.last)


def whole_documents(items: Iterable[str]) -> Iterator[str]:
  """The documents of a stream, long ones joined from their pieces (in memory)."""
  parts: List[str] = []
  for d in items:
    if isinstance(d, Piece):
      parts.append(str(d))
      if d.last:
        yield "".join(parts)
        parts = []
    else:
      yield d


def _line_parts(f, size: int) -> Iterator[tuple]:
  """``(text, ends_line)`` parts of the lines of ``f``, read ``size`` characters at a
  time (never a whole line: a file without newlines is one long line)."""
  while True:
    s = f.read(size)
    if not s:
      return
    start = 0
    while start < len(s):
      i = s.find("\n", start)
      if i < 0:
        yield s[start:], False
        break
      yield s[start:i + 1], True
      start = i + 1


def _spill(doc: List[str], streamed: bool):
  """``(piece or None, kept)``: the text of a long document gathered so far as a
  ``Piece`` (stripped at the left if it is the first), its trailing blanks ``kept``
  (the end of the document would strip them)."""
  joined = "".join(doc)
  body = joined.rstrip() if streamed else joined.strip()
  tail = joined[len(joined.rstrip()):]
  return (_piece(body, False) if body else None), ([tail] if tail else [])


def _finish(doc: List[str], streamed: bool) -> Optional[str]:
  """The end of a document: its last ``Piece`` if pieces were yielded, else the
  stripped document (None when empty)."""
  text = "".join(doc)
  if streamed:
    return _piece(text.rstrip(), True)
  return text.strip() or None


def _one_document(segments: Iterable[str], limit: int) -> Iterator[str]:
  """One document from its text in ``segments``, stripped: a string, or ``Piece``s
  when longer than ``limit``."""
  doc: List[str] = []
  streamed = False
  for text in segments:
    doc.append(text)
    if sum(map(len, doc)) > limit:
      piece, doc = _spill(doc, streamed)
      if piece is not None:
        yield piece
        streamed = True
  last = _finish(doc, streamed)
  if last is not None:
    yield last


def text_documents(path: str, doc_sep: str = "blank",
                   limit: Optional[int] = None) -> Iterator[str]:
  """Documents of a text file: one per line (``line``) or blank-line separated
  (``blank``); stripped, empty ones skipped. A document longer than ``limit``
  characters (``LONG_DOC_CHARS``) comes as ``Piece`` strings (module docstring):
  memory stays bounded by ``limit`` whatever the file's lines and documents."""
  if doc_sep not in ("line", "blank"):
    raise errors.DataError(f"document separator must be 'line' or 'blank', got "
                           f"{doc_sep!r}")
  limit = limit or LONG_DOC_CHARS
  try:
    with open_text(path) as f:
      doc: List[str] = []          # the current document's text not yet yielded
      size, streamed = 0, False    # len of doc; whether pieces of it were yielded
      blank: List[str] = []        # the current line while it is whitespace only
      has_text = False             # the current line holds text

      def end():
        nonlocal doc, size, streamed
        out = _finish(doc, streamed)
        doc, size, streamed = [], 0, False
        return out

      for text, ends in _line_parts(f, limit):
        if not has_text:
          if not text.strip():
            if sum(map(len, blank)) < limit:   # (a longer blank run is dropped)
              blank.append(text)
            if ends:
              blank = []
              if doc_sep == "blank" and (doc or streamed):
                out = end()
                if out is not None:
                  yield out
            continue
          has_text = True
          text, blank = "".join(blank) + text, []
        doc.append(text)
        size += len(text)
        if ends:
          has_text = False
          if doc_sep == "line":
            out = end()
            if out is not None:
              yield out
            continue
        if size > limit:           # long: yield what is there
          piece, doc = _spill(doc, streamed)
          size = sum(map(len, doc))
          if piece is not None:
            yield piece
            streamed = True
      if doc or streamed:
        out = end()
        if out is not None:
          yield out
  except _DECOMPRESS_ERRORS as e:
    if isinstance(e, FileNotFoundError):
      raise
    raise errors.DataError(f"{os.fspath(path)!r} is corrupt or truncated: {e}") from e


def jsonl_documents(path: str, text_key: str = "text") -> Iterator[str]:
  """The ``text_key`` field of each JSON object of a JSON-lines file."""
  with open_text(path) as f:
    for i, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise errors.DataError(f"{os.fspath(path)!r} line {i} is not JSON: {e}") from e
      if not isinstance(obj, dict) or text_key not in obj:
        raise errors.DataError(f"{os.fspath(path)!r} line {i} has no field "
                               f"{text_key!r}")
      text = str(obj[text_key]).strip()
      if text:
        yield text


def tfds_documents(name: str, split: str, data_dir: str, text_key: str,
                   limit: int = 0) -> Iterator[str]:
  """Yields the ``text_key`` field of a locally prepared tfds dataset (never downloads;
  ``tfds.data_source`` reads array_record files without TensorFlow)."""
  source = tfds_source(name, split, data_dir)
  n = len(source) if not limit else min(limit, len(source))
  for i in range(n):
    yield _tfds_text(source[i], text_key)


def tfds_source(name: str, split: str, data_dir: str):
  import tensorflow_datasets as tfds
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir or None,
                            download=False)
  except Exception as e:  # pylint: disable=broad-except
    raise base.DataFileNotFound(
        f"tfds dataset {name!r} split {split!r} is not prepared under "
        f"{data_dir or '~/tensorflow_datasets'} (this project never downloads at run "
        f"time; prepare it with `tfds build {name}` where there is network): {e}") from e


def _tfds_text(ex, text_key: str) -> str:
  if text_key not in ex:
    raise errors.DataError(f"tfds example has no field {text_key!r}; fields: "
                           f"{sorted(ex)}")
  text = ex[text_key]
  return text.decode("utf-8") if isinstance(text, bytes) else str(text)


@dataclasses.dataclass
class Source:
  """A corpus: ``splits[name]()`` iterates that split's documents (re-iterable)."""

  name: str
  splits: Dict[str, Callable[[], Iterator[str]]]
  description: Dict[str, object]
  num_docs: Dict[str, Optional[int]] = dataclasses.field(default_factory=dict)
  joined: bool = False          # pieces of one text: no separators, no padding
  check_path: str = ""          # text file whose content TextStats checks


def text8_source(path: str, splits=None, piece_chars: int = 1 << 20) -> Source:
  """text8 (zip or extracted) with the standard 90M/5M/5M split, as pieces of about
  ``piece_chars`` characters cut before a space (so word-level tokenizers see whole
  words; the character tokenizer gives exactly ``text8.encode`` of each split)."""
  splits = dict(text8.TEXT8_SPLITS if splits is None else splits)
  text = text8.read_text8(path)
  end = max(b for _, b in splits.values())
  if len(text) < end:
    raise errors.DataError(f"{os.fspath(path)!r} holds {len(text):,} characters; text8 "
                           f"has 100,000,000 (truncated file?)")
  try:
    text8.encode(text[:end][:1 << 16])
  except ValueError as e:
    raise errors.DataError(f"{os.fspath(path)!r}: {e}") from e

  def pieces(a, b):
    def it():
      lo = a
      while lo < b:
        hi = min(b, lo + piece_chars)
        if hi < b:
          cut = text.rfind(" ", lo + 1, hi)
          hi = cut if cut > lo else hi
        yield text[lo:hi]
        lo = hi
    return it

  return Source("text8", {k: pieces(a, b) for k, (a, b) in splits.items()},
                {"kind": "text8", "path": os.fspath(path), "splits": splits},
                {k: None for k in splits}, joined=True)


def documents_source(path: str, fmt: str = "text", doc_sep: str = "blank",
                     text_key: str = "text", validation_fraction: float = 0.05,
                     validation_path: str = "") -> Source:
  """A text (``fmt='text'``) or JSON-lines (``fmt='jsonl'``) corpus. Validation is
  ``validation_path`` if given, else the last ``validation_fraction`` of the documents
  (at least one); ``validation_fraction=1`` puts everything in validation (a zero-shot
  evaluation set, no train split)."""
  if fmt not in ("text", "jsonl"):
    raise errors.DataError(f"document format must be text or jsonl, got {fmt!r}")
  if not 0.0 <= validation_fraction <= 1.0:
    raise errors.DataError(f"validation fraction must lie in [0, 1], got "
                           f"{validation_fraction}")

  def docs(p):
    return (lambda: text_documents(p, doc_sep)) if fmt == "text" else (
        lambda: jsonl_documents(p, text_key))

  name = os.path.basename(os.fspath(path).rstrip("/"))
  desc = {"kind": fmt, "path": os.fspath(path), "doc_sep": doc_sep if fmt == "text"
          else None, "text_key": text_key if fmt == "jsonl" else None}
  if validation_path:
    desc["validation_path"] = os.fspath(validation_path)
    return Source(name, {"train": docs(path), "validation": docs(validation_path)},
                  desc, {"train": None, "validation": None},
                  check_path=path if fmt == "text" else "")
  n, length = 0, 0                  # documents; characters of the first one
  for d in docs(path)():
    if n == 0:
      length += len(d)
    if not isinstance(d, Piece) or d.last:
      n += 1
  if n == 0:
    raise errors.DataError(f"{os.fspath(path)!r} holds no documents")
  if n == 1 and 0.0 < validation_fraction < 1.0:
    # One document (a book, a cleaned corpus on one line): its last characters are
    # the validation split, cut at the last space before the cut, as data.name=
    # text_file does; read in pieces (a long document is never whole in memory).
    at = {}

    def cut_at():
      if "cut" not in at:
        cut, pos, space = int(length * (1 - validation_fraction)), 0, -1
        for d in docs(path)():
          if pos >= cut:
            break
          i = d.rfind(" ", 0, cut - pos)
          space = pos + i if i >= 0 else space
          pos += len(d)
        at["cut"] = space if space > 0 else cut
      return at["cut"]

    def part(i):
      def it():
        cut = cut_at()

        def segments():
          pos = 0
          for d in docs(path)():
            lo, hi = (0, cut - pos) if i == 0 else (max(0, cut - pos), len(d))
            if lo < hi and (i == 0 or pos + len(d) > cut):
              yield str(d)[lo:hi]
            pos += len(d)
            if i == 0 and pos >= cut:
              return
        yield from _one_document(segments(), LONG_DOC_CHARS)
      return it
    desc.update(validation_fraction=validation_fraction, split="characters of the one "
                "document")
    return Source(name, {"train": part(0), "validation": part(1)}, desc,
                  {"train": 1, "validation": 1},
                  check_path=path if fmt == "text" else "")
  n_val = n if validation_fraction >= 1 else min(n - 1, max(1, round(
      n * validation_fraction))) if n > 1 else 0
  cut = n - n_val
  desc["validation_fraction"] = validation_fraction

  def take(lo, hi):
    def it():
      i = 0
      for d in docs(path)():
        if lo <= i < hi:
          yield d
        if not isinstance(d, Piece) or d.last:
          i += 1
    return it

  splits = {}
  if cut > 0:
    splits["train"] = take(0, cut)
  if n_val > 0:
    splits["validation"] = take(cut, n)
  return Source(name, splits, desc, {"train": cut, "validation": n_val},
                check_path=path if fmt == "text" else "")


def tfds_corpus(name: str, data_dir: str = "", text_key: str = "text",
                validation_docs: int = 100_000, max_train_docs: int = 0) -> Source:
  """A locally prepared tfds dataset (``openwebtext``, ``lm1b``, ...). The validation
  split is the dataset's ``validation`` (``test`` for lm1b, as MDLM/SEDD report it);
  a dataset without one (openwebtext) holds out its last ``validation_docs`` train
  documents (MDLM's OWT split)."""
  train = tfds_source(name, "train", data_dir)
  n_train = len(train)
  val_split = "test" if name.startswith("lm1b") else "validation"
  try:
    val = tfds_source(name, val_split, data_dir)
  except base.DataFileNotFound:
    val = None
  if val is None:
    n_hold = max(1, min(validation_docs, n_train - 1))
    ranges = {"train": (train, 0, n_train - n_hold),
              "validation": (train, n_train - n_hold, n_train)}
  else:
    ranges = {"train": (train, 0, n_train), "validation": (val, 0, len(val))}
  if max_train_docs:
    src, lo, hi = ranges["train"]
    ranges["train"] = (src, lo, min(hi, lo + max_train_docs))

  def it(src, lo, hi):
    return lambda: (_tfds_text(src[i], text_key) for i in range(lo, hi))

  return Source(name, {k: it(*v) for k, v in ranges.items()},
                {"kind": "tfds", "tfds_name": name, "tfds_dir": data_dir,
                 "text_key": text_key, "validation": val_split if val is not None
                 else f"last {ranges['validation'][2] - ranges['validation'][1]} train "
                 "documents"},
                {k: v[2] - v[1] for k, v in ranges.items()})


def source_from_spec(spec: str, **kwargs) -> Source:
  """``text8:PATH``, ``text:PATH``, ``jsonl:PATH`` or ``tfds:NAME``."""
  kind, _, rest = spec.partition(":")
  if not rest:
    raise errors.DataError(f"source {spec!r}: use text8:PATH, text:PATH, jsonl:PATH or "
                           "tfds:NAME")
  if kind == "text8":
    return text8_source(rest, kwargs.get("text8_splits"))
  if kind in ("text", "jsonl"):
    return documents_source(rest, kind, kwargs.get("doc_sep", "blank"),
                            kwargs.get("text_key", "text"),
                            kwargs.get("validation_fraction", 0.05),
                            kwargs.get("validation_path", ""))
  if kind == "tfds":
    return tfds_corpus(rest, kwargs.get("tfds_dir", ""), kwargs.get("text_key", "text"),
                       kwargs.get("validation_docs", 100_000),
                       kwargs.get("max_train_docs", 0))
  raise errors.DataError(f"unknown source kind {kind!r} in {spec!r}; use text8:PATH, "
                         "text:PATH, jsonl:PATH or tfds:NAME")

