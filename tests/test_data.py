"""Input pipeline: cleaning rule, loaders' errors, deterministic sharded resumable batches."""

import lzma
import os
import zipfile

import numpy as np
import pytest

from tcsm_jax.data import pipeline, text8


def test_clean_text_follows_text8_rule():
  assert text8.clean_text("Hello, World! 42 times\n\tAGAIN") == \
      "hello world four two times again"
  assert text8.clean_text("  ") == ""
  ids = text8.encode("ab z")
  assert ids.tolist() == [1, 2, 0, 26]
  assert text8.decode(ids) == "ab z"


def test_encode_rejects_characters_outside_alphabet():
  with pytest.raises(ValueError, match="outside the text8 alphabet"):
    text8.encode("abc!")
  with pytest.raises(ValueError, match="token ids"):
    text8.decode(np.array([0, 27]))


def test_bundled_corpus_is_clean_english():
  ds = pipeline.load_bundled()
  assert len(ds.train) > 3_500_000 and len(ds.validation) > 150_000
  assert ds.vocab_size == 27 and ds.train.max() < 27
  text = ds.decode(ds.train[:200])
  assert text.startswith("in the beginning god created the heaven and the earth")


def test_text8_loader_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    pipeline.load_text8(str(tmp_path / "missing.zip"))
  empty = tmp_path / "text8"
  empty.write_text("")
  with pytest.raises(ValueError, match="empty"):
    text8.read_text8(str(empty))
  short = tmp_path / "text8.zip"
  with zipfile.ZipFile(short, "w") as zf:
    zf.writestr("text8", "hello world " * 100)
  with pytest.raises(ValueError, match="truncated"):
    pipeline.load_text8(str(short))
  bad = tmp_path / "bad"
  bad.write_text("Hello")
  with pytest.raises(ValueError, match="outside the text8 alphabet"):
    pipeline.load_text8(str(bad))


def test_text_file_loader_cleans(tmp_path):
  p = tmp_path / "raw.txt.xz"
  with lzma.open(p, "wt") as f:
    f.write("Call me Ishmael. Some years ago -- never mind how long 2!\n" * 50)
  ds = pipeline.load_text_file(str(p))
  assert ds.decode(ds.train[:15]) == "call me ishmael"
  with pytest.raises(ValueError, match="no text"):
    (tmp_path / "junk.txt").write_text("!!! ???")
    pipeline.load_text_file(str(tmp_path / "junk.txt"))


