"""Pre-trained diffusion LMs (MDLM, SEDD, DUO): the DiT, the checkpoint readers, the
converted workdir and the binaries on it.

Default tests use the committed fixtures ``tests/fixtures/{mdlm,sedd,duo}_tiny`` (a tiny
random-weight model made by each peer's own PyTorch module, saved in the peer's format,
with that module's outputs on fixed inputs: ``tests/fixtures/make_peer_fixtures.py``)
and a tokenizer and prepared data made here. The parity tests that run the peers'
modules themselves are in ``tests/test_diffusion_parity.py`` (torch: the parity extra).
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tcsm_jax import errors, likelihood, sampling
from tcsm_jax.data import base, prepared, sources, tokenizer as tok_lib
from tcsm_jax.models import dit, peers, torch_zip
from tcsm_jax.training import imports, restore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures")
WORDS = ("the and of to in a is that for it as was with be by on not he i this are or "
         "his from at which but have an had they you were their one all we can her has "
         "there been if more when will would who so no she other its may these about "
         "them than some him time into only do out could two then").split()


def fixture_dir(kind):
  return os.path.join(FIXTURES, f"{kind}_tiny")


def make_tokenizer(path, n):
  """A word-level Hugging Face tokenizer JSON with ``n`` ids (id 0 ``<|endoftext|>``)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  vocab = {"<|endoftext|>": 0}
  for w in WORDS[:n - 1]:
    vocab[w] = len(vocab)
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.decoder = decoders.WordPiece(prefix="##")
  tok.save(path)
  return path


def make_prepared(out, tok_path, n_docs=600, seed=0):
  rng = np.random.default_rng(seed)
  vocab = json.load(open(tok_path))["model"]["vocab"]
  words = [w for w in vocab if w != "<|endoftext|>"]
  docs = [" ".join(rng.choice(words, rng.integers(5, 30))) for _ in range(n_docs)]
  path = os.path.join(os.path.dirname(out), os.path.basename(out) + ".txt")
  with open(path, "w") as f:
    f.write("\n".join(docs) + "\n")
  src = sources.documents_source(path, doc_sep="line", validation_fraction=0.2)
  prepared.prepare(out, src, tok_lib.from_spec(f"hf:{tok_path}"), progress=False)
  return out


def dit_of(imp):
  return dit.DiT(dit.DiTConfig(
      vocab_size=imp.vocab_size, num_input_states=imp.rows, max_length=imp.max_length,
      num_layers=imp.model["num_layers"], width=imp.model["width"],
      num_heads=imp.model["num_heads"], cond_width=imp.model["cond_width"],
      mlp_ratio=imp.model["mlp_ratio"], time_conditioning=imp.model["time_conditioning"]))


# ----------------------------------------------------------- the peers' own numbers

