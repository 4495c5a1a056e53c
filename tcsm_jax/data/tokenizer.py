"""One small tokenizer interface: character (text8), sentencepiece, Hugging Face JSON.

``Tokenizer`` is what the data code needs of any tokenizer: ``encode(str) -> ids``,
``encode_batch([str]) -> [ids]``, ``decode(ids) -> str``, ``vocab_size``, the special
ids ``eos_id``/``pad_id`` (None when absent), the ids that separate packed documents,
and ``describe()`` (kind, path, sha256, vocab size, special ids) for a manifest.

* ``char``: the 27-symbol text8 alphabet (``text8.py``); text is cleaned with the text8
  rule; no end-of-document id, so packed documents are joined by a space.
* ``sentencepiece``: a model file (``.model``) trained by the project
  (``SentencePiece.train``) or given by path; read as bytes through ``tcsm_jax.fs``
  (bucket URLs work).
* ``hf``: any Hugging Face ``tokenizers`` JSON file given by path (GPT-2 BPE for
  OpenWebText, bert-base-uncased WordPiece for LM1B, as SEDD/MDLM use). Nothing is
  ever downloaded: the file is read through ``tcsm_jax.fs`` and parsed with
  ``tokenizers.Tokenizer.from_str``. The end-of-document and pad tokens are found by
  name (``EOS_TOKENS``/``PAD_TOKENS``) unless given.

``from_spec('KIND[:PATH]')`` builds one from a command-line spec; ``sha256`` of the
model file (of the alphabet for ``char``) identifies a tokenizer in manifests and
checkpoints.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np

from tcsm_jax import errors, fs
from tcsm_jax.data import base, text8

KINDS = ("char", "sentencepiece", "hf")
_ALIASES = {"spm": "sentencepiece", "huggingface": "hf"}
# Special tokens found by name in a Hugging Face vocabulary (first match wins).
EOS_TOKENS = ("<|endoftext|>", "</s>", "[SEP]", "<eos>", "<|eos|>")
PAD_TOKENS = ("[PAD]", "<pad>", "<|pad|>", "<|padding|>")


def sha256_bytes(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


_WORD_GAP = re.compile(r"[A-Za-z0-9](?= [A-Za-z0-9])")
_ANY_GAP = re.compile(r"\S(?=\s\S)")


def _matches(pattern, text: str, lo: int, near: int) -> Iterator[int]:
  """Ends ``e`` of ``pattern``'s matches with ``lo <= e <= near``, latest first,
  searching backwards from ``near`` in growing windows (the first is 4 KiB)."""
  end, span = near, 4096
  while end >= lo:
    start = max(lo - 1, end - span, 0)
    ends = [m.end() for m in pattern.finditer(text, start, min(len(text), end + 2))]
    yield from (e for e in reversed(ends) if lo <= e <= end)
    if start <= lo - 1 or start == 0:
      return
    end, span = start, span * 4


class Tokenizer:
  """Interface (and shared behaviour) of every tokenizer here."""

  kind: str = ""
  path: str = ""
  sha256: str = ""
  vocab_size: int = 0
  eos_id: Optional[int] = None
  pad_id: Optional[int] = None

  def encode(self, text: str) -> np.ndarray:
    """``str -> [n]`` int32 ids (no special tokens added)."""
    raise NotImplementedError

  def encode_batch(self, texts: Sequence[str]) -> List[np.ndarray]:
    return [self.encode(t) for t in texts]

  def _decode_1d(self, ids: List[int]) -> str:
    raise NotImplementedError

  def decode(self, ids, skip_ids: Sequence[int] = ()):
    """ids ``[n]`` -> str; ``[m, n]`` -> list of str. Ids in ``skip_ids`` (padding) and
    ids outside the tokenizer's vocabulary (a pad id appended after it) are dropped."""
    ids = np.asarray(ids)
    if ids.ndim > 1:
      return [self.decode(r, skip_ids) for r in ids]
    keep = (ids >= 0) & (ids < self.vocab_size)
    for s in skip_ids:
      keep &= ids != s
    return self._decode_1d([int(i) for i in ids[keep]])

  @property
  def separator(self) -> List[int]:
    """Ids appended after each packed document: ``[eos_id]`` when there is one."""
    return [] if self.eos_id is None else [int(self.eos_id)]

  def file_bytes(self) -> Optional[bytes]:
    """The model file's bytes (copied next to prepared shards); None for ``char``."""
    return None

  SAFE_WINDOW = 1024       # characters on each side of a cut that ``safe_cut`` checks

  def safe_cut(self, text: str, near: int) -> int:
    """A position ``0 < cut <= near`` where ``text`` can be cut for tokenizing in
    pieces: ``encode(text[:cut]) + encode(text[cut:])`` gives the ids of
    ``encode(text)`` (a long document, read in bounded memory).

    Candidates, latest first: before a space between two ASCII letters or digits
    (``x y``: every tokenizer here, char, sentencepiece, byte-level BPE and WordPiece,
    ends a token there and starts the next with the space), then before any single
    whitespace between two non-blanks, then any position. Each is accepted only if
    the ``SAFE_WINDOW`` characters on each side tokenize the same cut and whole.

    Raises:
      errors.DataError: no such position in the last half of ``text[:near]``.
    """
    lo = max(1, near // 2)
    for cands in (_matches(_WORD_GAP, text, lo, near), _matches(_ANY_GAP, text, lo, near),
                  range(near, lo - 1, -1)):
      for tried, cut in enumerate(cands):
        if tried >= 32:
          break
        if self._cuts_cleanly(text, cut):
          return cut
    raise errors.DataError(
        f"a document of more than {near:,} characters has no position near there where "
        f"{self!r} tokenizes the same in pieces and whole; split the document (blank "
        "lines, or one document per line with --doc_sep=line)")

  def _cuts_cleanly(self, text: str, cut: int) -> bool:
    w = self.SAFE_WINDOW
    left, right = text[max(0, cut - w):cut], text[cut:cut + w]
    whole = self.encode(left + right)
    parts = np.concatenate([self.encode(left), self.encode(right)])
    return whole.shape == parts.shape and bool((whole == parts).all())

  def describe(self) -> Dict[str, object]:
    return {"kind": self.kind, "path": self.path, "sha256": self.sha256,
            "vocab_size": int(self.vocab_size), "eos_id": self.eos_id,
            "pad_id": self.pad_id, "separator": self.separator,
            "description": repr(self)}

  def __repr__(self):
    return (f"{type(self).__name__}(vocab_size={self.vocab_size}, eos_id={self.eos_id}, "
            f"pad_id={self.pad_id}{', path=' + repr(self.path) if self.path else ''})")


class CharTokenizer(Tokenizer):
  """text8's 27 symbols; ``encode`` cleans with the text8 rule (edge spaces kept)."""

  kind = "char"
  vocab_size = text8.VOCAB_SIZE
  sha256 = sha256_bytes(("text8:" + text8.ALPHABET).encode())

  def encode(self, text: str) -> np.ndarray:
    return text8.encode_text(text).astype(np.int32)

  def _decode_1d(self, ids: List[int]) -> str:
    return text8.decode(np.asarray(ids, np.int64))

  @property
  def separator(self) -> List[int]:
    return [0]   # a space, as text8 and the cleaned text files join documents


class SentencePiece(Tokenizer):
  """A sentencepiece model, from the bytes of its ``.model`` file."""

  kind = "sentencepiece"

  def __init__(self, model: bytes, path: str = ""):
    import sentencepiece as spm
    self.path, self.sha256 = path, sha256_bytes(model)
    self._bytes = model
    try:
      self.sp = spm.SentencePieceProcessor(model_proto=model)
    except Exception as e:  # pylint: disable=broad-except
      raise errors.DataError(f"{path or 'the model'!r} is not a sentencepiece model: "
                             f"{e}") from e
    self.vocab_size = int(self.sp.get_piece_size())
    self.eos_id = int(self.sp.eos_id()) if self.sp.eos_id() >= 0 else None
    self.pad_id = int(self.sp.pad_id()) if self.sp.pad_id() >= 0 else None

  @classmethod
  def from_file(cls, path: str) -> "SentencePiece":
    return cls(_read(path, "sentencepiece model"), os.fspath(path))

  MAX_SENTENCE_BYTES = 1 << 16     # sentencepiece skips longer training sentences
  CHUNK_CHARS = 4096               # long documents are cut into pieces of about this

  @staticmethod
  def chunks(docs: Iterable[str], size: int = CHUNK_CHARS) -> Iterator[str]:
    """``docs`` cut at spaces into pieces of at most ``size`` characters (a piece is cut
    mid-word only when it holds no space), so that no training sentence exceeds
    sentencepiece's ``max_sentence_length`` (a one-line corpus such as text8 would
    otherwise leave it nothing to train on)."""
    for doc in docs:
      while len(doc) > size:
        cut = doc.rfind(" ", 0, size + 1)
        cut = cut if cut > 0 else size
        yield doc[:cut]
        doc = doc[cut:].lstrip(" ")
      if doc:
        yield doc

  @staticmethod
  def train(docs: Iterable[str], vocab_size: int, path: str) -> str:
    """Trains a unigram model on ``docs`` (long ones cut into chunks) and writes
    ``path`` atomically (via fs)."""
    import io
    import sentencepiece as spm
    buf = io.BytesIO()
    try:
      spm.SentencePieceTrainer.train(
          sentence_iterator=SentencePiece.chunks(docs), model_writer=buf,
          vocab_size=vocab_size, model_type="unigram", character_coverage=0.9995,
          pad_id=-1, bos_id=-1, eos_id=1, unk_id=0, byte_fallback=False,
          hard_vocab_limit=False, max_sentence_length=SentencePiece.MAX_SENTENCE_BYTES,
          input_sentence_size=2_000_000, shuffle_input_sentence=True,
          num_threads=os.cpu_count() or 1)
    except RuntimeError as e:
      if "sentences_.empty()" not in str(e):
        raise
      raise errors.DataError("no text to train a sentencepiece model on (the train "
                             "documents are empty)") from None
    fs.write_bytes_atomic(path, buf.getvalue())   # never a half-written model
    return os.fspath(path)

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self.sp.encode(text), np.int32)

  def encode_batch(self, texts: Sequence[str]) -> List[np.ndarray]:
    return [np.asarray(ids, np.int32) for ids in self.sp.encode(list(texts))]

  def _decode_1d(self, ids: List[int]) -> str:
    return self.sp.decode(ids)

  def file_bytes(self) -> bytes:
    return self._bytes