def test_sampler_is_deterministic_sharded_and_resumable():
  tokens = np.arange(10_000) % 27
  full = pipeline.ChunkSampler(tokens, 16, 8, seed=3)
  a = [full.batch(s) for s in range(30)]
  b = [full.batch(s) for s in range(30)]
  np.testing.assert_array_equal(a, b)
  # Resuming at step 17 yields exactly the batches from 17 on.
  it = full.iterate(17)
  for s in range(17, 22):
    np.testing.assert_array_equal(next(it), a[s])
  # Hosts read disjoint slices whose concatenation is the global batch.
  shards = [pipeline.ChunkSampler(tokens, 16, 8, seed=3, process_index=i, process_count=4)
            for i in range(4)]
  for s in [0, 5, 77]:
    np.testing.assert_array_equal(np.concatenate([h.batch(s) for h in shards]),
                                  full.batch(s))
  # One epoch visits every chunk exactly once.
  n = full.num_chunks
  seen = np.concatenate([full.indices(s) for s in range(n // 8)])
  assert len(np.unique(seen)) == len(seen) == (n // 8) * 8
  # Different seeds shuffle differently.
  assert not np.array_equal(pipeline.ChunkSampler(tokens, 16, 8, seed=4).batch(0), a[0])


def test_sampler_errors_and_eval_batches():
  with pytest.raises(ValueError, match="fewer than one chunk"):
    pipeline.ChunkSampler(np.zeros(5, np.int32), 16, 4)
  with pytest.raises(ValueError, match="does not divide"):
    pipeline.ChunkSampler(np.zeros(500, np.int32), 16, 6, process_count=4)
  tokens = np.arange(1000) % 27
  batches = list(pipeline.eval_batches(tokens, 10, 4))
  assert len(batches) == 25
  np.testing.assert_array_equal(batches[0][1], tokens[10:20])
  assert len(list(pipeline.eval_batches(tokens, 10, 4, max_batches=3))) == 3


def _doc_file(tmp_path, n_docs=60):
  text = pipeline.load_bundled().decode(pipeline.load_bundled().train[:n_docs * 1500])
  docs = [text[i * 1500:(i + 1) * 1500] for i in range(n_docs)]
  p = tmp_path / "docs.txt"
  p.write_text("\n\n".join(docs))
  return str(p), docs


def test_wordpiece_trains_sentencepiece_and_packs(tmp_path):
  from tcsm_jax.data import wordpiece
  from tcsm_jax.training import config as config_lib
  path, docs = _doc_file(tmp_path)
  cfg = config_lib.default_config().data
  cfg.name, cfg.path, cfg.spm_vocab_size = "wordpiece", path, 300
  cfg.spm_model = str(tmp_path / "spm" / "m.model")
  ds = wordpiece.load(cfg)
  assert os.path.exists(cfg.spm_model)
  assert ds.vocab_size <= 300 and ds.train.max() < ds.vocab_size
  import sentencepiece as spm
  sp = spm.SentencePieceProcessor(model_file=cfg.spm_model)
  # One </s> per document; documents decode back exactly.
  n_train = int(len(docs) * 0.95)
  assert int((ds.train == sp.eos_id()).sum()) == n_train
  first_doc = ds.train[:int(np.argmax(ds.train == sp.eos_id()))]
  assert ds.decode(first_doc) == docs[0].strip()
  chunks = pipeline.ChunkSampler(ds.train, 64, 4).batch(0)
  assert chunks.shape == (4, 64)
  # A second load reuses the saved model (same ids).
  np.testing.assert_array_equal(wordpiece.load(cfg).train, ds.train)
  # One document per row: the document, </s>, then the pad id (appended to the vocab).
  with cfg.unlocked():
    cfg.layout = "padded"
  cfg.seq_len = 512
  padded = wordpiece.load(cfg)
  pad = ds.vocab_size
  assert padded.pad_id == pad and padded.vocab_size == pad + 1 and padded.layout == "padded"
  rows = padded.train.reshape(-1, 512)
  first = np.append(sp.encode(docs[0].strip()), sp.eos_id())
  n = -(-len(first) // 512)
  np.testing.assert_array_equal(rows[:n].reshape(-1)[:len(first)], first)
  assert (rows[:n].reshape(-1)[len(first):] == pad).all()
  assert padded.decode(rows[:n].reshape(-1)) == docs[0].strip()
  assert int((padded.train != pad).sum()) == len(ds.train)


def test_wordpiece_reads_tfds_without_tensorflow(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds
  from tcsm_jax.data import wordpiece
  from tcsm_jax.training import config as config_lib
  _, docs = _doc_file(tmp_path, 40)
  calls = []

  def fake_source(name, split, data_dir, download):
    calls.append((name, split, download))
    return [{"text": d.encode()} for d in (docs[:36] if split == "train" else docs[36:])]

  monkeypatch.setattr(tfds, "data_source", fake_source)
  cfg = config_lib.default_config().data
  cfg.name, cfg.tfds_name, cfg.spm_vocab_size = "wordpiece", "openwebtext", 200
  ds = wordpiece.load(cfg, workdir=str(tmp_path))
  assert calls and all(c[2] is False for c in calls)      # never downloads
  assert os.path.exists(tmp_path / "spm.model") and len(ds.validation) > 0

  def missing(*a, **k):
    raise OSError("not found")

  monkeypatch.setattr(tfds, "data_source", missing)
  with pytest.raises(FileNotFoundError, match="never downloads"):
    list(wordpiece.tfds_documents("lm1b", "train", "", "text"))


# ----------------------------------------------------------------- input validation


def _text8_zip(path, text, compression=zipfile.ZIP_DEFLATED):
  with zipfile.ZipFile(path, "w", compression) as zf:
    zf.writestr("text8", text)
  return str(path)


def test_text_file_rejects_random_bytes_and_mostly_dropped_text(tmp_path):
  from tcsm_jax import errors
  junk = tmp_path / "random.bin"
  junk.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, np.uint8).tobytes())
  with pytest.raises(errors.DataError, match="random.bin.*not valid UTF-8 text"):
    pipeline.load_text_file(str(junk))
  greek = tmp_path / "greek.txt"
  greek.write_text("Ἐν ἀρχῇ ἦν ὁ λόγος, καὶ ὁ λόγος ἦν πρὸς τὸν θεόν. a b c\n" * 200,
                   encoding="utf-8")
  with pytest.raises(errors.DataError, match=r"greek.txt.*drop 9\d% .*limit 20%"):
    pipeline.load_text_file(str(greek))
  # A lenient limit accepts it; ordinary English prose (punctuation) passes the default.
  assert len(pipeline.load_text_file(str(greek), max_dropped=1.0).train) > 0
  prose = tmp_path / "prose.txt"
  prose.write_text("It was the best of times, it was the worst of times; (it was!)\n" * 99)
  assert pipeline.load_text_file(str(prose)).decode(np.arange(1, 4)) == "abc"
  # data.max_dropped_fraction reaches the loader through the config.
  import ml_collections
  cfg = ml_collections.ConfigDict({"data": {"name": "text_file", "path": str(greek),
                                            "max_dropped_fraction": 1.0}})
  assert pipeline.load(cfg).vocab_size == 27


def test_corrupt_text8_zips_name_the_file(tmp_path):
  from tcsm_jax import errors
  text = "anarchism originated as a term of abuse " * 5000
  good = _text8_zip(tmp_path / "good.zip", text)
  raw = open(good, "rb").read()
  truncated = tmp_path / "truncated.zip"
  truncated.write_bytes(raw[:len(raw) // 2])
  with pytest.raises(errors.DataError, match="truncated.zip.*corrupt or truncated"):
    text8.read_text8(str(truncated))
  garbled = bytearray(raw)
  for i in range(60, 260):           # inside the deflate stream of the one member
    garbled[i] ^= 0x5A
  (tmp_path / "garbled.zip").write_bytes(bytes(garbled))
  with pytest.raises(errors.DataError, match="garbled.zip"):
    pipeline.load_text8(str(tmp_path / "garbled.zip"))
  latin = _text8_zip(tmp_path / "latin1.zip", "caf\xe9 " * 100)
  with pytest.raises(errors.DataError, match="latin1.zip.*corrupt"):
    text8.read_text8(latin)
  two = tmp_path / "two.zip"
  with zipfile.ZipFile(two, "w") as zf:
    zf.writestr("a", "x")
    zf.writestr("b", "y")
  with pytest.raises(errors.DataError, match="exactly one member"):
    text8.read_text8(str(two))
  # Missing files are both a DataError (one-line CLI error) and a FileNotFoundError.
  with pytest.raises(errors.DataError, match="does not exist"):
    pipeline.load_text_file(str(tmp_path / "nope.txt"))


def test_char_corpora_read_through_a_bucket():
  from fake_bucket import fake_gcs, leaked_local_dirs
  from tcsm_jax import errors, fs
  from tcsm_jax.training import config as config_lib
  with fake_gcs():
    fs.write_bytes_atomic("gs://b/raw.txt", b"Call me Ishmael. " * 400)
    cfg = config_lib.default_config()
    cfg.data.name, cfg.data.path = "text_file", "gs://b/raw.txt"
    ds = pipeline.load(cfg)
    assert ds.decode(ds.train[:15]) == "call me ishmael"
    import io
    buf = io.BytesIO()
    _text8_zip(buf, " in the beginning was the word" * 1000)
    fs.write_bytes_atomic("gs://b/text8.zip", buf.getvalue())
    assert text8.read_text8("gs://b/text8.zip").startswith(" in the beginning")
    fs.write_bytes_atomic("gs://b/cut.zip", buf.getvalue()[:200])
    with pytest.raises(errors.DataError, match="gs://b/cut.zip"):
      text8.read_text8("gs://b/cut.zip")
    with pytest.raises(errors.DataError, match="gs://b/missing.zip.*does not exist"):
      pipeline.load_text8("gs://b/missing.zip")
  assert not leaked_local_dirs()


def test_data_modules_import_one_way():
  """Loaders import ``base``, never ``pipeline`` (which imports them)."""
  import ast
  import pathlib
  root = pathlib.Path(pipeline.__file__).parent
  for f in root.glob("*.py"):
    if f.name == "pipeline.py":
      continue
    for node in ast.walk(ast.parse(f.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module == "tcsm_jax.data":
        assert "pipeline" not in [a.name for a in node.names], f.name
      if isinstance(node, ast.Import):
        assert "tcsm_jax.data.pipeline" not in [a.name for a in node.names], f.name


def test_layout_padded_needs_documents():
  from tcsm_jax import errors
  from tcsm_jax.training import config as config_lib
  cfg = config_lib.default_config()
  cfg.data.name = "bundled"
  with cfg.unlocked():
    cfg.data.layout = "padded"
  with pytest.raises(errors.ConfigError, match="data.layout='padded' needs documents"):
    pipeline.load(cfg)
  cfg.data.name = "nonesuch"
  with pytest.raises(errors.ConfigError, match="unknown data.name 'nonesuch'"):
    pipeline.load(cfg)
