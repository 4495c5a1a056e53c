"""Tokenizers: character, sentencepiece and Hugging Face JSON files, never downloaded."""

import numpy as np
import pytest

from tcsm_jax import errors, fs
from tcsm_jax.data import pipeline, tokenizer

_TEXT = None


def corpus_slice(n_chars=200_000):
  """Text of the bundled corpus (text8 alphabet: lower-case words and spaces)."""
  global _TEXT
  if _TEXT is None or len(_TEXT) < n_chars:
    ds = pipeline.load_bundled()
    _TEXT = ds.decode(ds.train[:max(n_chars, 200_000)])
  return _TEXT[:n_chars]


def train_bpe(path, vocab_size=400, n_chars=200_000):
  """A GPT-2-style byte-level BPE trained on a slice of the bundled corpus."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  text = corpus_slice(n_chars)
  tok.train_from_iterator([text[i:i + 2000] for i in range(0, len(text), 2000)], trainer)
  fs.write_text_atomic(path, tok.to_str())
  return str(path)


def train_wordpiece(path, vocab_size=600):
  """A bert-base-uncased-style WordPiece (lower-casing, [PAD]/[SEP]/[CLS]/[UNK])."""
  from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
  tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
  tok.normalizer = normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.decoder = decoders.WordPiece()
  trainer = trainers.WordPieceTrainer(
      vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
      show_progress=False)
  text = corpus_slice()
  tok.train_from_iterator([text[i:i + 2000] for i in range(0, len(text), 2000)], trainer)
  fs.write_text_atomic(path, tok.to_str())
  return str(path)


def test_byte_level_bpe_round_trips_any_text(tmp_path):
  path = train_bpe(tmp_path / "bpe.json")
  tok = tokenizer.from_spec(f"hf:{path}")
  assert tok.kind == "hf" and tok.eos_id == 0 and tok.pad_id is None
  assert 256 < tok.vocab_size <= 400 and tok.separator == [0]
  for text in ["And God said, Let there be light: and there was light.",
               "Ünïcödé ☃ and digits 1611\n\ttabs", corpus_slice()[:3000]]:
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and ids.max() < tok.vocab_size
    assert tok.decode(ids) == text
  # Merges learned from the corpus: far fewer tokens than bytes.
  assert len(tok.encode(corpus_slice()[:3000])) < 3000 / 2
  batch = tok.encode_batch(["in the beginning", "god created"])
  assert [tok.decode(b) for b in batch] == ["in the beginning", "god created"]
  # 2-D decode gives one string per row; ids past the vocabulary (a pad) are dropped.
  rows = np.stack([tok.encode("light"), tok.encode("light")])
  assert tok.decode(np.concatenate([rows, np.full((2, 2), tok.vocab_size)], 1)) == [
      "light", "light"]
  d = tok.describe()
  assert d["sha256"] == tokenizer.sha256_bytes(open(path, "rb").read())
  assert d["vocab_size"] == tok.vocab_size and d["path"] == path
  # A bare .json path means hf.
  assert tokenizer.from_spec(path).sha256 == tok.sha256


def test_wordpiece_json_finds_pad_and_sep(tmp_path):
  tok = tokenizer.from_spec(f"hf:{train_wordpiece(tmp_path / 'wp.json')}")
  assert tok.pad_id == 0 and tok.eos_id == 3            # [PAD], [SEP]
  text = "and god saw the light that it was good"
  assert tok.decode(tok.encode(text)) == text
  assert tok.decode(tok.encode("And GOD saw")) == "and god saw"   # uncased
  over = tokenizer.from_spec(f"hf:{tmp_path / 'wp.json'}", eos_token="[CLS]")
  assert over.eos_id == 2
  with pytest.raises(errors.DataError, match="no eos token '<eos>'"):
    tokenizer.from_spec(f"hf:{tmp_path / 'wp.json'}", eos_token="<eos>")


def test_char_and_sentencepiece_tokenizers(tmp_path):
  char = tokenizer.from_spec("char")
  assert char.vocab_size == 27 and char.eos_id is None and char.separator == [0]
  assert char.decode(char.encode("Hello, World 7")) == "hello world seven"
  docs = [corpus_slice()[i:i + 1500] for i in range(0, 90_000, 1500)]
  path = tokenizer.SentencePiece.train(docs, 300, str(tmp_path / "m" / "sp.model"))
  sp = tokenizer.from_spec(f"sentencepiece:{path}")
  assert sp.kind == "sentencepiece" and sp.eos_id == 1 and sp.vocab_size <= 300
  assert sp.decode(sp.encode(docs[3])) == docs[3].strip()
  assert tokenizer.from_spec(f"spm:{path}").sha256 == sp.sha256 == \
      tokenizer.from_spec(path).sha256


def test_tokenizer_files_from_a_bucket(tmp_path):
  from fake_bucket import fake_gcs
  local = train_bpe(tmp_path / "bpe.json", vocab_size=300, n_chars=50_000)
  with fake_gcs():
    fs.write_bytes_atomic("gs://tok/gpt2ish.json", open(local, "rb").read())
    tok = tokenizer.from_spec("hf:gs://tok/gpt2ish.json")
    assert tok.decode(tok.encode("Let there be light.")) == "Let there be light."
    assert tokenizer.from_spec("gs://tok/gpt2ish.json").sha256 == tok.sha256
    with pytest.raises(errors.DataError, match="gs://tok/missing.json.*does not exist"):
      tokenizer.from_spec("hf:gs://tok/missing.json")


def test_tokenizer_errors_name_the_file(tmp_path):
  with pytest.raises(errors.DataError, match="nope.json.*does not exist.*never downloads"):
    tokenizer.from_spec(f"hf:{tmp_path / 'nope.json'}")
  bad = tmp_path / "bad.json"
  bad.write_text("{not json")
  with pytest.raises(errors.DataError, match="bad.json.*not a Hugging Face tokenizers"):
    tokenizer.from_spec(f"hf:{bad}")
  junk = tmp_path / "junk.model"
  junk.write_bytes(b"\x00\x01garbage")
  with pytest.raises(errors.DataError, match="junk.model.*not a sentencepiece model"):
    tokenizer.from_spec(str(junk))
  with pytest.raises(errors.DataError, match="choose char, sentencepiece:PATH or hf:PATH"):
    tokenizer.from_spec("gpt2")
  with pytest.raises(errors.DataError, match="needs a path"):
    tokenizer.from_spec("hf:")