@pytest.mark.parametrize("kind", peers.KINDS)
def test_fixture_logits_match_the_peers_module(kind):
  """The imported DiT gives the peer module's logits (committed reference, made by the
  peer's own PyTorch module) to 1e-4, and its parameterized output: MDLM's SUBS
  log-probabilities, SEDD's score times (e^sigma - 1) up to a constant per position,
  DUO's log-softmax."""
  imp = peers.read(kind, fixture_dir(kind))
  ref = np.load(os.path.join(fixture_dir(kind), "reference.npz"))
  x, sigma = ref["x"], ref["sigma"]
  logits = np.asarray(jax.jit(dit_of(imp).apply)({"params": imp.params}, jnp.asarray(x),
                                                 jnp.asarray(sigma)))
  v = imp.vocab_size
  assert logits.shape == x.shape + (v,)
  lp = np.asarray(jax.nn.log_softmax(logits, -1))
  masked = x == v
  if kind == "mdlm":
    assert imp.process == "absorbing" and not imp.model["time_conditioning"]
    np.testing.assert_allclose(logits, ref["raw"][..., :v], atol=1e-4, rtol=0)
    assert masked.any() and (~masked).any()
    np.testing.assert_allclose(lp[masked], ref["peer"][..., :v][masked], atol=1e-4)
    # SUBS carries unmasked tokens over: log-prob 0 at the token itself.
    carried = np.take_along_axis(ref["peer"], x[..., None], -1)[..., 0]
    np.testing.assert_allclose(carried[~masked], 0.0, atol=1e-6)
  elif kind == "sedd":
    assert imp.process == "absorbing" and imp.model["time_conditioning"]
    denoiser = ref["peer"][..., :v] + np.log(np.expm1(sigma))[:, None, None]
    gap = (lp - denoiser)[masked]                        # constant per position
    assert masked.any()
    np.testing.assert_allclose(gap - gap.mean(-1, keepdims=True), 0.0, atol=1e-4)
    # SEDD sets the log score of the input token itself (the mask, here) to 0: that
    # entry is not a clean token and is dropped from the denoiser.
    np.testing.assert_allclose(ref["peer"][..., v][masked], 0.0, atol=1e-6)
  else:
    assert imp.process == "uniform" and imp.rows == v
    np.testing.assert_allclose(logits, ref["raw"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(lp, ref["peer"], atol=1e-4)


def test_time_conditioning_off_ignores_sigma():
  imp = peers.read("mdlm", fixture_dir("mdlm"))
  f, x = jax.jit(dit_of(imp).apply), jnp.zeros((1, 8), jnp.int32)
  a = f({"params": imp.params}, x, jnp.array([0.1]))
  b = f({"params": imp.params}, x, jnp.array([5.0]))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bfloat16_activations_stay_close():
  """model.dtype=bfloat16 (float32 parameters, LayerNorm statistics in float32): the
  denoiser's log-probabilities stay within bfloat16 rounding of float32's."""
  import dataclasses
  imp = peers.read("sedd", fixture_dir("sedd"))
  ref = np.load(os.path.join(fixture_dir("sedd"), "reference.npz"))
  m32 = dit_of(imp)
  m16 = dit.DiT(dataclasses.replace(m32.cfg, dtype=jnp.bfloat16))
  args = (jnp.asarray(ref["x"]), jnp.asarray(ref["sigma"]))
  a = jax.nn.log_softmax(jax.jit(m32.apply)({"params": imp.params}, *args), -1)
  b = jax.nn.log_softmax(jax.jit(m16.apply)({"params": imp.params}, *args)
                         .astype(jnp.float32), -1)
  assert b.dtype == jnp.float32 and np.isfinite(np.asarray(b)).all()
  assert float(jnp.max(jnp.abs(jnp.exp(a) - jnp.exp(b)))) < 0.05


def test_torch_zip_reader_matches_torch():
  """A torch.save file (float32, bfloat16, a transposed and a sliced view, int64) read
  with NumPy alone equals what torch wrote."""
  with open(os.path.join(FIXTURES, "torch_zip_small.pt"), "rb") as f:
    state = torch_zip.load_bytes(f.read())
  want = np.load(os.path.join(FIXTURES, "torch_zip_small.npz"))
  assert sorted(state) == sorted(want.files)
  for k in want.files:
    np.testing.assert_array_equal(np.asarray(state[k]).astype(want[k].dtype), want[k])
  assert str(state["b.bf16"].dtype) == "bfloat16"
  with pytest.raises(torch_zip.FormatError, match="not a torch.save zip"):
    torch_zip.load_bytes(b"\x80\x04 a legacy pickle")


# ----------------------------------------------------------------- bad input

def _copy(tmp_path, kind, name):
  d = str(tmp_path / name)
  shutil.copytree(fixture_dir(kind), d)
  os.remove(os.path.join(d, "reference.npz"))
  return d


def _edit_weights(d, fn):
  import safetensors.numpy
  path = os.path.join(d, "model.safetensors")
  state = dict(safetensors.numpy.load_file(path))
  fn(state)
  safetensors.numpy.save_file(state, path)


def _bad_cases(tmp_path):
  """name -> (kind, directory, tokenizer size, expected message part)."""
  cases = {}
  cases["missing dir"] = ("mdlm", str(tmp_path / "nope"), 64, "is not a directory")
  d = _copy(tmp_path, "mdlm", "noconfig")
  os.remove(os.path.join(d, "config.json"))
  cases["no config.json"] = ("mdlm", d, 64, "no config.json")
  d = _copy(tmp_path, "mdlm", "notjson")
  open(os.path.join(d, "config.json"), "w").write("{not json")
  cases["config not JSON"] = ("mdlm", d, 64, "config.json is not JSON")
  d = _copy(tmp_path, "mdlm", "noweights")
  os.remove(os.path.join(d, "model.safetensors"))
  cases["no weights"] = ("mdlm", d, 64, "no weights")
  d = _copy(tmp_path, "mdlm", "garbage")
  open(os.path.join(d, "model.safetensors"), "wb").write(b"garbage bytes")
  cases["garbage weights"] = ("mdlm", d, 64, "is not a safetensors file")
  cases["duo named mdlm"] = ("mdlm", _copy(tmp_path, "duo", "duo_as_mdlm"), 64,
                             "is a 'duo' checkpoint, not 'mdlm'")
  cases["sedd config as mdlm"] = ("duo", _copy(tmp_path, "mdlm", "mdlm_as_duo"), 64,
                                  "is a 'mdlm' checkpoint, not 'duo'")
  d = _copy(tmp_path, "mdlm", "unknown_key")
  _edit_weights(d, lambda s: s.update({"backbone.extra.weight": np.zeros(3, np.float32)}))
  cases["unknown key"] = ("mdlm", d, 64, "unknown key 'backbone.extra.weight'")
  d = _copy(tmp_path, "mdlm", "missing_key")
  _edit_weights(d, lambda s: s.pop("backbone.blocks.1.attn_out.weight"))
  cases["missing key"] = ("mdlm", d, 64, "first 'blocks.1.attn_out.weight'")
  d = _copy(tmp_path, "sedd", "uniform_graph")
  cfg = json.load(open(os.path.join(d, "config.json")))
  cfg["graph"]["type"] = "uniform"
  json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
  cases["sedd uniform graph"] = ("sedd", d, 64, "only the absorbing graph")
  cases["tokenizer vocabulary"] = ("mdlm", fixture_dir("mdlm"), 60,
                                   "has 60 ids; the checkpoint predicts 64")
  return cases


def test_convert_refuses_bad_input_naming_it(tmp_path):
  """Every bad input is a UserError (one line, status 2 in the binary) naming it."""
  for name, (kind, d, n, expected) in _bad_cases(tmp_path).items():
    tok = make_tokenizer(str(tmp_path / f"tok{n}.json"), n)
    with pytest.raises(errors.UserError) as e:
      imports.convert(kind, d, str(tmp_path / "w" / name.replace(" ", "_")), tok)
    assert expected in str(e.value), (name, str(e.value))
    assert "\n" not in str(e.value)
  tok = make_tokenizer(str(tmp_path / "tok64.json"), 64)
  with pytest.raises(errors.DataError, match="no tokenizer: .* does not exist"):
    imports.convert("mdlm", fixture_dir("mdlm"), str(tmp_path / "w_t"),
                    str(tmp_path / "none.json"))
  other = make_prepared(str(tmp_path / "p50"), make_tokenizer(str(tmp_path / "t50.json"),
                                                              50), n_docs=20)
  with pytest.raises(errors.DataError, match="is not tokenized with the model's"):
    imports.convert("mdlm", fixture_dir("mdlm"), str(tmp_path / "w_d"), tok, other)
  assert not os.path.exists(tmp_path / "w_t") and not os.path.exists(tmp_path / "w_d")
  w = tmp_path / "full"
  w.mkdir()
  (w / "x").write_text("x")
  with pytest.raises(errors.WorkdirError, match="is not empty"):
    imports.convert("mdlm", fixture_dir("mdlm"), str(w),
                    make_tokenizer(str(tmp_path / "t.json"), 64))


# -------------------------------------------------- converted workdirs, in-process

@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """The MDLM fixture converted (``{"mdlm": workdir, "data": prepared set, ...}``)."""
  root = tmp_path_factory.mktemp("pretrained")
  tok64 = make_tokenizer(str(root / "tok64.json"), 64)
  out = {"root": str(root), "tok64": tok64,
         "data": make_prepared(str(root / "prep64"), tok64),
         "mdlm": str(root / "w_mdlm")}
  imports.convert("mdlm", fixture_dir("mdlm"), out["mdlm"], tok64)
  return out


def check_converted(kind, wd, data_dir, tokenizer_size, sample_and_evaluate=True):
  """load_run restores exactly the imported parameters (EMA = raw = the peer's) and
  gives the peer's logits; the record names the files' sha256; the model samples and
  has a finite NLL bound near log V (random weights) on the prepared set."""
  run = restore.load_run(wd)
  imp = peers.read(kind, fixture_dir(kind))
  for a, b in zip(jax.tree.leaves(run.params), jax.tree.leaves(imp.params)):
    np.testing.assert_array_equal(np.asarray(a), b)
  assert run.config.model.arch == "dit" and run.step == 0
  assert run.config.process == imp.process
  rec = json.load(open(os.path.join(wd, imports.RECORD)))
  assert rec["files"]["model.safetensors"]["sha256"] == imp.files[
      "model.safetensors"]["sha256"]
  assert run.trained_on["imported"] == kind and run.fingerprint
  exp = run.experiment
  assert exp.dataset.vocab_size == imp.vocab_size
  assert exp.dataset.tokenizer.vocab_size == imp.vocab_size >= tokenizer_size
  ref = np.load(os.path.join(fixture_dir(kind), "reference.npz"))
  if "raw" in ref.files:
    logits = jax.jit(exp.apply_fn)(run.params, jnp.asarray(ref["x"]),
                                   jnp.asarray(ref["sigma"]))
    np.testing.assert_allclose(np.asarray(logits), ref["raw"][..., :imp.vocab_size],
                               atol=1e-4)
  if not sample_and_evaluate:
    return run
  x, _ = sampling.jit_sampler(exp.apply_fn, exp.process, exp.schedule, (2, 16),
                              steps=4)(run.params, jax.random.PRNGKey(0))
  x = np.asarray(x)
  assert x.shape == (2, 16) and x.min() >= 0 and x.max() < exp.dataset.vocab_size
  assert all(isinstance(t, str) for t in exp.dataset.decode(x))
  data = prepared.load(data_dir)
  batches = base.eval_batches(data.validation, 16, 4, 1)
  rep = likelihood.evaluate(jax.random.PRNGKey(1), exp.apply_fn, batches, exp.process,
                            exp.schedule, num_t=1, params=run.params)
  assert np.isfinite(rep.nats_per_token) and 2.0 < rep.nats_per_token < 12.0
  return run


def test_converted_mdlm_restores(converted):
  """(Sampling and evaluating it: the slow tests below and test_binaries_on_converted.)"""
  check_converted("mdlm", converted["mdlm"], converted["data"], 64,
                  sample_and_evaluate=False)


@pytest.mark.parametrize("kind", ["sedd", "duo"])
def test_converted_sedd_duo_restore_sample_and_evaluate(converted, kind, tmp_path):
  """As the MDLM test; DUO's tokenizer is one short and gets [PAD] appended (its
  uniform process has GPT-2's ids and [PAD])."""
  n = 63 if kind == "duo" else 64
  tok = make_tokenizer(str(tmp_path / f"tok{n}.json"), n)
  wd = str(tmp_path / f"w_{kind}")
  imports.convert(kind, fixture_dir(kind), wd, tok)
  data = converted["data"] if kind == "sedd" else make_prepared(
      str(tmp_path / "prep_duo"), os.path.join(wd, "tokenizer", "tokenizer.json"))
  run = check_converted(kind, wd, data, n)
  if kind == "duo":
    assert run.experiment.dataset.tokenizer.pad_id == 63


def test_imported_reference_is_checked_on_vocabulary_and_tokenizer(converted, tmp_path):
  from tcsm_jax.training import pins
  trained_on = restore.trained_on(converted["mdlm"])
  ds = prepared.load(converted["data"])
  pins.require_same_data("reference", converted["mdlm"], trained_on, ds)   # same tokens
  other = make_prepared(str(tmp_path / "other"), make_tokenizer(
      str(tmp_path / "t50.json"), 50))
  with pytest.raises(errors.ConfigError, match="vocabulary"):
    pins.require_same_data("reference", converted["mdlm"], trained_on,
                           prepared.load(other))


def _convert_cases(tmp_path):
  """error line -> flags of experiments.convert."""
  return {"error: --from must be KIND:DIR with KIND one of mdlm, sedd, duo, got "
          "'gpt9:/x'": ["--from=gpt9:/x"],
          "error: --seq_len must be >= 0, got -1": [f"--from=mdlm:{fixture_dir('mdlm')}",
                                                    "--seq_len=-1"],
          f"error: --from '{tmp_path / 'no'}' does not exist": [
              f"--from=sedd:{tmp_path / 'no'}"],
          f"error: --data '{tmp_path / 'no'}' does not exist": [
              f"--from=mdlm:{fixture_dir('mdlm')}", f"--data={tmp_path / 'no'}"]}


def _check_convert_errors(tmp_path, cases):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("TCSM_TRACEBACK", None)
  procs = {want: subprocess.Popen(
      [sys.executable, "-m", "experiments.convert", f"--workdir={tmp_path / 'w'}"] + args,
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for want, args in cases.items()}
  for want, p in procs.items():
    _, stderr = p.communicate(timeout=300)
    lines = [l for l in stderr.splitlines() if l.startswith("error:")]
    assert p.returncode == 2 and "Traceback" not in stderr, stderr[-2000:]
    assert lines == [want], stderr[-2000:]


def test_convert_binary_one_line_error(tmp_path):
  """The binary: a bad --from is one `error:` line and status 2 (the library's errors,
  in-process above, reach the user the same way: tests/test_cli.py)."""
  cases = _convert_cases(tmp_path)
  _check_convert_errors(tmp_path, dict([next(iter(cases.items()))]))


def test_convert_binary_every_flag_error(tmp_path):
  _check_convert_errors(tmp_path, _convert_cases(tmp_path))


# ------------------------------------------------------ the binaries, as a user runs them

def _run(args, timeout=900):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  env.pop("TCSM_TRACEBACK", None)
  return subprocess.Popen([sys.executable, "-m"] + args, cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(procs):
  out = {}
  for name, p in procs.items():
    stdout, stderr = p.communicate(timeout=1800)
    assert p.returncode == 0, (name, stderr[-3000:])
    out[name] = stdout
  return out


def test_binaries_on_converted_workdir(tmp_path):
  """convert -> sample (every absorbing sampler) -> evaluate --data -> finetune (reward,
  preference) -> distill from the converted parameters (train.init_from) with an AR
  teacher -> frontier under an AR judge, all as subprocesses on the MDLM fixture."""
  from helpers import tiny_config
  from tcsm_jax.training import trainer
  tok = make_tokenizer(str(tmp_path / "tok.json"), 64)
  data = make_prepared(str(tmp_path / "prep"), tok, n_docs=1500)
  w = str(tmp_path / "w")
  _wait({"convert": _run(["experiments.convert", f"--from=mdlm:{fixture_dir('mdlm')}",
                          f"--workdir={w}", f"--tokenizer={tok}", f"--data={data}"])})
  rec = json.load(open(os.path.join(w, "imported.json")))
  assert rec["kind"] == "mdlm" and rec["tokenizer"]["vocab_size"] == 64
  procs = {s: _run(["experiments.sample", f"--workdir={w}", "--num_samples=2",
                    "--steps=4", f"--sampler={s}"])
           for s in ("analytic", "ancestral", "first_hitting", "remdm", "euler")}
  procs["evaluate"] = _run(["experiments.evaluate", f"--workdir={w}", f"--data={data}",
                            "--num_batches=1", "--num_t=1"])
  # A tiny AR model on the same data: teacher and judge.
  judge = str(tmp_path / "judge")
  cfg = tiny_config(**{"model.arch": "causal", "data.name": "prepared",
                       "data.path": data, "data.seq_len": 16, "train.num_steps": 3,
                       "train.batch_size": 8, "eval.batch_size": 8})
  trainer.train_and_evaluate(cfg, judge)
  common = ["--config=experiments/configs/pretrained.py:" + w,
            f"--config.data.path={data}", "--config.train.num_steps=2",
            "--config.train.batch_size=2", "--config.train.eval_every=2",
            "--config.train.checkpoint_every=2", "--config.eval.batch_size=2",
            "--config.eval.num_batches=1", "--config.finetune.num_pairs=32",
            "--config.finetune.pair_sample_steps=2"]
  ft = ["--config.finetune.ref_workdir=" + w, "--config.finetune.reward=token",
        "--config.finetune.token_weights=ai=1", "--num_samples=2", "--sample_steps=2"]
  procs["reward"] = _run(["experiments.finetune", f"--workdir={tmp_path / 'ft_r'}"] +
                         common + ft + ["--config.finetune.kind=reward"])
  procs["preference"] = _run(["experiments.finetune", f"--workdir={tmp_path / 'ft_p'}"]
                             + common + ft + ["--config.finetune.kind=preference"])
  procs["distill"] = _run(["experiments.distill", f"--workdir={tmp_path / 'student'}",
                           f"--teacher_workdir={judge}", "--mode=top_k", "--top_k=2"]
                          + common + [f"--config.train.init_from={w}"])
  procs["frontier"] = _run(["experiments.frontier", f"--workdir={w}",
                            f"--judge_workdir={judge}", f"--outdir={tmp_path / 'fr'}",
                            "--samplers=analytic,first_hitting", "--steps=4",
                            "--temperatures=1.0", "--top_ps=1.0", "--num_samples=4",
                            "--batch_size=4"])
  out = _wait(procs)
  for s in ("analytic", "ancestral", "first_hitting", "remdm", "euler"):
    assert any(n.startswith(f"{s}_4steps_") and n.endswith(".txt")
               for n in os.listdir(os.path.join(w, "samples"))), out[s]
  assert "perplexity" in out["evaluate"]
  assert "mean reward of samples" in out["reward"] and "mean reward" in out["preference"]
  refs = json.load(open(tmp_path / "ft_r" / "references.json"))
  assert refs["pins"]["reference"]["imported"] == "mdlm"
  sref = json.load(open(tmp_path / "student" / "references.json"))
  assert sref["pins"]["init"]["workdir"] == w and "teacher" in sref["pins"]
  assert "student NLL bound" in out["distill"]
  assert os.path.exists(tmp_path / "fr" / "frontier.csv")


def test_init_from_refuses_another_model_before_compiling(converted, tmp_path):
  """train.init_from with another model shape (or no run there) is one ConfigError /
  WorkdirError naming the keys, raised before anything compiles."""
  from helpers import tiny_config
  from tcsm_jax.training import trainer
  cfg = tiny_config(**{"data.name": "prepared", "data.path": converted["data"],
                       "data.seq_len": 16, "train.batch_size": 8,
                       "train.init_from": converted["mdlm"]})
  with pytest.raises(errors.ConfigError, match="model.arch: 'dit' there, 'diffusion' here"):
    trainer.train_and_evaluate(cfg, str(tmp_path / "a"))
  cfg.train.init_from = str(tmp_path / "nothing")
  with pytest.raises(errors.WorkdirError, match="does not exist"):
    trainer.train_and_evaluate(cfg, str(tmp_path / "b"))
  cfg.finetune.kind, cfg.finetune.ref_workdir = "reward", converted["mdlm"]
  with pytest.raises(errors.ConfigError, match="leave train.init_from empty"):
    trainer.train_and_evaluate(cfg, str(tmp_path / "c"))


def write_random_mdlm(directory, vocab, width=32, heads=2, layers=1, cond=16, seed=0,
                      length=16):
  """A random MDLM in MDLM's Hugging Face layout (torch names under ``backbone.``)."""
  from safetensors.numpy import save_file
  rng = np.random.default_rng(seed)
  rows, d, c = vocab + 1, width, cond
  w = lambda *s: (rng.standard_normal(s) / np.sqrt(s[-1])).astype(np.float32)
  b = lambda n: (0.1 * rng.standard_normal(n)).astype(np.float32)
  state = {"vocab_embed.embedding": w(rows, d), "sigma_map.mlp.0.weight": w(c, 256),
           "sigma_map.mlp.0.bias": b(c), "sigma_map.mlp.2.weight": w(c, c),
           "sigma_map.mlp.2.bias": b(c), "output_layer.norm_final.weight": 1 + b(d),
           "output_layer.linear.weight": w(rows, d), "output_layer.linear.bias": b(rows),
           "output_layer.adaLN_modulation.weight": w(2 * d, c),
           "output_layer.adaLN_modulation.bias": b(2 * d)}
  for i in range(layers):
    p = f"blocks.{i}."
    state.update({p + "norm1.weight": 1 + b(d), p + "norm2.weight": 1 + b(d),
                  p + "attn_qkv.weight": w(3 * d, d), p + "attn_out.weight": w(d, d),
                  p + "mlp.0.weight": w(4 * d, d), p + "mlp.0.bias": b(4 * d),
                  p + "mlp.2.weight": w(d, 4 * d), p + "mlp.2.bias": b(d),
                  p + "adaLN_modulation.weight": w(6 * d, c),
                  p + "adaLN_modulation.bias": b(6 * d)})
  os.makedirs(directory)
  save_file({"backbone." + k: v for k, v in state.items()},
            os.path.join(directory, "model.safetensors"))
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump({"model_type": "mdlm", "vocab_size": rows, "model_length": length,
               "hidden_dim": d, "cond_dim": c, "n_blocks": layers, "n_heads": heads,
               "dropout": 0.1, "time_conditioning": False}, f)


def test_gpt2_teacher_and_judge_on_a_converted_mdlm(tmp_path):
  """With GPT-2's tokenizer (the tiny fixture's): a converted MDLM is distilled from
  its parameters with ``--teacher=hf:`` (the GPT-2 as AR teacher) and sampled with
  ``--judge=hf:`` under MDLM's generative-perplexity convention, as binaries."""
  gdir = os.path.join(FIXTURES, "gpt2_tiny")
  tok = os.path.join(gdir, "tokenizer.json")
  vocab = tok_lib.from_spec(f"hf:{tok}").vocab_size
  peer = str(tmp_path / "mdlm")
  write_random_mdlm(peer, vocab)
  src = sources.documents_source(os.path.join(REPO, "tcsm_jax/data/bundled/"
                                              "kjv_text8.txt.xz"))
  data = str(tmp_path / "prep")
  prepared.prepare(data, src, tok_lib.from_spec(f"hf:{tok}"), progress=False)
  w = str(tmp_path / "w")
  _wait({"convert": _run(["experiments.convert", f"--from=mdlm:{peer}", f"--workdir={w}",
                          f"--tokenizer={tok}", f"--data={data}"])})
  out = _wait({
      "distill": _run(["experiments.distill", f"--workdir={tmp_path / 'student'}",
                       f"--teacher=hf:{gdir}", "--mode=top_k", "--top_k=2",
                       f"--config=experiments/configs/pretrained.py:{w}",
                       "--config.train.num_steps=2", "--config.train.batch_size=2",
                       "--config.train.eval_every=2", "--config.train.checkpoint_every=2",
                       "--config.eval.batch_size=2", "--config.eval.num_batches=1",
                       f"--config.train.init_from={w}"]),
      "sample": _run(["experiments.sample", f"--workdir={w}", "--num_samples=8",
                      "--steps=4", f"--judge=hf:{gdir}", "--gen_ppl_convention=mdlm"])})
  assert "student NLL bound" in out["distill"]
  pins = json.load(open(tmp_path / "student" / "references.json"))["pins"]
  assert pins["init"]["imported"] == "mdlm" and "teacher" in pins
  assert '"gen_ppl_convention": "mdlm"' in out["sample"], out["sample"][-2000:]
  assert '"gen_perplexity"' in out["sample"] and "gpt2_tiny" in out["sample"]
