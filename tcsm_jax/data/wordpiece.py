"""Word-piece corpora: tensorflow-datasets documents + a project-trained sentencepiece.

Documents come from a locally prepared tfds dataset (``tfds.data_source``: the
array_record reader that needs no TensorFlow and no network) or, for tests and small
corpora, a text file with one document per paragraph (blank-line separated). A
sentencepiece model is trained on the training documents (or loaded from
``data.spm_model``), every document is encoded and followed by ``</s>``, and the
stream is *packed* into a flat token array that ``pipeline.ChunkSampler`` cuts into
fixed-length sequences (no padding is wasted).
"""

from __future__ import annotations

import io
import os
from typing import Iterable, Iterator, List

import ml_collections
import numpy as np

from tcsm_jax.data import pipeline


def _text_documents(path: str) -> List[str]:
  if not os.path.exists(path):
    raise FileNotFoundError(f"data.path {path!r} does not exist")
  import lzma
  opener = lzma.open if path.endswith(".xz") else open
  with opener(path, "rt", encoding="utf-8", errors="replace") as f:
    docs = [d.strip() for d in f.read().split("\n\n")]
  docs = [d for d in docs if d]
  if not docs:
    raise ValueError(f"{path!r} holds no documents")
  return docs


def tfds_documents(name: str, split: str, data_dir: str, text_key: str,
                   limit: int = 0) -> Iterator[str]:
  """Yields the ``text_key`` field of a locally prepared tfds dataset."""
  import tensorflow_datasets as tfds
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir or None,
                              download=False)
  except Exception as e:  # pylint: disable=broad-except
    raise FileNotFoundError(
        f"tfds dataset {name!r} split {split!r} is not prepared under "
        f"{data_dir or '~/tensorflow_datasets'} (this project never downloads at run "
        f"time; prepare it with `tfds build {name}` where there is network): {e}") from e
  n = len(source) if not limit else min(limit, len(source))
  for i in range(n):
    ex = source[i]
    if text_key not in ex:
      raise KeyError(f"tfds example has no field {text_key!r}; fields: {sorted(ex)}")
    text = ex[text_key]
    yield text.decode("utf-8") if isinstance(text, bytes) else str(text)


def train_sentencepiece(docs: Iterable[str], vocab_size: int, model_path: str) -> str:
  """Trains a unigram sentencepiece model on ``docs`` and writes ``model_path``."""
  import sentencepiece as spm
  os.makedirs(os.path.dirname(os.path.abspath(model_path)), exist_ok=True)
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(docs), model_writer=buf, vocab_size=vocab_size,
      model_type="unigram", character_coverage=0.9995, pad_id=-1, bos_id=-1,
      eos_id=1, unk_id=0, byte_fallback=False, hard_vocab_limit=False,
      max_sentence_length=1 << 16, input_sentence_size=2_000_000,
      shuffle_input_sentence=True, num_threads=os.cpu_count() or 1)
  tmp = model_path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(buf.getvalue())
  os.replace(tmp, model_path)  # atomic: never a half-written model
  return model_path


def encode_and_pack(sp, docs: Iterable[str]) -> np.ndarray:
  """Encodes documents, appends ``</s>`` to each, concatenates: ``[num_tokens]`` int32."""
  eos = sp.eos_id()
  parts = [np.asarray(ids + [eos], np.int32) for ids in sp.encode(list(docs))]
  return np.concatenate(parts) if parts else np.zeros((0,), np.int32)


def load(data_cfg: ml_collections.ConfigDict, workdir: str = "") -> pipeline.TokenDataset:
  """Builds the packed word-piece dataset described by ``config.data``.

  The sentencepiece model is ``data.spm_model`` if that file exists; otherwise one is
  trained on the training documents and written there (or to ``workdir/spm.model``).
  """
  import sentencepiece as spm
  if data_cfg.tfds_name:
    limit = data_cfg.max_train_docs
    train_docs = list(tfds_documents(data_cfg.tfds_name, "train", data_cfg.tfds_dir,
                                     data_cfg.text_key, limit))
    val_split = "validation" if data_cfg.tfds_name != "lm1b" else "test"
    val_docs = list(tfds_documents(data_cfg.tfds_name, val_split, data_cfg.tfds_dir,
                                   data_cfg.text_key, max(limit // 20, 0)))
  elif data_cfg.path:
    docs = _text_documents(data_cfg.path)
    cut = max(1, int(len(docs) * 0.95))
    train_docs, val_docs = docs[:cut], docs[cut:] or docs[-1:]
  else:
    raise ValueError("data.name='wordpiece' needs data.tfds_name or data.path")
  model_path = data_cfg.spm_model or os.path.join(workdir or ".", "spm.model")
  if not os.path.exists(model_path):
    train_sentencepiece(train_docs, data_cfg.spm_vocab_size, model_path)
  sp = spm.SentencePieceProcessor(model_file=model_path)
  train = encode_and_pack(sp, train_docs)
  val = encode_and_pack(sp, val_docs)

  def decode(ids):
    ids = np.asarray(ids)
    if ids.ndim > 1:
      return [decode(r) for r in ids]
    return sp.decode([int(i) for i in ids])

  return pipeline.TokenDataset(train, val, sp.get_piece_size(), decode,
                               data_cfg.tfds_name or os.path.basename(data_cfg.path),
                               lambda s: np.asarray(sp.encode(s), np.int32))
