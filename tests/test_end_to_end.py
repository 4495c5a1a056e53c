"""End to end: Markov data with a known entropy, binaries, judge and quality metrics."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tcsm_jax import likelihood, quality
from tcsm_jax.data import pipeline, synthetic
from tcsm_jax.models import transformer
from tcsm_jax.training import restore, trainer

from helpers import newest_report, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _markov_run(tmp_path, steps, **extra):
  cfg = tiny_config(**{"data.name": "markov", "data.markov_vocab": 4,
                       "data.markov_order": 1, "data.markov_tokens": 200_000,
                       "data.seq_len": 16, "train.num_steps": steps,
                       "train.batch_size": 64, "train.log_every": 100,
                       "train.eval_every": 100000, "train.ema_decay": 0.9,
                       "model.width": 64, "model.num_heads": 4, "model.num_layers": 2,
                       "optim.lr": 3e-3, "optim.warmup_steps": 20,
                       "loss.form": "distribution", "loss.divergence": "kl", **extra})
  ds = synthetic.load(cfg.data)
  chain = synthetic.chain_from_config(cfg.data)
  h = chain.chunk_entropy(cfg.data.seq_len) / cfg.data.seq_len
  exp = trainer.build(cfg, ds)
  trainer.train_and_evaluate(cfg, str(tmp_path), experiment=exp)
  run = restore.load_run(str(tmp_path), cfg, dataset=ds)
  batches = pipeline.eval_batches(ds.validation, cfg.data.seq_len, 64, 8)
  rep = likelihood.evaluate(jax.random.PRNGKey(0), exp.apply_fn, batches, exp.process,
                            exp.schedule, num_t=16, params=run.params)
  return rep, h


def test_markov_bound_stays_above_exact_entropy_and_approaches_it(tmp_path):
  before, h = _markov_run(tmp_path / "a", 1)
  after, _ = _markov_run(tmp_path / "b", 300)
  for rep in (before, after):
    assert rep.nats_per_token > h - 3 * rep.stderr, (rep, h)
  assert after.nats_per_token < before.nats_per_token - 0.2
  assert after.nats_per_token - h < 0.5 * (before.nats_per_token - h), (before, after, h)


@pytest.mark.slow
def test_markov_long_run_gets_close_to_entropy(tmp_path):
  rep, h = _markov_run(tmp_path, 3000)
  assert rep.nats_per_token > h - 3 * rep.stderr
  assert rep.nats_per_token - h < 0.06, (rep, h)


def test_unigram_entropy_and_generative_perplexity_are_exact():
  np.testing.assert_allclose(quality.unigram_entropy(np.array([[0, 0, 0, 0],
                                                               [0, 1, 2, 3]])),
                             0.5 * np.log(4))
  cfg = transformer.TransformerConfig(vocab_size=5, num_input_states=6, max_length=8,
                                      num_layers=1, width=16, num_heads=2, causal=True)
  model = transformer.CausalTransformer(cfg)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
  # A judge whose head is zero predicts uniformly: perplexity = vocab size exactly.
  params = jax.tree.map(lambda x: x, params)
  params["trunk"]["head"]["kernel"] = jnp.zeros_like(params["trunk"]["head"]["kernel"])
  params["trunk"]["head"]["bias"] = jnp.zeros_like(params["trunk"]["head"]["bias"])
  toks = np.random.default_rng(0).integers(0, 5, (7, 8))
  np.testing.assert_allclose(quality.generative_perplexity(model, params, toks), 5.0,
                             rtol=1e-5)
  with pytest.raises(ValueError, match="outside the judge's vocabulary"):
    quality.generative_perplexity(model, params, toks + 5)


def test_causal_model_is_causal():
  cfg = transformer.TransformerConfig(vocab_size=5, num_input_states=6, max_length=8,
                                      num_layers=2, width=16, num_heads=2, causal=True)
  model = transformer.CausalTransformer(cfg)
  x = jnp.asarray(np.random.default_rng(1).integers(0, 5, (1, 8)))
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  params = jax.tree.map(lambda p: p + 0.1, params)   # non-trivial head
  a = model.apply({"params": params}, x)
  b = model.apply({"params": params}, x.at[0, 5].set((x[0, 5] + 1) % 5))
  np.testing.assert_allclose(a[0, :5], b[0, :5], atol=1e-6)
  assert not np.allclose(a[0, 5:], b[0, 5:])


def _run(args, **kw):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.run([sys.executable, "-m"] + args, cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600, **kw)


def test_binaries_train_evaluate_sample_and_refuse_empty_workdirs(tmp_path):
  small = ["--config.data.seq_len=32", "--config.model.num_layers=1",
           "--config.model.width=32", "--config.model.num_heads=2",
           "--config.train.batch_size=8", "--config.train.num_steps=4",
           "--config.train.log_every=2", "--config.train.eval_every=4",
           "--config.eval.num_batches=2", "--config.eval.batch_size=8"]
  wd, jd = str(tmp_path / "model"), str(tmp_path / "judge")
  r = _run(["experiments.train", "--config=experiments/configs/kjv_tiny.py",
            f"--workdir={wd}"] + small)
  assert r.returncode == 0, r.stderr[-3000:]
  r = _run(["experiments.train", "--config=experiments/configs/kjv_judge.py",
            f"--workdir={jd}"] + small)
  assert r.returncode == 0, r.stderr[-3000:]
  r = _run(["experiments.evaluate", f"--workdir={wd}", "--num_t=2"])
  assert r.returncode == 0, r.stderr[-3000:]
  rep = json.load(open(os.path.join(wd, "eval_report.json")))
  assert rep["step"] == 4 and 0 < rep["nats_per_token"] < 6 and rep["stderr"] > 0
  assert "bits/token" in r.stdout
  r = _run(["experiments.evaluate", f"--workdir={jd}"])
  assert r.returncode == 0 and "exact NLL" in r.stdout, r.stderr[-3000:]
  r = _run(["experiments.sample", f"--workdir={wd}", "--num_samples=3", "--steps=8",
            "--prompt=in the beginning", "--suffix= amen", f"--judge_workdir={jd}"])
  assert r.returncode == 0, r.stderr[-3000:]
  [stem] = [n[:-4] for n in os.listdir(os.path.join(wd, "samples")) if n.endswith(".txt")]
  assert stem.startswith("analytic_8steps_")       # + the hash of every setting
  lines = open(os.path.join(wd, "samples", stem + ".txt")).read().splitlines()
  assert len(lines) == 3 and all(len(l) == 32 for l in lines)
  assert all(l.startswith("in the beginning") and l.endswith(" amen") for l in lines)
  q = json.load(open(os.path.join(wd, "samples", stem + ".json")))
  assert q["gen_perplexity"] > 1 and q["unigram_entropy"] > 0
  assert q["gen_ppl_convention"] == "project" and q["gen_ppl_tokens"] == 3 * 32
  # A Hugging Face GPT-2 judge (the committed tiny fixture): the character samples are
  # decoded, retokenized with its byte-level BPE and scored under MDLM's convention.
  r = _run(["experiments.sample", f"--workdir={wd}", "--num_samples=3", "--steps=8",
            "--judge=hf:tests/fixtures/gpt2_tiny", "--gen_ppl_convention=mdlm"])
  assert r.returncode == 0, r.stderr[-3000:]
  q = newest_report(os.path.join(wd, "samples"), "analytic_8steps_")
  assert q["gen_ppl_convention"] == "mdlm" and q["gen_ppl_retokenized"]
  assert q["gen_perplexity"] > 1 and q["gen_ppl_tokens"] > 0
  assert q["judge_unigram_entropy"] > 0 and q["gen_ppl_judge"].startswith("hf:")
  fr = str(tmp_path / "frontier")
  r = _run(["experiments.frontier", f"--workdir={wd}", "--judge=hf:tests/fixtures/gpt2_tiny",
            f"--outdir={fr}", "--samplers=analytic", "--steps=4", "--temperatures=1.0",
            "--top_ps=1.0", "--num_samples=2", "--batch_size=2",
            "--gen_ppl_convention=remdm"])
  assert r.returncode == 0, r.stderr[-3000:]
  rows = open(os.path.join(fr, "frontier.csv")).read().splitlines()
  assert len(rows) == 3 and "gen_ppl_convention" in rows[0] and "remdm" in rows[2]
  meta = json.load(open(os.path.join(fr, "frontier.json")))
  assert meta["judge"].startswith("hf:") and meta["gen_ppl_convention"] == "remdm"
  r = _run(["experiments.sample", f"--workdir={wd}", f"--judge=hf:{tmp_path}/nothing"])
  assert r.returncode == 2 and "does not exist" in r.stderr.splitlines()[-1], r.stderr
  for binary in ("experiments.evaluate", "experiments.sample"):
    r = _run([binary, f"--workdir={tmp_path / 'empty'}"])
    assert r.returncode != 0 and "no config.json" in r.stderr, r.stderr[-2000:]
  os.makedirs(tmp_path / "nockpt")
  with open(tmp_path / "nockpt" / "config.json", "w") as f:
    f.write(open(os.path.join(wd, "config.json")).read())
  r = _run(["experiments.evaluate", f"--workdir={tmp_path / 'nockpt'}"])
  assert r.returncode != 0 and "no checkpoint" in r.stderr, r.stderr[-2000:]


def test_finetune_and_distill_binaries(tmp_path):
  small = ["--config.data.seq_len=16", "--config.model.num_layers=1",
           "--config.model.width=32", "--config.model.num_heads=2",
           "--config.train.batch_size=8", "--config.train.num_steps=2",
           "--config.train.log_every=1", "--config.train.eval_every=2",
           "--config.train.eval_batches=1"]
  ref, jd = str(tmp_path / "ref"), str(tmp_path / "judge")
  for cfg, wd in [("kjv_tiny", ref), ("kjv_judge", jd)]:
    r = _run(["experiments.train", f"--config=experiments/configs/{cfg}.py",
              f"--workdir={wd}"] + small)
    assert r.returncode == 0, r.stderr[-3000:]
  r = _run(["experiments.finetune", "--config=experiments/configs/kjv_reward.py",
            f"--workdir={tmp_path / 'ft'}", f"--config.finetune.ref_workdir={ref}",
            "--config.finetune.reward=token", "--num_samples=4", "--sample_steps=4"]
           + small)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "mean reward of samples: reference" in r.stdout
  r = _run(["experiments.distill", "--config=experiments/configs/kjv_tiny.py",
            f"--workdir={tmp_path / 'student'}", f"--teacher_workdir={jd}",
            "--mode=top_k", "--top_k=2"] + small)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "student NLL bound" in r.stdout


def test_distill_from_an_hf_gpt2_teacher(tmp_path):
  """--teacher=hf:DIR end to end: data prepared with the GPT-2's own tokenizer.json, a
  diffusion student distilled from it (Top-K + tail), the teacher pinned by its file;
  then a reference trained on those data, reward fine-tuning toward a GPT-2 sequence
  classifier sharing the tokenizer (hf:DIR), and guided sampling with it, judged by
  the GPT-2."""
  text = tmp_path / "kjv.txt"
  import lzma
  text.write_text(lzma.open(os.path.join(REPO, "tcsm_jax", "data", "bundled",
                                         "kjv_text8.txt.xz"), "rt").read(60000))
  prep = str(tmp_path / "prep")
  r = _run(["experiments.prepare_data", f"--source=text:{text}",
            "--tokenizer=hf:tests/fixtures/gpt2_tiny/tokenizer.json", f"--out={prep}"])
  assert r.returncode == 0, r.stderr[-3000:]
  small = ["--config.data.name=prepared", f"--config.data.path={prep}",
           "--config.data.seq_len=16", "--config.model.num_layers=1",
           "--config.model.width=32", "--config.model.num_heads=2",
           "--config.train.batch_size=8", "--config.train.num_steps=2",
           "--config.train.log_every=1", "--config.train.eval_every=2",
           "--config.train.eval_batches=1"]
  wd = str(tmp_path / "student")
  r = _run(["experiments.distill", "--config=experiments/configs/kjv_tiny.py",
            f"--workdir={wd}", "--teacher=hf:tests/fixtures/gpt2_tiny",
            "--mode=top_k_tail", "--top_k=4", "--tail_samples=2"] + small)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "student NLL bound" in r.stdout
  pins = json.load(open(os.path.join(wd, "references.json")))["pins"]["teacher"]
  assert pins["dir"] == "hf:tests/fixtures/gpt2_tiny" and pins["vocab_size"] == 300
  ref, ft = str(tmp_path / "ref"), str(tmp_path / "ft")
  r = _run(["experiments.train", "--config=experiments/configs/kjv_tiny.py",
            f"--workdir={ref}", "--summary_samples=1"] + small)
  assert r.returncode == 0, r.stderr[-3000:]
  r = _run(["experiments.finetune", "--config=experiments/configs/kjv_reward.py",
            f"--workdir={ft}", f"--config.finetune.ref_workdir={ref}",
            "--config.finetune.classifier_dir=hf:tests/fixtures/gpt2_tiny_cls",
            "--config.finetune.classifier_label=2", "--num_samples=2",
            "--sample_steps=2"] + small)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "mean reward of samples: reference" in r.stdout
  pin = json.load(open(os.path.join(ft, "references.json")))["pins"]["classifier"]
  assert pin["dir"] == "hf:tests/fixtures/gpt2_tiny_cls"
  r = _run(["experiments.sample", f"--workdir={ref}", "--num_samples=2", "--steps=4",
            "--batch_size=2", "--guide=classifier",
            "--guide_classifier_dir=hf:tests/fixtures/gpt2_tiny_cls", "--guide_gamma=2",
            "--judge=hf:tests/fixtures/gpt2_tiny"])
  assert r.returncode == 0, r.stderr[-3000:]
  q = newest_report(os.path.join(ref, "samples"), "analytic_4steps_")
  assert q["guide"] == "classifier" and q["gen_ppl_convention"] == "mdlm"
