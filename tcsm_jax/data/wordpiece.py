"""Word-piece corpora in memory: tfds or text documents + a project-trained sentencepiece.

Documents come from a locally prepared tfds dataset (``tfds.data_source``: the
array_record reader that needs no TensorFlow and no network) or, for tests and small
corpora, a text file with one document per paragraph (blank-line separated). A
sentencepiece model is trained on the training documents (or loaded from
``data.spm_model``), every document is encoded and followed by ``</s>``, and the
stream is *packed* into a flat token array that ``base.ChunkSampler`` cuts into
fixed-length sequences (no padding is wasted); ``data.layout=padded`` puts one
document per row instead (pad id = the vocabulary size, appended).

This tokenizes everything at every start and holds it in memory: fine for small
corpora. For OpenWebText-size data, prepare once with ``experiments.prepare_data`` and
train with ``data.name=prepared`` (memory-mapped shards).
"""

from __future__ import annotations

import os
from typing import Iterable, List

import ml_collections
import numpy as np

from tcsm_jax import errors, fs
from tcsm_jax.data import base, sources, tokenizer

# Re-exported: tests and older code call them from here.
tfds_documents = sources.tfds_documents


def _text_documents(path: str) -> List[str]:
  docs = list(sources.whole_documents(sources.text_documents(path, "blank")))
  if not docs:
    raise errors.DataError(f"{os.fspath(path)!r} holds no documents")
  return docs


def train_sentencepiece(docs: Iterable[str], vocab_size: int, model_path: str) -> str:
  """Trains a unigram sentencepiece model on ``docs`` and writes ``model_path``."""
  return tokenizer.SentencePiece.train(docs, vocab_size, model_path)


def encode_and_pack(sp, docs: Iterable[str]) -> np.ndarray:
  """Encodes documents, appends ``</s>`` to each, concatenates: ``[num_tokens]`` int32."""
  eos = sp.eos_id()
  return base.pack((np.asarray(ids, np.int32) for ids in sp.encode(list(docs))), [eos])


def load(data_cfg: ml_collections.ConfigDict, workdir: str = "") -> base.TokenDataset:
  """Builds the word-piece dataset described by ``config.data``.

  The sentencepiece model is ``data.spm_model`` if that file exists; otherwise one is
  trained on the training documents and written there (or to ``workdir/spm.model``).
  Both may be bucket URLs.
  """
  layout = data_cfg.get("layout", "packed") or "packed"
  if layout not in base.LAYOUTS:
    raise errors.ConfigError(f"data.layout must be one of {base.LAYOUTS}, got "
                             f"{layout!r}")
  if data_cfg.tfds_name:
    limit = data_cfg.max_train_docs
    train_docs = list(sources.tfds_documents(data_cfg.tfds_name, "train",
                                             data_cfg.tfds_dir, data_cfg.text_key, limit))
    val_split = "validation" if data_cfg.tfds_name != "lm1b" else "test"
    val_docs = list(sources.tfds_documents(data_cfg.tfds_name, val_split,
                                           data_cfg.tfds_dir, data_cfg.text_key,
                                           max(limit // 20, 0)))
  elif data_cfg.path:
    docs = _text_documents(data_cfg.path)
    cut = max(1, int(len(docs) * 0.95))
    train_docs, val_docs = docs[:cut], docs[cut:] or docs[-1:]
  else:
    raise errors.ConfigError("data.name='wordpiece' needs data.tfds_name or data.path")
  model_path = data_cfg.spm_model or os.fspath(fs.join(workdir or ".", "spm.model"))
  if not fs.exists(model_path):
    train_sentencepiece(train_docs, data_cfg.spm_vocab_size, model_path)
  tok = tokenizer.SentencePiece.from_file(model_path)
  name = data_cfg.tfds_name or os.path.basename(data_cfg.path)
  if layout == "packed":
    train = base.pack(tok.encode_batch(train_docs), tok.separator)
    val = base.pack(tok.encode_batch(val_docs), tok.separator)
    vocab, pad = tok.vocab_size, None
  else:
    vocab, pad = tok.vocab_size + 1, tok.vocab_size
    train = base.pad_rows(tok.encode_batch(train_docs), data_cfg.seq_len, pad,
                          tok.separator).reshape(-1)
    val = base.pad_rows(tok.encode_batch(val_docs), data_cfg.seq_len, pad,
                        tok.separator).reshape(-1)
  skip = () if pad is None else (pad,)
  return base.TokenDataset(train, val, vocab, lambda ids: tok.decode(ids, skip), name,
                           tok.encode, pad_id=pad, eos_id=tok.eos_id, layout=layout,
                           tokenizer=tok,
                           info={"tokenizer_sha256": tok.sha256, "tokenizer": "spm"})
