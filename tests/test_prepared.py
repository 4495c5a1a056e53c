"""Prepared token shards: prepare once, memory-map, checks that name the file, buckets,
flat memory as the corpus grows, and the prepare_data binary."""

import json
import os
import subprocess
import sys
import textwrap
import zipfile
import zlib

import numpy as np
import pytest

from tcsm_jax import errors, fs
from tcsm_jax.data import base, pipeline, prepared, sources, text8, tokenizer
from tcsm_jax.training import config as config_lib

from helpers import tiny_train_cmd

from test_tokenizers import corpus_slice, train_bpe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _docs(n=80, size=1500):
  text = corpus_slice()
  return [text[i * size:(i + 1) * size].strip() for i in range(n)]


def _doc_file(tmp_path, docs, sep="\n\n", name="docs.txt"):
  p = tmp_path / name
  p.write_text(sep.join(docs) + "\n")
  return str(p)


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
  return train_bpe(tmp_path_factory.mktemp("tok") / "bpe.json", 400, 100_000)


def _data_cfg(path, **kw):
  cfg = config_lib.default_config()
  cfg.data.name, cfg.data.path = "prepared", path
  with cfg.unlocked():
    for k, v in kw.items():
      cfg.data[k] = v
  return cfg


def test_prepare_and_load_bpe_packed(tmp_path, bpe):
  docs = _docs()
  src = sources.documents_source(_doc_file(tmp_path, docs), "text")
  tok = tokenizer.from_spec(f"hf:{bpe}")
  out = str(tmp_path / "prep")
  m = prepared.prepare(out, src, tok, progress=False)
  assert m["dtype"] == "uint16" and m["layout"] == "packed" and m["vocab_size"] == \
      tok.vocab_size
  assert m["splits"]["train"]["num_documents"] == 76 and \
      m["splits"]["validation"]["num_documents"] == 4
  assert m["tokenizer"]["sha256"] == tok.sha256 and m["special_tokens"]["eos"] == 0
  assert os.path.exists(os.path.join(out, "tokenizer.json"))
  ds = pipeline.load(_data_cfg(out))
  assert isinstance(ds.train, np.memmap) and isinstance(ds.validation, np.memmap)
  assert ds.train.dtype == np.uint16 and not ds.train.flags.writeable
  want = np.concatenate([np.append(tok.encode(d), 0) for d in docs[:76]])
  np.testing.assert_array_equal(ds.train, want)
  assert m["splits"]["train"]["num_tokens"] == len(want)
  # The dataset decodes and encodes with the manifest's tokenizer.
  first = ds.train[:int(np.argmax(ds.train == 0))]
  assert ds.decode(first) == docs[0]
  np.testing.assert_array_equal(ds.encode("in the beginning"), tok.encode("in the beginning"))
  assert ds.vocab_size == tok.vocab_size and ds.eos_id == 0 and ds.pad_id is None
  assert pipeline.stats(ds)["tokenizer_sha256"] == tok.sha256
  # Batches are a pure function of (seed, step), identical to the in-memory array's.
  mem = np.array(ds.train)
  a = base.ChunkSampler(ds.train, 64, 8, seed=5)
  b = base.ChunkSampler(mem, 64, 8, seed=5)
  for step in (0, 3, 1000):
    np.testing.assert_array_equal(a.batch(step), b.batch(step))
    assert a.batch(step).dtype == np.int32
  ev = list(base.eval_batches(ds.validation, 32, 4))
  assert ev and ev[0].dtype == np.int32
  np.testing.assert_array_equal(ev[0][1], ds.validation[32:64])
  # Preparing again into the same directory needs overwrite.
  with pytest.raises(errors.DataError, match="already holds a prepared dataset"):
    prepared.prepare(out, src, tok, progress=False)


