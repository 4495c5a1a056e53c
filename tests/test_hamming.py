"""The 2-Hamming (pair-block) score form against enumeration (issue 15, part 4)."""

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tcsm_jax import divergences, exact, hamming, losses, processes, scores, targets
from tcsm_jax.data import synthetic

V, L = 3, 3
DIVS = ("gkl", "kl", "lsif", "itakura_saito")


def _processes():
  return {"absorbing": processes.Absorbing(V), "uniform": processes.Uniform(V)}


def _table_log_prob(p0):
  """``tokens [n, L] -> log p0`` by lookup in the enumerated table."""
  lp = jnp.asarray(np.log(p0), jnp.float32)
  w = jnp.asarray(V ** np.arange(L - 1, -1, -1))
  return lambda toks: lp[jnp.sum(toks * w, -1)]


def _setup(name, seed=0, sigma=0.7):
  rng = np.random.default_rng(seed)
  proc = _processes()[name]
  p0 = exact.random_distribution(rng, V, L, 0.7)
  _, post = exact.posterior(p0, proc, sigma, L)
  return rng, proc, p0, post


def _brute_pair_loss(post_row, x0, log_p_model, div, pairs):
  """Per pair, ``(1/V^2) sum_{y,z} D(post ratio, model ratio)`` by enumeration."""
  d = divergences.get(div)
  lp = np.asarray(log_p_model, np.float64)                 # [L, V] (-inf off support)
  c = exact.index_of(x0, V)
  out = []
  for i, j in pairs:
    a, b, ok = np.zeros((V, V)), np.zeros((V, V)), np.zeros((V, V), bool)
    for y, z in itertools.product(range(V), range(V)):
      n = x0.copy()
      n[i], n[j] = y, z
      ok[y, z] = np.isfinite(lp[i, y]) and np.isfinite(lp[j, z])
      a[y, z] = post_row[exact.index_of(n, V)] / post_row[c]
      if ok[y, z]:
        b[y, z] = np.exp(lp[i, y] - lp[i, x0[i]] + lp[j, z] - lp[j, x0[j]])
    if div == "kl":
      qa, pb = a[ok] / a[ok].sum(), b[ok] / b[ok].sum()
      val = np.sum(qa * np.log(qa / pb))
    else:
      val = np.sum(np.asarray(d.log_fn(jnp.log(a[ok]), jnp.log(b[ok])), np.float64))
    out.append(val / V ** 2)
  return np.asarray(out)


def _noisy_and_centre(proc, post, rng):
  """A noisy sequence with two masked (absorbing) positions, and a centre for it."""
  s = proc.num_states
  xt = np.array([proc.mask_id if proc.mask_id is not None else 1, 0,
                 proc.mask_id if proc.mask_id is not None else 2], np.int32)
  t = exact.index_of(xt, s)
  row = post[t]
  centre = exact.all_sequences(V, L)[rng.choice(len(row), p=row / row.sum())]
  return xt, row, centre


@pytest.mark.parametrize("name", ["absorbing", "uniform"])
@pytest.mark.parametrize("div", DIVS)
def test_pair_loss_with_exact_target_matches_enumeration(name, div):
  rng, proc, p0, post = _setup(name, seed=3)
  sigma = 0.7
  xt, row, centre = _noisy_and_centre(proc, post, rng)
  logits = jnp.asarray(rng.normal(size=(1, L, V)), jnp.float32)
  pairs = hamming.all_pairs(L)
  x0 = jnp.asarray(centre[None])
  target = targets.pair_exact(_table_log_prob(p0), x0, V, pairs)
  got = hamming.pair_tcsm_loss(logits, x0, jnp.asarray(xt[None]), jnp.asarray([sigma]),
                               proc, pairs, divergence=div, target_pair_log_ratios=target)
  log_p = scores.model_log_probs(logits, proc, jnp.asarray(xt[None]), sigma)[0]
  want = _brute_pair_loss(row, centre, log_p, div, np.asarray(pairs))
  np.testing.assert_allclose(np.asarray(got[0]), want, rtol=2e-4, atol=1e-6)
  assert np.all(want >= 0) and np.any(want > 1e-4)


