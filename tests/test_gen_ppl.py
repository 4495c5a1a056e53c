"""Generative-perplexity conventions (tcsm_jax/gen_ppl.py) against brute force: every
scored token's NLL from its own forward pass on exactly its context, on a tiny random
GPT-2 (the committed fixture's tokenizer)."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tcsm_jax import gen_ppl, quality
from tcsm_jax.data import tokenizer as tokenizer_lib
from tcsm_jax.models import gpt2
from tcsm_jax.posttrain import judges

FIX = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.fixture(scope="module")
def tiny():
  pt = gpt2.load(f"hf:{FIX}/gpt2_tiny")        # V = 300, n_positions = 32
  return pt, judges.from_pretrained(pt, "hf:tiny", batch_size=4)


_FWD = {}


def _lp_next(pt, prefix):
  """log p(. | prefix) in float64 from one forward pass of its own, the prefix at the
  start of a zero-padded 32-token window (causal: later positions cannot matter;
  checked against unpadded passes in test_padding_changes_nothing)."""
  if "f" not in _FWD:
    _FWD["f"] = jax.jit(lambda x: pt.model.apply({"params": pt.params}, x))
  x = np.zeros((1, 32), np.int32)
  x[0, :len(prefix)] = prefix
  logits = np.asarray(_FWD["f"](x)[0, len(prefix) - 1], np.float64)
  logits -= logits.max()
  return logits - np.log(np.exp(logits).sum())


def test_padding_changes_nothing(tiny):
  pt, _ = tiny
  prefix = [5, 17, 250, 3, 0, 9, 41]
  fwd = jax.jit(lambda x: pt.model.apply({"params": pt.params}, x))
  for k in (1, 4, 7):
    exact = fwd(jnp.asarray([prefix[:k]], jnp.int32))
    e = np.asarray(exact[0, -1], np.float64)
    e = e - e.max() - np.log(np.exp(e - e.max()).sum())
    np.testing.assert_allclose(_lp_next(pt, prefix[:k]), e, atol=1e-5)


def _texts_and_ids(pt, n, seed=0):
  rng = np.random.default_rng(seed)
  eos = pt.eos_id
  ids = rng.integers(1, 300, size=(n, 20))
  ids[1, 5] = eos                                     # a real EOS inside a sample
  ids[2, 12:] = eos                                   # trailing EOS run
  return ids


def test_project_matches_brute_force(tiny):
  pt, judge = tiny
  ids = _texts_and_ids(pt, 5)
  decode = pt.tokenizer.decode
  out = judge.score(ids, decode=decode, convention="project")
  rows = [pt.tokenizer.encode(t) for t in decode(ids)]
  total, count = 0.0, 0
  for r in rows:
    for s in range(0, len(r), 32):
      w = list(r[s:s + 32])
      for j, tok in enumerate(w):
        total -= _lp_next(pt, [pt.bos_id] + w[:j])[tok]
        count += 1
  assert out["gen_ppl_tokens"] == count and any(len(r) > 32 for r in rows)
  assert out["gen_perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
  assert out["gen_ppl_retokenized"] and out["gen_ppl_convention"] == "project"


@pytest.mark.parametrize("conv,group", [("mdlm", 3), ("duo", 0), ("remdm", 0)])
def test_mdlm_family_matches_brute_force(tiny, conv, group):
  pt, judge = tiny
  ids = _texts_and_ids(pt, 7, seed=1)
  ids[4, :3] = pt.eos_id
  decode = pt.tokenizer.decode
  max_length = 40                                     # > n_positions: two chunks
  bs = {"mdlm": 2, "duo": 2, "remdm": 1}[conv]
  out = judge.score(ids, decode=decode, convention=conv, group_size=group,
                    max_length=max_length, ppl_batch_size=bs)
  rows = [list(pt.tokenizer.encode(t))[:max_length] for t in decode(ids)]
  assert max(len(r) for r in rows) > 32             # chunking exercised
  groups = [rows] if not group else [rows[i:i + group] for i in range(0, 7, group)]
  eos = pt.eos_id
  total, count = 0.0, 0
  for g in groups:
    width = max(len(r) for r in g)
    b = min(bs, len(g))
    for r in g[:(len(g) // b) * b]:                   # the remainder is dropped
      p = r + [eos] * (width - len(r))
      for start in range(0, width, 32):
        chunk = p[start:start + 32]
        seen_eos = 0
        for j, tok in enumerate(chunk):
          seen_eos += tok == eos
          if j == 0 or (tok == eos and seen_eos != 1):
            continue                                  # unscored
          total -= _lp_next(pt, chunk[:j])[tok]
          count += 1
  assert out["gen_ppl_tokens"] == count
  assert out["gen_perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)


def test_sedd_matches_brute_force(tiny):
  pt, judge = tiny
  ids = _texts_and_ids(pt, 5, seed=2)[:, :16]
  out = judge.score(ids, convention="sedd", model_tokenizer_sha=pt.tokenizer.sha256,
                    ppl_batch_size=2)
  assert not out["gen_ppl_retokenized"]
  per_seq = []
  for r in ids[:4]:                                   # 5 // 2 batches of 2
    nll = [-_lp_next(pt, r[:j])[r[j]] for j in range(1, len(r))]
    per_seq.append(math.exp(np.mean(nll)))
  assert out["gen_ppl_tokens"] == 4 * 15
  assert out["gen_perplexity"] == pytest.approx(np.mean(per_seq), rel=1e-5)
  # Mean of per-sequence exp >= exp of the token mean (Jensen): the conventions differ.
  assert out["gen_perplexity"] >= math.exp(out["gen_ppl_nll"]) - 1e-9


def test_entropies_and_quality_report(tiny):
  pt, judge = tiny
  ids = _texts_and_ids(pt, 4, seed=3)
  rep = quality.report(ids, judge, decode=pt.tokenizer.decode, convention="mdlm")
  rows = [pt.tokenizer.encode(t) for t in pt.tokenizer.decode(ids)]
  want = np.mean([-(c / c.sum() * np.log(c / c.sum())).sum()
                  for c in (np.unique(r, return_counts=True)[1] for r in rows)])
  assert rep["judge_unigram_entropy"] == pytest.approx(want)
  assert rep["unigram_entropy"] == pytest.approx(quality.unigram_entropy(ids))
  assert rep["gen_ppl_convention"] == "mdlm" and rep["gen_perplexity"] > 1


def test_unknown_convention(tiny):
  _, judge = tiny
  with pytest.raises(ValueError, match="unknown generative perplexity convention"):
    judge.score(np.zeros((2, 4), np.int64), convention="bd3lm")


def test_project_judge_equals_the_tuple_judge():
  """A project causal judge behind the Judge interface gives quality.report's old
  number (BOS row = vocab_size, every token scored) and its standard error."""
  from tcsm_jax.models import transformer
  cfg = transformer.TransformerConfig(vocab_size=7, num_input_states=8, max_length=12,
                                      num_layers=1, width=16, num_heads=2, causal=True)
  model = transformer.CausalTransformer(cfg)
  x = np.random.default_rng(0).integers(0, 7, (5, 12))
  params = model.init(jax.random.PRNGKey(0), jnp.asarray(x))["params"]
  params = jax.tree.map(lambda p: p + 0.05, params)
  judge = gen_ppl.Judge(
      name="w", nll=gen_ppl.batched_nll(lambda t: model.apply({"params": params}, t), 4,
                                        max_len=12),
      context=12, vocab_size=7, bos_id=7, eos_id=None)
  old = quality.report(x, (model, params))
  new = quality.report(x, judge)
  assert new["gen_perplexity"] == pytest.approx(old["gen_perplexity"], rel=1e-5)
  assert new["gen_log_perplexity_se"] == pytest.approx(old["gen_log_perplexity_se"],
                                                       rel=1e-4)
  assert new["gen_ppl_tokens"] == x.size and not new["gen_ppl_retokenized"]


def test_study_and_binary_judges_are_bound_to_the_model_data():
  """``--judge`` on the studies and binaries: the judge is bound to the sampling
  model's decode, tokenizer and the chosen convention."""
  from experiments import common
  from experiments.study import evals
  from experiments.study.context import Context

  char = tokenizer_lib.CharTokenizer()

  class Data:
    decode, tokenizer, info = staticmethod(char.decode), char, {}

  ctx = Context(outdir="unused", seeds=[0], judge=f"hf:{FIX}/gpt2_tiny",
                gen_ppl_convention="sedd")
  j = evals.study_judge(ctx, "unused", Data())
  assert j.kind == "hf" and j.defaults["convention"] == "sedd"
  assert j.defaults["model_tokenizer_sha"] == char.sha256
  x = np.array([[8, 9, 0, 1, 2, 3], [20, 15, 0, 4, 5, 6]])     # character ids
  rep = quality.report(x, j)
  assert rep["gen_ppl_convention"] == "sedd" and rep["gen_ppl_retokenized"]
  auto = common.load_judge(f"hf:{FIX}/gpt2_tiny", Data(), "auto")
  assert quality.report(x, auto)["gen_ppl_convention"] == "mdlm"


def test_a_diffusion_workdir_is_refused_as_judge():
  from tcsm_jax import errors

  class Run:
    experiment = type("E", (), {"causal": False})()
  with pytest.raises(errors.WorkdirError, match="holds a diffusion model; a judge is"):
    judges.from_run(Run(), "W")