def test_padded_layout_one_document_per_row(tmp_path, bpe):
  docs = [d[:n].strip() for d, n in zip(_docs(40), [50, 300, 120, 700] * 10)]
  src = sources.documents_source(_doc_file(tmp_path, docs), "text",
                                 validation_fraction=0.1)
  tok = tokenizer.from_spec(f"hf:{bpe}")
  out = str(tmp_path / "padded")
  m = prepared.prepare(out, src, tok, layout="padded", seq_len=64, progress=False)
  pad = tok.vocab_size                        # no pad token: one id appended
  assert m["vocab_size"] == tok.vocab_size + 1 and m["special_tokens"]["pad"] == pad
  ds = prepared.load(out, seq_len=64, layout="padded")
  assert ds.pad_id == pad and ds.layout == "padded" and ds.vocab_size == pad + 1
  rows = np.asarray(ds.train).reshape(-1, 64)
  # Every document starts a row; its tokens + EOS, then padding; long ones continue.
  r = 0
  for d in docs[:36]:
    ids = np.append(tok.encode(d), tok.eos_id)
    n = -(-len(ids) // 64)
    flat = rows[r:r + n].reshape(-1)
    np.testing.assert_array_equal(flat[:len(ids)], ids)
    assert (flat[len(ids):] == pad).all()
    r += n
  assert r == len(rows) == m["splits"]["train"]["num_rows"]
  assert m["splits"]["train"]["num_real_tokens"] == int((rows != pad).sum())
  assert ds.decode(rows[0]) == docs[0] + "<|endoftext|>"
  # The config must ask for this layout and row length.
  with pytest.raises(errors.DataError, match="padded rows of 64 tokens; data.seq_len is 128"):
    pipeline.load(_data_cfg(out, layout="padded"))
  with pytest.raises(errors.DataError, match="layout 'padded', the config asks for 'packed'"):
    pipeline.load(_data_cfg(out))
  cfg = _data_cfg(out, layout="padded")
  cfg.data.seq_len = 64
  assert pipeline.load(cfg).pad_id == pad
  # A WordPiece-style tokenizer with its own [PAD] keeps its vocabulary.
  from test_tokenizers import train_wordpiece
  wp = tokenizer.from_spec(f"hf:{train_wordpiece(tmp_path / 'wp.json', 300)}")
  m = prepared.prepare(str(tmp_path / "wp"), src, wp, layout="padded", seq_len=32,
                       progress=False)
  assert m["vocab_size"] == wp.vocab_size and m["special_tokens"]["pad"] == 0


def test_text8_jsonl_and_tfds_sources(tmp_path, monkeypatch):
  text = " " + corpus_slice()[:60_000]
  zpath = tmp_path / "text8.zip"
  with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
    zf.writestr("text8", text)
  splits = {"train": (0, 50_000), "validation": (50_000, 55_000), "test": (55_000, 60_000)}
  src = sources.text8_source(str(zpath), splits, piece_chars=4096)
  m = prepared.prepare(str(tmp_path / "t8"), src, tokenizer.CharTokenizer(),
                       progress=False)
  assert m["dtype"] == "uint16" and m["vocab_size"] == 27 and m["tokenizer"]["file"] is None
  ds = prepared.load(str(tmp_path / "t8"))
  for name, (a, b) in splits.items():
    got = ds.train if name == "train" else prepared.load(
        str(tmp_path / "t8"), validation_split=name).validation
    np.testing.assert_array_equal(got, text8.encode(text[a:b]))   # the exact split
  assert ds.decode(ds.validation[:20]) == text[50_000:50_020]
  with pytest.raises(errors.DataError, match="no padding|no documents to pad"):
    prepared.prepare(str(tmp_path / "t8p"), src, tokenizer.CharTokenizer(),
                     layout="padded", seq_len=8, progress=False)
  # One long document (the bundled corpus is one line): the last 5% of its characters
  # is the validation split, as data.name=text_file does.
  one = tmp_path / "one.txt"
  doc = text[:20_000].strip()
  one.write_text(doc + "\n")
  prepared.prepare(str(tmp_path / "one"), sources.documents_source(str(one), "text"),
                   tokenizer.CharTokenizer(), progress=False)
  ds = prepared.load(str(tmp_path / "one"))
  # Each split ends in the separator (a space); the space at the cut is dropped.
  assert ds.decode(ds.train[:-1]) + " " + ds.decode(ds.validation[:-1]) == doc
  assert 800 < len(ds.validation) < 1200
  # JSON lines, one document per object.
  docs = _docs(20)
  jl = tmp_path / "docs.jsonl"
  jl.write_text("\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(docs)))
  m = prepared.prepare(str(tmp_path / "jl"), sources.documents_source(str(jl), "jsonl"),
                       tokenizer.CharTokenizer(), progress=False)
  ds = prepared.load(str(tmp_path / "jl"))
  assert m["splits"]["validation"]["num_documents"] == 1
  assert ds.decode(ds.validation) == docs[-1] + " "       # char: documents end in a space
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"text": "a"}\n{oops\n')
  with pytest.raises(errors.DataError, match="bad.jsonl.*line 2 is not JSON"):
    sources.documents_source(str(bad), "jsonl")
  # A locally prepared tfds dataset without a validation split (OpenWebText): the last
  # documents of train are held out; never downloads.
  import tensorflow_datasets as tfds
  calls = []

  def fake_source(name, split, data_dir, download):
    calls.append((name, split, download))
    if split != "train":
      raise ValueError(f"unknown split {split}")
    return [{"text": d.encode()} for d in docs]

  monkeypatch.setattr(tfds, "data_source", fake_source)
  src = sources.source_from_spec("tfds:openwebtext", validation_docs=3)
  assert src.num_docs == {"train": 17, "validation": 3}
  m = prepared.prepare(str(tmp_path / "owt"), src, tokenizer.CharTokenizer(),
                       progress=False)
  assert calls and all(c[2] is False for c in calls)
  assert m["source"]["tfds_name"] == "openwebtext"
  assert prepared.load(str(tmp_path / "owt")).decode(
      prepared.load(str(tmp_path / "owt")).validation[:30]) == docs[17][:30]


def test_checks_name_the_file(tmp_path, bpe, monkeypatch):
  src = sources.documents_source(_doc_file(tmp_path, _docs(30)), "text")
  tok = tokenizer.from_spec(f"hf:{bpe}")
  out = tmp_path / "p"
  m = prepared.prepare(str(out), src, tok, progress=False)
  hashed = []
  real_hash = prepared._hash_file
  monkeypatch.setattr(prepared, "_hash_file",
                      lambda *a: hashed.append(a[0]) or real_hash(*a))
  # verify='once': prepare recorded its hashes, so a load hashes nothing ...
  prepared.load(str(out))
  assert hashed == []
  prepared.load(str(out), verify="always")
  assert len(hashed) == 2
  # ... until a shard changes (same size, new mtime): a DataError naming it.
  train = out / "train.bin"
  raw = bytearray(train.read_bytes())
  raw[100] ^= 0xFF
  train.write_bytes(bytes(raw))
  with pytest.raises(errors.DataError, match="train.bin.*sha256.*corrupt"):
    prepared.load(str(out))
  prepared.load(str(out), verify="size")          # size checks only: loads
  train.write_bytes(bytes(raw[:-2]))              # truncated
  with pytest.raises(errors.DataError, match=r"train.bin.*bytes; the manifest says"):
    prepared.load(str(out), verify="size")
  train.write_bytes(bytes(raw[:len(raw)]))
  raw[100] ^= 0xFF
  train.write_bytes(bytes(raw))                   # restored: verifies and records again
  hashed.clear()
  prepared.load(str(out))
  prepared.load(str(out))
  assert len(hashed) == 1                         # train only; validation was recorded
  mpath = out / "manifest.json"
  good = mpath.read_text()

  def edit(**kw):
    d = json.loads(good)
    d.update(kw)
    mpath.write_text(json.dumps(d))

  edit(dtype="uint32")
  with pytest.raises(errors.DataError, match="train.bin.*bytes; the manifest says.*uint32"):
    prepared.load(str(out), verify="size")
  edit(dtype="int8")
  with pytest.raises(errors.DataError, match="manifest.json.*dtype 'int8'"):
    prepared.load(str(out))
  edit(vocab_size=m["vocab_size"] + 5)
  with pytest.raises(errors.DataError, match="manifest.json.*vocab_size.*tokenizer gives"):
    prepared.load(str(out))
  mpath.write_text(good)
  # A shard holding an id outside the vocabulary (with a matching checksum).
  ids = np.fromfile(train, np.uint16)
  ids[7] = m["vocab_size"]
  ids.tofile(train)
  d = json.loads(good)
  d["splits"]["train"]["sha256"] = tokenizer.sha256_bytes(ids.tobytes())
  mpath.write_text(json.dumps(d))
  with pytest.raises(errors.DataError, match="train.bin.*holds id .* outside"):
    prepared.load(str(out), verify="always")
  mpath.write_text(good)
  # The tokenizer copy must be the one the manifest hashed.
  (out / "tokenizer.json").write_text(open(train_bpe(tmp_path / "other.json", 300,
                                                     30_000)).read())
  with pytest.raises(errors.DataError, match="tokenizer.json.*sha256.*changed"):
    prepared.load(str(out), verify="size")
  with pytest.raises(errors.DataError, match="no manifest.json.*prepare_data"):
    prepared.load(str(tmp_path))
  (out / "manifest.json").write_text("{")
  with pytest.raises(errors.DataError, match="manifest.json.*not valid JSON"):
    prepared.load(str(out))


def test_evaluation_expectations_and_wide_vocabularies(tmp_path, bpe):
  src = sources.documents_source(_doc_file(tmp_path, _docs(10)), "text",
                                 validation_fraction=1.0)      # an evaluation-only set
  tok = tokenizer.from_spec(f"hf:{bpe}")
  out = str(tmp_path / "eval")
  m = prepared.prepare(out, src, tok, progress=False)
  assert list(m["splits"]) == ["validation"]
  ds = prepared.load(out, need_train=False, expect_tokenizer_sha=tok.sha256,
                     expect_vocab_size=tok.vocab_size)
  assert len(ds.train) == 0 and len(ds.validation) == m["splits"]["validation"][
      "num_tokens"]
  with pytest.raises(errors.DataError, match="no 'train' split"):
    prepared.load(out)
  with pytest.raises(errors.DataError, match="tokenizer sha256 .* the model's is 0000"):
    prepared.load(out, need_train=False, expect_tokenizer_sha="0" * 64)
  with pytest.raises(errors.DataError, match="vocabulary of .* the model has 27"):
    prepared.load(out, need_train=False, expect_vocab_size=27)
  with pytest.raises(errors.DataError, match="no 'test' split"):
    prepared.load(out, need_train=False, validation_split="test")
  # More than 65,536 ids: uint32 shards.
  from tokenizers import Tokenizer, models, pre_tokenizers
  words = {f"w{i}": i for i in range(70_000)}
  words["[UNK]"] = 70_000
  wl = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
  wl.pre_tokenizer = pre_tokenizers.Whitespace()
  fs.write_text_atomic(tmp_path / "wide.json", wl.to_str())
  wide = tokenizer.from_spec(f"hf:{tmp_path / 'wide.json'}")
  (tmp_path / "w.txt").write_text("w1 w69999 w5\n\nw70 w2\n")
  m = prepared.prepare(str(tmp_path / "wide"), sources.documents_source(
      str(tmp_path / "w.txt"), "text"), wide, progress=False)
  assert m["dtype"] == "uint32" and prepared.dtype_for(65_536) == "uint16"
  ds = prepared.load(str(tmp_path / "wide"))
  assert ds.train.dtype == np.uint32 and ds.train.tolist() == [1, 69_999, 5]


def test_tokenizer_travels_without_shards(tmp_path, bpe):
  from fake_bucket import fake_gcs
  src = sources.documents_source(_doc_file(tmp_path, _docs(10)), "text")
  tok = tokenizer.from_spec(f"hf:{bpe}")
  prepared.prepare(str(tmp_path / "p"), src, tok, layout="padded", seq_len=16,
                   progress=False)
  with fake_gcs():   # e.g. into a bucket workdir
    prepared.copy_tokenizer(str(tmp_path / "p"), "gs://w/run/tokenizer")
    assert sorted(fs.listdir("gs://w/run/tokenizer")) == ["manifest.json",
                                                          "tokenizer.json"]
    ds = prepared.tokenizer_only("gs://w/run/tokenizer")
  assert len(ds.train) == len(ds.validation) == 0
  assert ds.vocab_size == tok.vocab_size + 1 and ds.pad_id == tok.vocab_size
  ids = np.append(ds.encode("let there be light"), [ds.pad_id] * 3)
  assert ds.decode(ids) == "let there be light"
  # A character model (bundled corpus) matches a set prepared with --tokenizer=char.
  (tmp_path / "c.txt").write_text("one two three\n\nfour five six\n")
  prepared.prepare(str(tmp_path / "c"), sources.documents_source(
      str(tmp_path / "c.txt"), "text", validation_fraction=1.0), tokenizer.CharTokenizer(),
                   progress=False)
  bundled = pipeline.load_bundled()
  ev = prepared.load(str(tmp_path / "c"), need_train=False,
                     expect_tokenizer_sha=bundled.info["tokenizer_sha256"],
                     expect_vocab_size=bundled.vocab_size)
  assert ev.decode(ev.validation) == "one two three four five six "


def test_prepared_on_a_bucket(tmp_path, bpe):
  from fake_bucket import fake_gcs, leaked_local_dirs
  docs = _docs(20)
  with fake_gcs():
    fs.write_text_atomic("gs://b/docs.txt", "\n".join(docs))
    fs.write_bytes_atomic("gs://b/bpe.json", open(bpe, "rb").read())
    src = sources.documents_source("gs://b/docs.txt", "text", doc_sep="line")
    tok = tokenizer.from_spec("hf:gs://b/bpe.json")
    m = prepared.prepare("gs://b/prep", src, tok, progress=False)
    assert fs.exists("gs://b/prep/manifest.json") and fs.exists("gs://b/prep/train.bin")
    # Small sets on a bucket are read into memory (and always hashed).
    ds = pipeline.load(_data_cfg("gs://b/prep"))
    assert len(ds.train) == m["splits"]["train"]["num_tokens"]
    assert ds.decode(ds.validation[:-1]) == docs[-1]
    assert prepared.verify("gs://b/prep", progress=False)["train"]["ok"]
    # A big one asks to be copied to local disk.
    with pytest.raises(errors.DataError, match="gs://b/prep.*copy the directory to local"):
      prepared.load("gs://b/prep", in_memory_limit=100)
    raw = bytearray(fs.read_bytes("gs://b/prep/validation.bin"))
    raw[0] ^= 1
    fs.write_bytes_atomic("gs://b/prep/validation.bin", bytes(raw))
    with pytest.raises(errors.DataError, match="gs://b/prep/validation.bin.*sha256"):
      prepared.load("gs://b/prep")
  assert not leaked_local_dirs()


_RSS_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from tcsm_jax.data import base, prepared

    def status():
      out = {}
      for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
          out[k] = int(v.split()[0])        # kB
      return out

    before = status()
    ds = prepared.load(sys.argv[1], verify="once")
    sampler = base.ChunkSampler(ds.train, 128, 8, seed=0)
    total = 0
    for step in range(100):
      total += int(sampler.batch(step)[:, 0].sum())
    for b in base.eval_batches(ds.validation, 128, 8, max_batches=10):
      total += int(b[0, 0])
    after = status()
    print(json.dumps({"before": before, "after": after, "train": len(ds.train)}))
""")


def _write_random(out, n_train, seed):
  rng = np.random.default_rng(seed)
  return prepared.write_shards(
      out, {"train": rng.integers(0, 27, n_train, dtype=np.uint16),
            "validation": rng.integers(0, 27, n_train // 10, dtype=np.uint16)},
      tokenizer.CharTokenizer())


def _rss(path):
  env = dict(os.environ, PYTHONPATH=REPO)
  out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, path], capture_output=True,
                       text=True, env=env, check=True, timeout=120)
  r = json.loads(out.stdout.strip().splitlines()[-1])
  return {k: r["after"][k] - r["before"][k] for k in ("VmRSS", "RssAnon", "RssFile")}


def test_memory_stays_flat_as_the_corpus_grows(tmp_path):
  """Load + 100 batches + 10 eval batches: resident memory of a 40M-token corpus is
  within a few MB of a 1M-token corpus (the shards are memory-mapped)."""
  _write_random(str(tmp_path / "small"), 1_000_000, 0)
  _write_random(str(tmp_path / "big"), 40_000_000, 1)
  small, big = _rss(str(tmp_path / "small")), _rss(str(tmp_path / "big"))
  print(f"RSS growth (kB) 1M tokens: {small}; 40M tokens: {big}")
  assert big["RssAnon"] - small["RssAnon"] < 2048, (small, big)
  assert big["VmRSS"] - small["VmRSS"] < 4096, (small, big)
  # The big corpus alone is 80 MB: nowhere near resident.
  assert big["VmRSS"] < 16_384, big


def test_prepare_data_binary(tmp_path, bpe):
  docs = _docs(30)
  path = _doc_file(tmp_path, docs, sep="\n", name="lines.txt")
  out = str(tmp_path / "bin_out")
  env = dict(os.environ, PYTHONPATH=REPO)

  def run(*args):
    return subprocess.run([sys.executable, "-m", "experiments.prepare_data", *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)

  r = run(f"--source=text:{path}", "--doc_sep=line", f"--tokenizer=hf:{bpe}",
          f"--out={out}", "--layout=padded", "--seq_len=48", "--noprogress")
  assert r.returncode == 0, r.stderr
  assert "--config.data.name=prepared" in r.stdout and "--config.data.seq_len=48" in r.stdout
  m = prepared.read_manifest(out)
  assert m["splits"]["train"]["num_documents"] == 28 and m["seq_len"] == 48
  cfg = _data_cfg(out, layout="padded")
  cfg.data.seq_len = 48
  ds = pipeline.load(cfg)
  assert ds.decode(np.asarray(ds.train[:48])).startswith(docs[0][:40])
  r = run(f"--out={out}", "--verify")
  assert r.returncode == 0 and "all 2 shards match" in r.stdout, r.stderr
  # A user error: a message naming the file, non-zero exit.
  junk = tmp_path / "junk.txt"
  junk.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, np.uint8).tobytes())
  r = run(f"--source=text:{junk}", "--tokenizer=char", f"--out={tmp_path / 'j'}",
          "--noprogress")
  assert r.returncode != 0 and "junk.txt" in r.stderr and "not valid UTF-8" in r.stderr


# ------------------------------------------------ padding: loss and NLL bound masks


class _PositionNoise:
  """A process whose noise at (row, column) does not depend on the row length: draws
  are made for ``_WIDTH`` columns and cut, so the real positions of a row are corrupted
  alike with or without padding columns."""

  _WIDTH = 32

  def __init__(self, proc):
    self.proc = proc

  def __getattr__(self, name):
    return getattr(self.proc, name)

  def sample_forward(self, key, x0, sigma):
    import jax.numpy as jnp
    b, l = x0.shape
    full = jnp.concatenate([x0, jnp.zeros((b, self._WIDTH - l), x0.dtype)], 1)
    return self.proc.sample_forward(key, full, sigma)[:, :l]


def _positionwise_denoiser(num_states, vocab, seed=0):
  """Logits at a position depend only on that position's noisy token and sigma."""
  import jax
  import jax.numpy as jnp
  w = jax.random.normal(jax.random.PRNGKey(seed), (num_states, vocab))
  c = jax.random.normal(jax.random.PRNGKey(seed + 1), (vocab,))
  return w, lambda p, x_t, sigma, train=False, key=None: (
      p[x_t] + jnp.asarray(sigma, jnp.float32)[:, None, None] * c)


# Each loss path (masked ELBO, SEDD, TCSM) and each bound integrand (absorbing, uniform).
@pytest.mark.parametrize("process_name,kind,form,div,bound", [
    ("absorbing", "masked_elbo", "score", "gkl", True),
    ("uniform", "sedd", "score", "gkl", True),
    ("absorbing", "tcsm", "score", "gkl", False),
])
def test_padding_is_excluded_from_loss_and_bound(process_name, kind, form, div, bound):
  """Documents padded with the pad id give the loss, gradient and NLL bound of the
  unpadded documents (a position-wise denoiser, so the padding cannot leak in through
  the network; the test is about the masks and the per-real-token normalization)."""
  import jax
  import jax.numpy as jnp
  import ml_collections
  from tcsm_jax import likelihood, objective, processes, schedules
  vocab, pad = 9, 8                          # tokens 0..7, pad id 8 (padded layout)
  proc = _PositionNoise(processes.get(process_name, vocab))
  sched = schedules.get("geometric", sigma_min=0.05, sigma_max=6.0)   # recon term too
  params, apply_fn = _positionwise_denoiser(proc.num_states, vocab)
  cfg = ml_collections.ConfigDict(dict(kind=kind, form=form, divergence=div,
                                       weighting="dsigma", t_min=1e-3, stratified=True,
                                       teacher_weight=0.0))
  rng = np.random.default_rng(0)
  docs = jnp.asarray(rng.integers(0, 8, (4, 6)), jnp.int32)            # 4 documents
  padded = jnp.concatenate([docs, jnp.full((4, 5), pad, jnp.int32)], 1)
  wider = jnp.concatenate([padded, jnp.full((4, 7), pad, jnp.int32)], 1)
  key = jax.random.PRNGKey(3)
  k_eval = jax.random.fold_in(key, 0)        # likelihood.evaluate's key of batch 0
  plain_fn = objective.make_loss_fn(cfg, proc, sched, apply_fn)
  pad_fn = objective.make_loss_fn(cfg, proc, sched, apply_fn, pad_id=pad)

  @jax.jit
  def run(p):             # one compile for every quantity compared
    denoise = lambda x_t, s: apply_fn(p, x_t, s)
    vg = (lambda f: jax.value_and_grad(f)(p)) if not bound else (
        lambda f: (f(p), jnp.zeros(())))             # gradients: in the TCSM case
    out = dict(want=vg(lambda q: plain_fn(q, docs, key)[0]),
               got=vg(lambda q: pad_fn(q, padded, key)[0]),
               wider=pad_fn(p, wider, key)[0], unmasked=plain_fn(p, padded, key)[0])
    if bound:
      out.update(
          b_want=likelihood.nll_bound(k_eval, denoise, docs, proc, sched, 2),
          b_got=likelihood.nll_bound(k_eval, denoise, padded, proc, sched, 2, pad_id=pad))
    return out

  r = run(params)
  (want, g_want), (got, g_got) = r["want"], r["got"]
  np.testing.assert_allclose(got, want, rtol=2e-6)
  np.testing.assert_allclose(g_got, g_want, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(r["wider"], want, rtol=2e-6)     # more padding: no change
  assert abs(float(r["unmasked"]) - float(want)) > 1e-3       # without the pad id it counts
  if not bound:
    return
  for term in ("bound", "diffusion", "prior", "recon"):
    np.testing.assert_allclose(r["b_got"][term], r["b_want"][term], rtol=2e-6, atol=1e-6)
  assert float(jnp.abs(r["b_want"]["recon"]).sum()) > 0
  assert r["b_got"]["num_tokens"].tolist() == [6] * 4
  if kind == "masked_elbo":                                   # the report's plumbing
    r_want = likelihood.summarize(r["b_want"]["bound"], r["b_want"]["prior"], 6)
    r_got = likelihood.evaluate(key, apply_fn, [padded], proc, sched, 2, params=params,
                                pad_id=pad)
    np.testing.assert_allclose(r_got.nats_per_token, r_want.nats_per_token, rtol=1e-6)
    np.testing.assert_allclose(r_got.stderr, r_want.stderr, rtol=1e-5)
    np.testing.assert_allclose(r_got.prior_per_token, r_want.prior_per_token, rtol=1e-6)


def test_padded_report_is_the_corpus_ratio():
  from tcsm_jax import likelihood
  bounds, counts = np.array([30.0, 10.0, 20.0]), np.array([10, 2, 8])
  r = likelihood.summarize(bounds, np.zeros(3), 12, counts)
  assert r.nats_per_token == pytest.approx(60.0 / 20.0)
  # Equal lengths: the same numbers as the unpadded summary.
  a = likelihood.summarize(bounds, np.ones(3), 10)
  b = likelihood.summarize(bounds, np.ones(3), 10, np.full(3, 10))
  assert (a.nats_per_token, a.prior_per_token) == pytest.approx(
      (b.nats_per_token, b.prior_per_token))
  assert a.stderr == pytest.approx(b.stderr)


def test_bit_rot_after_verification_is_refused_at_the_batch(tmp_path):
  """Issue 22 item 4: bytes that change after the checksum was recorded, with the same
  size and mtime, pass the cached verification; every batch's ids are still checked
  against the vocabulary, so the sampler and the eval batches refuse, naming the shard."""
  tok = tokenizer.from_spec("char")
  rng = np.random.default_rng(0)
  out = tmp_path / "p"
  m = prepared.write_shards(str(out), {"train": rng.integers(0, 27, 4096),
                                       "validation": rng.integers(0, 27, 1024)}, tok)
  ds = prepared.load(str(out))                    # verifies and records the checksums
  assert prepared.load(str(out)).vocab_size == m["vocab_size"] == 27
  base.ChunkSampler(ds.train, 64, 8, seed=0).batch(0)
  del ds
  for split in ("train", "validation"):
    shard = out / f"{split}.bin"
    st = os.stat(shard)
    ids = np.fromfile(shard, np.uint16)
    ids[::16] = 65535                             # rot: every 16th id
    ids.tofile(shard)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(shard).st_size == st.st_size
  ds = prepared.load(str(out))                    # the cached record says verified
  with pytest.raises(errors.DataError, match=r"train\.bin.*train batch of step 3 holds "
                     r"id 65535, outside the vocabulary of 27"):
    base.ChunkSampler(ds.train, 64, 8, seed=0).batch(3)
  with pytest.raises(errors.DataError, match=r"validation\.bin.*eval batch 0 holds id "
                     "65535"):
    next(base.eval_batches(ds.validation, 32, 4))
  with pytest.raises(errors.DataError, match="train.bin.*sha256.*corrupt"):
    prepared.load(str(out), verify="always")      # what the hash would have said


def test_training_on_a_rotted_shard_is_one_error_line(tmp_path):
  """The binary: bit rot after verification (same size, same mtime) ends training
  before its first step with one ``error:`` line naming the shard, status 2."""
  tok = tokenizer.from_spec("char")
  rng = np.random.default_rng(0)
  out = tmp_path / "p"
  prepared.write_shards(str(out), {"train": rng.integers(0, 27, 20_000),
                                   "validation": rng.integers(0, 27, 4096)}, tok)
  prepared.load(str(out))                         # verified once, recorded
  shard = out / "train.bin"
  st = os.stat(shard)
  ids = np.fromfile(shard, np.uint16)
  ids[::16] = 65535
  ids.tofile(shard)
  os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu")
  env.pop("TCSM_TRACEBACK", None)
  r = subprocess.run(tiny_train_cmd(tmp_path / "run", out, 2), cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=300)
  last = r.stderr.strip().splitlines()[-1]
  assert r.returncode == 2, r.stderr[-3000:]
  assert last.startswith("error: ") and "train.bin" in last and "65535" in last, last
  assert "Traceback" not in r.stderr


def test_a_sentencepiece_vocabulary_the_text_cannot_fill_is_said_in_one_line(tmp_path):
  """Issue 27 item 3: ``--spm_vocab_size=100000`` on a small text makes fewer pieces
  (sentencepiece's size is an upper bound here); the binary says how many, in one
  ``note:`` line, and the manifest holds that vocabulary."""
  path = _doc_file(tmp_path, _docs(60))
  out = tmp_path / "spm"
  env = dict(os.environ, PYTHONPATH=REPO)
  r = subprocess.run([sys.executable, "-m", "experiments.prepare_data",
                      f"--source=text:{path}", "--tokenizer=sentencepiece",
                      "--spm_vocab_size=100000", f"--out={out}", "--noprogress"],
                     capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  vocab = prepared.read_manifest(str(out))["vocab_size"]
  notes = [l for l in r.stdout.splitlines() if l.startswith("note: --spm_vocab_size")]
  assert len(notes) == 1 and f"sentencepiece made {vocab:,}" in notes[0], r.stdout
  assert vocab < 100_000


def _rot_in_range(shard, every=4099, offset=0):
  """Changes ids of ``shard`` in place to other ids in the vocabulary (27), keeping
  its size and mtime: only block checksums or a full hash can see it."""
  st = os.stat(shard)
  ids = np.fromfile(shard, np.uint16)
  ids[offset::every] = (ids[offset::every] + 1) % 27
  ids.tofile(shard)
  os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
  assert os.stat(shard).st_size == st.st_size


def test_block_checksums_catch_rot_that_keeps_ids_in_range(tmp_path):
  """Issue 27 item 4: the manifest holds a CRC32 per 1 MiB block; the train sampler
  and the eval batches check each block when the process first reads it, so bytes
  that rot in place (ids still in the vocabulary, same size and mtime, the cached
  sha256 record still fresh) are one error naming the shard and the block."""
  tok = tokenizer.from_spec("char")
  rng = np.random.default_rng(0)
  out = tmp_path / "p"
  n = 3 * (prepared.BLOCK_BYTES // 2) + 30             # 3 full uint16 blocks + a tail
  m = prepared.write_shards(str(out), {"train": rng.integers(0, 27, n),
                                       "validation": rng.integers(0, 27, n)}, tok)
  e, blk = m["splits"]["train"], prepared.BLOCK_BYTES
  data = (out / "train.bin").read_bytes()
  assert e["block_bytes"] == blk == 1 << 16 and e["crc32"] == "".join(
      f"{zlib.crc32(data[i:i + blk]):08x}" for i in range(0, len(data), blk))
  ds = prepared.load(str(out))                         # verified, recorded
  sampler = base.ChunkSampler(ds.train, 64, 8, seed=0)
  for step in range(80):
    sampler.batch(step)
  # Every block the chunks cover read once, fine (the tail past the last whole chunk
  # is never read, so never checked).
  assert ds.train.block_sums.checked.tolist() == [True, True, True, False]
  assert sum(1 for _ in base.eval_batches(ds.validation, 64, 16)) > 0
  del ds, sampler
  half = prepared.BLOCK_BYTES // 2
  _rot_in_range(out / "train.bin", every=n, offset=2 * half + 5)       # block 2
  _rot_in_range(out / "validation.bin", every=n, offset=half + 7)      # block 1
  ds = prepared.load(str(out))                         # the record says verified
  sampler = base.ChunkSampler(ds.train, 64, 8, seed=0)
  with pytest.raises(errors.DataError, match=rf"train\.bin'?: block 2 \(bytes "
                     rf"{2 * blk:,} to {3 * blk:,}\) has CRC32 .* the train batch of "
                     r"step \d+ reads it"):
    for step in range(200):
      sampler.batch(step)
  with pytest.raises(errors.DataError, match=rf"validation\.bin'?: block 1 \(bytes "
                     rf"{blk:,} to {2 * blk:,}\).*eval batch \d+ reads it"):
    for _ in base.eval_batches(ds.validation, 64, 16):
      pass
  # The per-batch id check still comes first, and the full hash still sees the rot.
  with pytest.raises(errors.DataError, match="train.bin.*sha256.*corrupt"):
    prepared.load(str(out), verify="always")


def test_a_manifest_without_block_checksums_loads_and_verify_adds_them(tmp_path):
  """Backward compatible: a manifest written before block checksums (no ``crc32``)
  loads and trains (guarded by the sha256 and the id check only); ``prepare_data
  --verify`` adds them once every sha256 matches."""
  tok = tokenizer.from_spec("char")
  rng = np.random.default_rng(1)
  out = tmp_path / "old"
  prepared.write_shards(str(out), {"train": rng.integers(0, 27, 40_000),
                                   "validation": rng.integers(0, 27, 1000)}, tok)
  mpath = out / prepared.MANIFEST
  m = json.loads(mpath.read_text())
  for e in m["splits"].values():
    del e["block_bytes"], e["crc32"]
  mpath.write_text(json.dumps(m))
  ds = prepared.load(str(out))
  assert getattr(ds.train, "block_sums", None) is None
  base.ChunkSampler(ds.train, 256, 8).batch(0)
  report = prepared.verify(str(out), progress=False)
  assert report["train"]["block_checksums"] == "added"
  assert len(prepared.read_manifest(str(out))["splits"]["train"]["crc32"]) == 2 * 8
  ds = prepared.load(str(out))
  assert ds.train.block_sums is not None
  # A manifest whose checksums do not fit its shard is refused, naming the file.
  m = json.loads(mpath.read_text())
  m["splits"]["train"]["crc32"] = m["splits"]["train"]["crc32"][:8]
  mpath.write_text(json.dumps(m))
  with pytest.raises(errors.DataError, match="train.bin.*block checksums do not"):
    prepared.load(str(out))


def _tiny_train(workdir, data, steps):
  return tiny_train_cmd(workdir, data, steps, "--config.train.eval_every=100000",
                        "--config.train.eval_batches=1")


def _rotted_run(tmp_path, train_first):
  tok = tokenizer.from_spec("char")
  rng = np.random.default_rng(0)
  out = tmp_path / "p"
  prepared.write_shards(str(out), {"train": rng.integers(0, 27, 20_000),
                                   "validation": rng.integers(0, 27, 4096)}, tok)
  prepared.load(str(out))                         # verified once, recorded
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu")
  env.pop("TCSM_TRACEBACK", None)
  wd = tmp_path / "run"
  if train_first:
    r = subprocess.run(_tiny_train(wd, out, 2), cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
  for split in ("train", "validation"):
    _rot_in_range(out / f"{split}.bin", every=97)
  return out, wd, env


def _refused_for_block(cmd, env, shard):
  r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  last = r.stderr.strip().splitlines()[-1]
  assert r.returncode == 2, r.stderr[-3000:]
  assert last.startswith("error: ") and shard in last and "block 0" in last, last
  assert "CRC32" in last and "Traceback" not in r.stderr, r.stderr[-3000:]


def test_train_stops_on_rot_that_keeps_ids_in_range(tmp_path):
  """The probe's case through the binary: a shard corrupted in place with its mtime
  kept (every id still in the vocabulary, the sha256 record still fresh) -> train
  exits 2 with one line naming the shard and the block."""
  out, wd, env = _rotted_run(tmp_path, train_first=False)
  _refused_for_block(_tiny_train(wd, out, 2), env, "train.bin")


def test_train_and_evaluate_stop_on_rot_that_keeps_ids_in_range(tmp_path):
  """Slow (a run is trained first): a resumed train and evaluate on a workdir whose
  data rotted in range both exit 2 with the one line (cheaper default:
  test_train_stops_on_rot_that_keeps_ids_in_range)."""
  out, wd, env = _rotted_run(tmp_path, train_first=True)
  _refused_for_block(_tiny_train(wd, out, 4), env, "train.bin")
  _refused_for_block([sys.executable, "-m", "experiments.evaluate", f"--workdir={wd}",
                      "--num_t=1", "--num_batches=1"], env, "validation.bin")


# ------------------------------------------- long documents: bounded memory, same ids


def _long_text(n_chars):
  """Corpus text without any newline (punctuation, digits and double spaces kept)."""
  text = corpus_slice(200_000).replace("\n", " ")
  text = (text + "  ") * (n_chars // (len(text) + 2) + 1)
  return text[:n_chars]


@pytest.fixture
def small_pieces(monkeypatch):
  """Pieces of 20k characters, tokenized 10k at a time: many cuts in a small file."""
  monkeypatch.setattr(sources, "LONG_DOC_CHARS", 20_000)
  monkeypatch.setattr(prepared, "CUT_CHARS", 10_000)


def _tokenizers(tmp_path, bpe):
  from test_tokenizers import train_wordpiece
  spm = tokenizer.SentencePiece.train(_docs(60), 300, str(tmp_path / "sp.model"))
  return {"char": tokenizer.from_spec("char"), "bpe": tokenizer.from_spec(f"hf:{bpe}"),
          "wordpiece": tokenizer.from_spec(f"hf:{train_wordpiece(tmp_path / 'wp.json')}"),
          "sentencepiece": tokenizer.from_spec(f"sentencepiece:{spm}")}


def test_long_documents_are_tokenized_in_pieces_to_the_same_ids(tmp_path, bpe,
                                                                 small_pieces):
  """Issue 27 item 3 (cheap): a file without newlines, and a long document among short
  ones, read in 20k-character pieces and tokenized 10k at a time at safe cuts, give
  the ids of tokenizing each whole document, for every tokenizer kind, packed and
  padded; the one-document validation split is the whole-text rule's."""
  long_doc = _long_text(150_000)
  one_line = tmp_path / "one_line.txt"
  one_line.write_text("  " + long_doc + "  \n")
  short = _docs(4, 300)
  mixed = tmp_path / "mixed.txt"
  mixed.write_text(f"{short[0]}\n\n{short[1]}\n{long_doc[:61_000]}\n\n  \n{short[2]}"
                   f"\r\n\r\n{short[3]}\n")
  docs_mixed = [short[0], f"{short[1]}\n{long_doc[:61_000]}", short[2], short[3]]
  items = list(sources.text_documents(str(mixed)))
  assert sum(isinstance(d, sources.Piece) for d in items) >= 3
  assert list(sources.whole_documents(items)) == docs_mixed
  assert sources.document_count(items) == 4
  for name, tok in _tokenizers(tmp_path, bpe).items():
    sep = tok.separator
    # One document without newlines, validation_fraction 0.1: cut at the last space.
    whole = long_doc.strip()
    cut = int(len(whole) * 0.9)
    cut = whole.rfind(" ", 0, cut)
    want = {"train": tok.encode(whole[:cut].strip()),
            "validation": tok.encode(whole[cut:].strip())}
    src = sources.documents_source(str(one_line), "text", validation_fraction=0.1)
    m = prepared.prepare(str(tmp_path / f"one_{name}"), src, tok, progress=False,
                         max_dropped=1.0)
    for split, ids in want.items():
      got = np.fromfile(tmp_path / f"one_{name}" / f"{split}.bin", m["dtype"])
      np.testing.assert_array_equal(got, np.concatenate([ids, sep]), err_msg=name)
    # A long document among short ones, packed and padded.
    encoded = [tok.encode(d) for d in docs_mixed]
    src = sources.documents_source(str(mixed), "text", validation_fraction=0.25)
    for layout in ("packed", "padded"):
      out = tmp_path / f"mixed_{name}_{layout}"
      m = prepared.prepare(str(out), src, tok, layout=layout, seq_len=48,
                           progress=False, max_dropped=1.0)
      want = (base.pack(encoded[:3], sep) if layout == "packed" else base.pad_rows(
          encoded[:3], 48, m["special_tokens"]["pad"], sep).reshape(-1))
      got = np.fromfile(out / "train.bin", m["dtype"])
      np.testing.assert_array_equal(got, want, err_msg=f"{name} {layout}")
      assert m["splits"]["train"]["num_documents"] == 3


def test_prepare_reads_a_file_without_newlines_in_bounded_memory(tmp_path):
  """Issue 27 item 3: a 100 MiB text without a single newline (one document, split
  into train and validation by characters) is read and tokenized in pieces: the peak
  of the memory Python and numpy allocate while preparing it (tracemalloc) stays under
  96 MiB, whatever the file's size (the whole-file reader took 653 MiB for a 40 MiB
  file: 16x; cheaper default test:
  test_long_documents_are_tokenized_in_pieces_to_the_same_ids)."""
  import tracemalloc
  words = np.array(corpus_slice(200_000).lower().split())
  rng = np.random.default_rng(0)
  path = tmp_path / "huge.txt"
  block = " ".join(rng.choice(words, 200_000)) + " "
  with open(path, "w") as f:
    for i in range(100 * 2**20 // len(block) + 1):   # ~1 MB blocks, no newline anywhere
      f.write(block[i % 997:] + block[:i % 997])
  del block
  size = os.path.getsize(path)
  assert size > 100 * 2**20
  src = sources.documents_source(str(path), "text")
  tracemalloc.start()
  try:
    m = prepared.prepare(str(tmp_path / "p"), src, tokenizer.from_spec("char"),
                         progress=False)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert sum(e["num_tokens"] for e in m["splits"].values()) > 0.95 * size
  print(f"file {size / 2**20:.0f} MiB, traced peak {peak / 2**20:.0f} MiB")
  assert peak < 96 * 2**20, peak