class HuggingFace(Tokenizer):
  """A Hugging Face ``tokenizers`` JSON file (never downloaded)."""

  kind = "hf"

  def __init__(self, json_text: str, path: str = "", eos_token: Optional[str] = None,
               pad_token: Optional[str] = None):
    import tokenizers
    self.path = path
    self._bytes = json_text.encode("utf-8")
    self.sha256 = sha256_bytes(self._bytes)
    try:
      self.tok = tokenizers.Tokenizer.from_str(json_text)
    except Exception as e:  # pylint: disable=broad-except
      raise errors.DataError(f"{path or 'the JSON'!r} is not a Hugging Face tokenizers "
                             f"file: {e}") from e
    self.vocab_size = int(self.tok.get_vocab_size(with_added_tokens=True))
    self.eos_id = self._special(eos_token, EOS_TOKENS, "eos")
    self.pad_id = self._special(pad_token, PAD_TOKENS, "pad")
    self.eos_token, self.pad_token = eos_token, pad_token

  def _special(self, name, candidates, what) -> Optional[int]:
    if name:
      i = self.tok.token_to_id(name)
      if i is None:
        raise errors.DataError(f"{self.path!r} has no {what} token {name!r}")
      return int(i)
    for c in candidates:
      i = self.tok.token_to_id(c)
      if i is not None:
        return int(i)
    return None

  @classmethod
  def from_file(cls, path: str, eos_token: Optional[str] = None,
                pad_token: Optional[str] = None) -> "HuggingFace":
    raw = _read(path, "tokenizer JSON")
    try:
      text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise errors.DataError(f"{os.fspath(path)!r} is not a tokenizer JSON file "
                             f"({e})") from e
    return cls(text, os.fspath(path), eos_token, pad_token)

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self.tok.encode(text, add_special_tokens=False).ids, np.int32)

  def encode_batch(self, texts: Sequence[str]) -> List[np.ndarray]:
    return [np.asarray(e.ids, np.int32)
            for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

  def _decode_1d(self, ids: List[int]) -> str:
    return self.tok.decode(ids, skip_special_tokens=False)

  def file_bytes(self) -> bytes:
    return self._bytes

  def describe(self) -> Dict[str, object]:
    d = super().describe()
    d.update(eos_token=self.eos_token, pad_token=self.pad_token)
    return d


def _read(path: str, what: str) -> bytes:
  if not fs.exists(path):
    raise base.DataFileNotFound(f"{what} {os.fspath(path)!r} does not exist (this "
                                "project never downloads tokenizers; give a local "
                                "path or bucket URL)")
  return fs.read_bytes(path)


def from_spec(spec: str, eos_token: Optional[str] = None,
              pad_token: Optional[str] = None) -> Tokenizer:
  """``char``, ``sentencepiece:PATH`` (or ``spm:PATH``), ``hf:PATH``, or a path ending
  in ``.json`` (Hugging Face) / ``.model`` (sentencepiece)."""
  kind, _, path = spec.partition(":")
  kind = _ALIASES.get(kind, kind)
  if kind not in KINDS:              # a bare path (a bucket URL included)
    kind, path = "", spec
    if path.endswith(".json"):
      kind = "hf"
    elif path.endswith(".model"):
      kind = "sentencepiece"
    else:
      raise errors.DataError(f"tokenizer {spec!r}: choose char, sentencepiece:PATH or "
                             "hf:PATH (a path ending in .json or .model says its kind)")
  if kind == "char":
    return CharTokenizer()
  if not path:
    raise errors.DataError(f"tokenizer {spec!r} needs a path ({kind}:PATH)")
  if kind == "sentencepiece":
    return SentencePiece.from_file(path)
  return HuggingFace.from_file(path, eos_token, pad_token)


# The file name a tokenizer's model gets inside a prepared directory.
FILE_NAMES = {"sentencepiece": "tokenizer.model", "hf": "tokenizer.json"}


def from_description(desc: Dict[str, object], directory: str) -> Tokenizer:
  """Rebuilds the tokenizer a manifest describes from its copy in ``directory``,
  checking the copy's sha256 against the description."""
  kind = desc.get("kind")
  if kind == "char":
    return CharTokenizer()
  if kind not in FILE_NAMES:
    raise errors.DataError(f"{os.fspath(directory)!r}: manifest names an unknown "
                           f"tokenizer kind {kind!r}")
  path = fs.join(directory, FILE_NAMES[kind])
  raw = _read(path, f"{kind} tokenizer")
  if sha256_bytes(raw) != desc.get("sha256"):
    raise errors.DataError(f"{os.fspath(path)!r} has sha256 {sha256_bytes(raw)[:12]}..., "
                           f"the manifest says {str(desc.get('sha256'))[:12]}...: the "
                           "tokenizer changed after preparation; prepare again")
  if kind == "sentencepiece":
    return SentencePiece(raw, os.fspath(path))
  return HuggingFace(raw.decode("utf-8"), os.fspath(path),
                     desc.get("eos_token") or None, desc.get("pad_token") or None)