@pytest.mark.parametrize("name", ["absorbing", "uniform"])
@pytest.mark.parametrize("div", DIVS)
def test_data_target_estimator_is_unbiased_up_to_a_constant(name, div):
  """E_{x0 ~ p(.|x_t)} [MC pair loss] - E [exact pair loss] does not depend on theta."""
  rng, proc, p0, post = _setup(name, seed=5)
  sigma = 0.7
  xt, row, _ = _noisy_and_centre(proc, post, rng)
  x0s = exact.all_sequences(V, L)
  live = row > 0
  x0 = jnp.asarray(x0s[live])
  w = row[live]
  xt_b = jnp.asarray(np.broadcast_to(xt, x0.shape))
  sig = jnp.full((x0.shape[0],), sigma)
  pairs = hamming.all_pairs(L)
  target = targets.pair_exact(_table_log_prob(p0), x0, V, pairs)
  gaps = []
  mc_fn = jax.jit(lambda lg: hamming.pair_tcsm_loss(lg, x0, xt_b, sig, proc, pairs,
                                                    divergence=div))
  ex_fn = jax.jit(lambda lg: hamming.pair_tcsm_loss(lg, x0, xt_b, sig, proc, pairs,
                                                    divergence=div,
                                                    target_pair_log_ratios=target))
  for seed in (0, 1, 2):
    one = np.random.default_rng(seed).normal(size=(1, L, V))
    logits = jnp.asarray(np.broadcast_to(one, (x0.shape[0], L, V)), jnp.float32)
    mc, ex = mc_fn(logits), ex_fn(logits)
    gaps.append(np.asarray(w @ np.asarray(mc - ex, np.float64)))
    assert np.all(np.asarray(w @ np.asarray(ex, np.float64)) > 1e-5)
  np.testing.assert_allclose(gaps[1], gaps[0], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(gaps[2], gaps[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("div", DIVS)
def test_mc_estimator_gradient_matches_exact_gradient(div):
  """The theta-independent constant has zero gradient: E[grad MC] = E[grad exact]."""
  rng, proc, p0, post = _setup("uniform", seed=7)
  xt, row, _ = _noisy_and_centre(proc, post, rng)
  x0s = exact.all_sequences(V, L)
  x0, w = jnp.asarray(x0s), jnp.asarray(row, jnp.float32)
  xt_b = jnp.asarray(np.broadcast_to(xt, x0.shape))
  sig = jnp.full((x0.shape[0],), 0.7)
  pairs = hamming.all_pairs(L)
  target = targets.pair_exact(_table_log_prob(p0), x0, V, pairs)
  one = jnp.asarray(rng.normal(size=(1, L, V)), jnp.float32)

  def expected(lg, tgt):
    logits = jnp.broadcast_to(lg, (x0.shape[0], L, V))
    per = hamming.pair_tcsm_loss(logits, x0, xt_b, sig, proc, pairs, divergence=div,
                                 target_pair_log_ratios=tgt).sum(-1)
    return jnp.sum(w * per)

  g_mc = jax.jit(jax.grad(lambda lg: expected(lg, None)))(one)
  g_ex = jax.jit(jax.grad(lambda lg: expected(lg, target)))(one)
  assert float(jnp.max(jnp.abs(g_ex))) > 1e-4
  np.testing.assert_allclose(np.asarray(g_mc), np.asarray(g_ex), rtol=2e-3, atol=2e-5)


@pytest.mark.parametrize("name", ["absorbing", "uniform"])
def test_kl_pair_block_of_an_independent_target_is_the_sum_of_two_positions(name):
  """For a product target, the pair posterior factorizes: pair KL = KL_i + KL_j
  (``V^2`` pair scale against ``V`` for ``losses.score_loss``)."""
  rng = np.random.default_rng(11)
  proc = _processes()[name]
  marg = rng.dirichlet(np.ones(V), size=L)                          # [L, V]
  x0s = exact.all_sequences(V, L)
  p0 = np.prod(marg[np.arange(L), x0s], -1)
  _, post = exact.posterior(p0, proc, 0.9, L)
  xt, row, centre = _noisy_and_centre(proc, post, rng)
  x0, x_t = jnp.asarray(centre[None]), jnp.asarray(xt[None])
  logits = jnp.asarray(rng.normal(size=(1, L, V)), jnp.float32)
  pairs = hamming.all_pairs(L)
  pair = hamming.pair_tcsm_loss(logits, x0, x_t, jnp.asarray([0.9]), proc, pairs,
                                divergence="kl",
                                target_pair_log_ratios=targets.pair_exact(
                                    _table_log_prob(p0), x0, V, pairs))
  single = losses.tcsm_loss(logits, x0, x_t, jnp.asarray([0.9]), proc, form="score",
                            divergence="kl",
                            target_log_cond=jnp.asarray(np.log(marg)[None], jnp.float32))
  i, j = np.asarray(pairs).T
  want = (np.asarray(single[0])[i] + np.asarray(single[0])[j]) / V
  np.testing.assert_allclose(np.asarray(pair[0]), want, rtol=1e-4, atol=1e-7)


def test_pair_exact_matches_the_chain_and_is_additive_for_distant_pairs():
  chain = synthetic.MarkovChain.random(4, 1, 0.5, seed=0)
  lp = synthetic.jax_log_prob_fn(chain)
  x0 = jnp.asarray(chain.sample(2 * 6, seed=3).reshape(2, 6))
  pairs = hamming.all_pairs(6)
  got = np.asarray(targets.pair_exact(lp, x0, 4, pairs))
  base = chain.log_prob(np.asarray(x0))
  for b in range(2):
    for p, (i, j) in enumerate(np.asarray(pairs)):
      for y, z in itertools.product(range(4), range(4)):
        n = np.asarray(x0[b]).copy()
        n[i], n[j] = y, z
        assert abs(got[b, p, y, z] - (chain.log_prob(n[None])[0] - base[b])) < 1e-4
  # First order: positions more than one apart are conditionally independent given
  # the rest, so their pair ratio is the product of the single ratios.
  single = np.asarray(targets.ar_exact(lp, x0, 4))
  for p, (i, j) in enumerate(np.asarray(pairs)):
    add = single[:, i, :, None] + single[:, j, None, :]
    if j - i > 1:
      np.testing.assert_allclose(got[:, p], add, atol=1e-4)
    else:
      assert np.max(np.abs(got[:, p] - add)) > 1e-2


def test_pairs_are_uniform_over_unordered_pairs():
  p = np.asarray(hamming.sample_pairs(jax.random.PRNGKey(0), 5, 40_000))
  assert np.all(p[:, 0] < p[:, 1]) and p.min() >= 0 and p.max() < 5
  counts = np.zeros((5, 5))
  np.add.at(counts, (p[:, 0], p[:, 1]), 1)
  got = counts[np.triu_indices(5, 1)]
  assert got.size == 10
  np.testing.assert_allclose(got / got.sum(), np.full(10, 0.1), atol=0.01)
  np.testing.assert_array_equal(np.asarray(hamming.all_pairs(4)),
                                [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]])


def test_bad_shapes_name_the_array():
  log_p = jnp.zeros((2, 4, 3))
  with pytest.raises(ValueError, match="pairs"):
    hamming.pair_score_loss(log_p, jnp.zeros((2, 4), jnp.int32), jnp.zeros((3,), jnp.int32))
  with pytest.raises(ValueError, match="log_q_ratios"):
    hamming.pair_score_loss(log_p, jnp.zeros((2, 4), jnp.int32), hamming.all_pairs(4),
                            log_q_ratios=jnp.zeros((2, 6, 3, 2)))
  with pytest.raises(ValueError, match="two different positions"):
    hamming.pair_score_loss(log_p, jnp.zeros((2, 4), jnp.int32), jnp.asarray([[1, 1]]))
  with pytest.raises(ValueError, match="two different positions"):
    hamming.pair_score_loss(log_p, jnp.zeros((2, 4), jnp.int32), jnp.asarray([[0, 4]]))
  with pytest.raises(ValueError, match="length >= 2"):
    hamming.all_pairs(1)


def test_sampled_pairs_estimate_the_all_pairs_loss():
  """``(L / M) sum`` over M drawn pairs is unbiased for ``(2 / (L - 1)) sum_{i<j}``."""
  from tcsm_jax import objective
  import ml_collections
  rng = np.random.default_rng(2)
  proc, length = processes.Uniform(4), 6
  x0 = jnp.asarray(rng.integers(0, 4, (2, length)), jnp.int32)
  x_t = jnp.asarray(rng.integers(0, 4, (2, length)), jnp.int32)
  logits = jnp.asarray(rng.normal(size=(2, length, 4)), jnp.float32)
  sig = jnp.asarray([0.5, 1.5])
  cfg = ml_collections.ConfigDict({"hamming_pairs": 0, "teacher_weight": 0.0,
                                   "divergence": "gkl"})
  full = np.asarray(objective._pair_loss(cfg, proc, logits, x0, x_t, sig, None,
                                         jax.random.PRNGKey(0)))
  per_pair = hamming.pair_tcsm_loss(logits, x0, x_t, sig, proc, hamming.all_pairs(length))
  np.testing.assert_allclose(full, 2 / (length - 1) * np.asarray(per_pair).sum(-1),
                             rtol=1e-5)
  cfg.hamming_pairs = 3
  draws = jax.vmap(lambda k: objective._pair_loss(cfg, proc, logits, x0, x_t, sig, None,
                                                  k))(jax.random.split(
                                                      jax.random.PRNGKey(1), 600))
  draws = np.asarray(draws)
  se = draws.std(0) / np.sqrt(len(draws))
  assert np.all(np.abs(draws.mean(0) - full) < 4 * se), (draws.mean(0), full, se)
  assert np.all(draws.std(0) > 0)


def test_hamming_two_trains_through_the_trainer_with_the_oracle_and_the_data(tmp_path):
  from tcsm_jax.data import synthetic as syn
  from tcsm_jax.training import trainer
  from helpers import tiny_config
  base = {"data.name": "markov", "data.markov_vocab": 4, "data.markov_tokens": 20_000,
          "data.seq_len": 8, "train.num_steps": 40, "train.batch_size": 16,
          "optim.lr": 3e-3, "loss.hamming": 2, "loss.form": "score"}
  for name, extra in (("oracle", {"teacher.kind": "markov", "loss.teacher_weight": 1.0}),
                      ("data", {"loss.hamming_pairs": 4, "loss.divergence": "kl"})):
    cfg = tiny_config(**base, **extra)
    ds = syn.load(cfg.data)
    exp = trainer.build(cfg, ds)
    state = trainer.train_and_evaluate(cfg, str(tmp_path / name), experiment=exp)
    logs = [json.loads(l) for l in open(tmp_path / name / "metrics.jsonl")]
    losses_ = [r["loss"] for r in logs if "loss" in r]
    assert all(np.isfinite(losses_)) and len(losses_) >= 30, name
    assert np.mean(losses_[-10:]) < np.mean(losses_[:10]), (name, losses_)
    del state


def test_hamming_two_loss_through_the_experiment():
  """The default-run stand-in for the trainer test: the experiment's own loss function
  with the oracle's pair target, alone and mixed with the data, and its gradient."""
  from tcsm_jax.data import synthetic as syn
  from tcsm_jax.training import experiment as experiment_lib
  from helpers import tiny_config
  base = {"data.name": "markov", "data.markov_vocab": 4, "data.markov_tokens": 4_000,
          "data.seq_len": 6, "loss.hamming": 2, "loss.form": "score"}
  vals = {}
  # The oracle (its pair target through Experiment.loss_fns and the teacher loader) at
  # full weight, and half data half oracle with 4 drawn pairs per step.
  for name, extra in (("oracle", {"teacher.kind": "markov", "loss.teacher_weight": 1.0}),
                      ("mixed", {"teacher.kind": "markov", "loss.teacher_weight": 0.5,
                                 "loss.hamming_pairs": 4})):
    cfg = tiny_config(**base, **extra)
    exp = experiment_lib.build(cfg, syn.load(cfg.data))
    params = jax.jit(exp.init_params)(jax.random.PRNGKey(0))   # eager init: 4 s
    train_fn, _ = exp.loss_fns()
    x0 = jnp.asarray(exp.dataset.train[:48].reshape(8, 6), jnp.int32)
    (loss, _), g = jax.jit(jax.value_and_grad(train_fn, has_aux=True))(
        params, exp.frozen, x0, jax.random.PRNGKey(1))
    assert np.isfinite(float(loss)) and float(loss) > 0, name
    assert max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(g)) > 0, name
    vals[name] = float(loss)
  assert vals["oracle"] != vals["mixed"]


@pytest.mark.parametrize("overrides, match", [
    ({"loss.form": "distribution"}, "loss.form='score'"),
    ({"teacher.kind": "ar", "teacher.workdir": "x", "teacher.mode": "top_k",
      "loss.teacher_weight": 1.0}, "pair ratios"),
    ({"data.layout": "padded"}, "packed"),
    ({"loss.hamming": 3}, "loss.hamming"),
    ({"model.arch": "causal"}, "pre-training objective"),
    ({"finetune.kind": "reward", "finetune.ref_workdir": "x"}, "pre-training objective"),
])
def test_hamming_config_rules_are_one_line(overrides, match):
  from tcsm_jax import errors
  from tcsm_jax.training import config as config_lib
  from helpers import tiny_config
  cfg = tiny_config(**{"loss.hamming": 2, "loss.form": "score", **overrides})
  with pytest.raises(errors.ConfigError, match=match) as e:
    config_lib.validate(cfg)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["absorbing", "uniform"])
def test_data_target_kl_at_k2_is_k1_times_two_over_v(name):
  """The control of the hamming study: per sequence, ``(2 / (L - 1)) sum_{i<j}`` of the
  pair blocks' Monte Carlo KL equals ``(2 / V) sum_i`` of the 1-Hamming one."""
  rng = np.random.default_rng(4)
  proc, length, v = _processes()[name], 5, V
  x0 = jnp.asarray(rng.integers(0, v, (3, length)), jnp.int32)
  x_t = proc.sample_forward(jax.random.PRNGKey(0), x0, jnp.full((3,), 0.8))
  logits = jnp.asarray(rng.normal(size=(3, length, v)), jnp.float32)
  sig = jnp.full((3,), 0.8)
  k2 = hamming.pair_tcsm_loss(logits, x0, x_t, sig, proc, hamming.all_pairs(length),
                              divergence="kl").sum(-1) * 2 / (length - 1)
  k1 = losses.tcsm_loss(logits, x0, x_t, sig, proc, form="score", divergence="kl").sum(-1)
  np.testing.assert_allclose(np.asarray(k2), 2 / v * np.asarray(k1), rtol=1e-5)
  assert float(jnp.min(k1)) > 0
