"""Teachers: exact / Top-K / Taylor AR ratios, masked-LM conditionals, minimizers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tcsm_jax import exact, losses, processes, targets
from tcsm_jax.models import transformer


def _index(toks, v):
  length = toks.shape[-1]
  w = v ** jnp.arange(length - 1, -1, -1)
  return jnp.sum(toks * w, -1)


def _tiny_causal(v=4, length=5, seed=0):
  cfg = transformer.TransformerConfig(vocab_size=v, num_input_states=v + 1,
                                      max_length=length, num_layers=2, width=16,
                                      num_heads=2, causal=True)
  model = transformer.CausalTransformer(cfg)
  params = jax.jit(model.init)(jax.random.PRNGKey(seed),
                               jnp.zeros((1, length), jnp.int32))["params"]
  params = jax.tree.map(
      lambda p: p + 0.3 * jax.random.normal(jax.random.PRNGKey(seed + 1), p.shape), params)
  return model, params


def test_exact_ratios_equal_true_conditionals():
  v, length = 3, 3
  p0 = exact.random_distribution(np.random.default_rng(0), v, length)
  table = jnp.log(jnp.asarray(p0, jnp.float32))
  lp_fn = lambda toks: table[_index(toks, v)]
  x0 = jnp.asarray(exact.all_sequences(v, length))
  got = np.asarray(targets.ar_exact(lp_fn, x0, v))
  cond = exact.conditionals(p0, v, length)
  want = np.log(cond) - np.log(np.take_along_axis(cond, np.asarray(x0)[..., None], -1))
  np.testing.assert_allclose(got, want, atol=2e-4)


def test_soft_one_hot_input_matches_token_input():
  model, params = _tiny_causal()
  x = jnp.asarray(np.random.default_rng(1).integers(0, 4, (3, 5)))
  a = targets.ar_log_prob_fn(model, params)(x)
  b = targets.ar_soft_log_prob_fn(model, params)(jax.nn.one_hot(x, 4))
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_top_k_with_k_equal_vocab_is_exact():
  model, params = _tiny_causal()
  x = jnp.asarray(np.random.default_rng(2).integers(0, 4, (3, 5)))
  ex = jax.jit(targets.ar_teacher(model, params, "exact"))(x)   # jit: eager is slow
  tk = jax.jit(targets.ar_teacher(model, params, "top_k", top_k=4))(x)
  np.testing.assert_allclose(tk, ex, atol=1e-5)
  # Smaller K keeps exactly K neighbours (plus the token itself) with exact values.
  t2 = np.asarray(jax.jit(targets.ar_teacher(model, params, "top_k", top_k=2))(x))
  kept = np.isfinite(t2)
  assert np.all((kept.sum(-1) >= 2) & (kept.sum(-1) <= 3))
  np.testing.assert_allclose(t2[kept], np.asarray(ex)[kept], atol=1e-5)
  err = targets.approximation_error(ex, jnp.asarray(t2))
  assert 0 < float(err["mass_covered"]) < 1 and float(err["mae_kept"]) < 1e-4


def _table_teacher(p0, v, length):
  """``(log_prob_fn, next_log_probs fn)`` of an explicit sequence law ``p0 [V**L]``:
  ``next[b, i, y] = log p(x^i = y | x^{<i})`` from the prefix marginals."""
  table = jnp.log(jnp.asarray(p0, jnp.float32))
  p = np.asarray(p0, np.float64).reshape((v,) * length)

  def next_lp(x0):
    x0 = np.asarray(x0)
    out = np.zeros(x0.shape + (v,))
    for b, row in enumerate(x0):
      for i in range(length):
        marg = p[tuple(row[:i])].reshape(v, -1).sum(-1)   # p(x_<i, y) over y
        out[b, i] = np.log(marg) - np.log(marg.sum())
    return jnp.asarray(out, jnp.float32)

  return (lambda toks: table[_index(toks, v)]), next_lp


def test_top_k_tail_keeps_the_tail_with_unbiased_mass():
  v, length, k, m = 5, 3, 1, 2
  p0 = exact.random_distribution(np.random.default_rng(3), v, length, concentration=1.0)
  lp_fn, next_lp = _table_teacher(p0, v, length)
  x0 = jnp.asarray(exact.all_sequences(v, length)[::17][:6])
  ex = np.asarray(targets.ar_exact(lp_fn, x0, v), np.float64)
  nlp = next_lp(x0)
  fn = jax.jit(jax.vmap(lambda key: targets.ar_top_k_tail(lp_fn, x0, nlp, k, m, key)))
  n = 4000
  est = np.asarray(fn(jax.random.split(jax.random.PRNGKey(0), n)), np.float64)
  assert np.isfinite(est).all()                         # dense: no neighbour dropped
  # Top-K candidates and the token itself are exact in every draw.
  top = np.asarray(jax.lax.top_k(nlp, k)[1])
  keep = np.zeros(ex.shape, bool)
  np.put_along_axis(keep, top, True, -1)
  np.put_along_axis(keep, np.asarray(x0)[..., None], True, -1)
  np.testing.assert_allclose(est[:, keep], np.broadcast_to(ex[keep], est[:, keep].shape),
                             atol=1e-4)
  # The tail's total mass is unbiased: its mean over draws matches the exact mass.
  tail_est = np.where(~keep, np.exp(est), 0.0).sum(-1)  # [n, b, L]
  tail_ex = np.where(~keep, np.exp(ex), 0.0).sum(-1)
  mean, se = tail_est.mean(0), tail_est.std(0) / np.sqrt(n)
  assert (se > 0).any()                                 # the estimator is random
  assert np.all(np.abs(mean - tail_ex) <= 4 * se + 1e-5 * tail_ex), (mean, tail_ex, se)
  # Tail shares are biased where the suffix depends on the token; not wildly so.
  assert np.abs(est[:, ~keep].mean(0) - ex[~keep]).max() > 1e-3


def test_top_k_tail_is_exact_where_the_suffix_ignores_the_token():
  v, length = 4, 3
  rng = np.random.default_rng(4)
  p0 = exact.random_distribution(rng, v, length, concentration=1.0)
  lp_fn, next_lp = _table_teacher(p0, v, length)
  x0 = jnp.asarray(exact.all_sequences(v, length)[::5])
  ex = np.asarray(targets.ar_exact(lp_fn, x0, v))
  got = np.asarray(targets.ar_top_k_tail(lp_fn, x0, next_lp(x0), 1, 1,
                                         jax.random.PRNGKey(1)))
  # The last position has no suffix: every tail ratio is its exact prefix factor.
  np.testing.assert_allclose(got[:, -1], ex[:, -1], atol=1e-4)
  # Independent positions: the suffix never depends on the token; exact everywhere.
  marg = [rng.dirichlet(np.ones(v)) for _ in range(length)]
  prod = np.einsum("a,b,c->abc", *marg).reshape(-1)
  lp_fn, next_lp = _table_teacher(prod, v, length)
  ex = np.asarray(targets.ar_exact(lp_fn, x0, v))
  got = np.asarray(targets.ar_top_k_tail(lp_fn, x0, next_lp(x0), 2, 1,
                                         jax.random.PRNGKey(2)))
  np.testing.assert_allclose(got, ex, atol=1e-4)


def test_top_k_tail_through_the_causal_adapter():
  model, params = _tiny_causal()
  x = jnp.asarray(np.random.default_rng(2).integers(0, 4, (3, 5)))
  ex = np.asarray(targets.ar_teacher(model, params, "exact")(x))
  dense = targets.ar_teacher(model, params, "top_k_tail", top_k=4, tail_samples=2)
  assert targets.accepts_key(dense)
  np.testing.assert_allclose(dense(x, jax.random.PRNGKey(0)), ex, atol=1e-5)  # K = V
  got = np.asarray(targets.ar_teacher(model, params, "top_k_tail", top_k=1,
                                      tail_samples=3)(x, jax.random.PRNGKey(0)))
  assert np.isfinite(got).all()
  np.testing.assert_allclose(got[:, -1], ex[:, -1], atol=1e-5)     # no suffix: exact


def test_a_stochastic_target_gets_a_key_from_the_loss():
  from ml_collections import ConfigDict
  from tcsm_jax import objective, schedules
  proc = processes.Absorbing(4)
  seen = []

  def target(x0, key):
    seen.append(key)
    return jnp.zeros(x0.shape + (4,)) + 0.0 * jax.random.uniform(key)

  cfg = ConfigDict(dict(kind="tcsm", form="score", divergence="gkl",
                        weighting="constant", t_min=1e-5, stratified=True,
                        teacher_weight=1.0))
  fn = objective.make_loss_fn(cfg, proc, schedules.get("log_linear"),
                              lambda p, x, s, tr, k: jnp.zeros(x.shape + (4,)), target)
  loss, _ = fn(None, jnp.zeros((2, 3), jnp.int32), jax.random.PRNGKey(0))
  assert np.isfinite(float(loss)) and seen and seen[0] is not None
  assert targets.call_target(lambda x0: x0 + 1, 1, key=jax.random.PRNGKey(0)) == 2


def test_taylor_is_exact_for_a_teacher_linear_in_its_one_hot_input():
  v, length = 5, 4
  w = jnp.asarray(np.random.default_rng(3).normal(size=(length, v)), jnp.float32)
  soft = lambda onehot: jnp.sum(onehot * w, (-1, -2)) + 0.7
  hard = lambda toks: jnp.sum(jnp.take_along_axis(w[None], toks[..., None], -1)[..., 0],
                              -1) + 0.7
  x = jnp.asarray(np.random.default_rng(4).integers(0, v, (6, length)))
  np.testing.assert_allclose(targets.ar_taylor(soft, x, v), targets.ar_exact(hard, x, v),
                             atol=1e-5)
  # For a real transformer the first-order estimate is only an approximation.
  model, params = _tiny_causal()
  xx = jnp.asarray(np.random.default_rng(5).integers(0, 4, (4, 5)))
  err = targets.approximation_error(targets.ar_teacher(model, params, "exact")(xx),
                                    targets.ar_teacher(model, params, "taylor")(xx))
  assert float(err["kl"]) > 1e-6 and float(err["mass_covered"]) == pytest.approx(1.0)


def test_mlm_teacher_with_bayes_denoiser_gives_true_conditionals():
  v, length = 3, 3
  proc = processes.Absorbing(v)
  p0 = exact.random_distribution(np.random.default_rng(6), v, length)
  den = exact.true_denoiser(p0, proc, length)
  target = targets.mlm_teacher(lambda params, x, s: den(x, s), None, proc.mask_id)
  x0 = jnp.asarray(exact.all_sequences(v, length))
  got = np.exp(np.asarray(target(x0)))
  np.testing.assert_allclose(got, exact.conditionals(p0, v, length), atol=1e-5)


@pytest.mark.parametrize("form,div", [("distribution", "kl"), ("score", "gkl")])
def test_teacher_equal_to_truth_is_minimized_by_true_posterior(form, div):
  """Teacher = p0 (exact ratios of an enumerable model): the expected teacher-target
  loss is stationary at the true posterior marginals (score form: factorized p0)."""
  v, length, sigma = 3, 2, 0.9
  proc = processes.Absorbing(v)
  rng = np.random.default_rng(7)
  x0s_np = exact.all_sequences(v, length)
  if form == "score":
    m = rng.dirichlet(np.ones(v), size=length)
    p0 = np.prod(m[np.arange(length), x0s_np], -1)
  else:
    p0 = exact.random_distribution(rng, v, length)
  table = jnp.log(jnp.asarray(p0, jnp.float32))
  x0s = jnp.asarray(x0s_np)
  teacher = targets.ar_exact(lambda t: table[_index(t, v)], x0s, v)
  _, post = exact.posterior(p0, proc, sigma, length)
  marg = exact.position_marginals(post, v, length)
  xts = exact.all_sequences(proc.num_states, length)

  @jax.jit
  def expected(logits, xt, w):
    first = jnp.argmax(w > 0)
    x0v = jnp.where((w > 0)[:, None], x0s, x0s[first])
    tg = jnp.where((w > 0)[:, None, None], teacher, teacher[first])
    n = x0s.shape[0]
    per = losses.tcsm_loss(jnp.broadcast_to(logits, (n,) + logits.shape), x0v,
                           jnp.broadcast_to(xt, x0s.shape), sigma, proc, form=form,
                           divergence=div, target_log_cond=tg)
    return jnp.sum(w * per.sum(-1))

  checked = 0
  for t in range(len(xts)):
    if not np.any(xts[t] == proc.mask_id):
      continue
    ok = marg[t] > 0
    truth = jnp.asarray(np.where(marg[t] > 0, np.log(np.maximum(marg[t], 1e-30)), 0.0),
                        jnp.float32)
    g = np.asarray(jax.grad(expected)(truth, jnp.asarray(xts[t]),
                                      jnp.asarray(post[t], jnp.float32)))
    assert np.abs(g).max() < 2e-4, (t, g)
    checked += 1
  assert checked >= 5


def test_teacher_errors():
  model, params = _tiny_causal()
  with pytest.raises(ValueError, match="unknown AR teacher mode"):
    targets.ar_teacher(model, params, "second_order")
  with pytest.raises(ValueError, match="top_k"):
    targets.ar_teacher(model, params, "top_k", top_k=0)
  with pytest.raises(ValueError, match="tail_samples"):
    targets.ar_teacher(model, params, "top_k_tail", tail_samples=0)
  with pytest.raises(ValueError, match="pass a key"):
    targets.ar_teacher(model, params, "top_k_tail", top_k=2)(jnp.zeros((1, 5), jnp.int32),
                                                             None)


def test_distillation_and_mlm_teacher_train_through_the_trainer(tmp_path):
  from helpers import small_dataset, tiny_config
  from tcsm_jax.training import config as config_lib
  from tcsm_jax.training import trainer
  ds = small_dataset(20000, 4000)
  small = {"data.seq_len": 16, "train.num_steps": 3, "train.eval_every": 3,
           "train.batch_size": 8}
  teacher_cfg = tiny_config(**small, **{"model.arch": "causal"})
  trainer.train_and_evaluate(teacher_cfg, str(tmp_path / "ar"),
                             experiment=trainer.build(teacher_cfg, ds))
  mlm_cfg = tiny_config(**small)
  trainer.train_and_evaluate(mlm_cfg, str(tmp_path / "mlm"),
                             experiment=trainer.build(mlm_cfg, ds))
  for kind, mode, weight, form in [("ar", "top_k", 1.0, "score"),
                                   ("ar", "top_k_tail", 1.0, "distribution"),
                                   ("ar", "taylor", 0.5, "distribution"),
                                   ("ar", "exact", 1.0, "distribution"),
                                   ("mlm", "taylor", 0.7, "score")]:
    cfg = tiny_config(**small, **{"teacher.kind": kind, "teacher.mode": mode,
                                  "teacher.top_k": 3, "loss.teacher_weight": weight,
                                  "loss.form": form,
                                  "loss.divergence": "gkl" if form == "score" else "kl",
                                  "teacher.workdir": str(tmp_path / kind)})
    out = trainer.train_and_evaluate(cfg, str(tmp_path / f"student_{kind}_{mode}"),
                                     experiment=trainer.build(cfg, ds))
    assert np.isfinite(out["loss"]) and out["skipped"] == 0, (kind, mode, out)
    assert np.isfinite(out["eval/nll_bound"])
  with pytest.raises(ValueError, match="needs teacher.kind"):
    config_lib.validate(tiny_config(**{"loss.teacher_weight": 0.5}))
  bad = tiny_config(**small, **{"teacher.kind": "ar", "loss.teacher_weight": 1.0,
                                "teacher.workdir": str(tmp_path / "mlm")})
  with pytest.raises(ValueError, match="holds a diffusion model"):
    trainer.train_and_evaluate(bad, str(tmp_path / "bad"), experiment=trainer.build(bad, ds))


@pytest.mark.parametrize("order", [1, 2])
def test_markov_oracle_teacher_gives_the_true_conditionals(order):
  from tcsm_jax.data import synthetic
  v, length = 3, 4
  chain = synthetic.MarkovChain.random(v, order, 0.5, seed=order)
  seqs = exact.all_sequences(v, length)
  logp = chain.log_prob(seqs)
  np.testing.assert_allclose(np.exp(logp).sum(), 1.0, rtol=1e-6)
  x0 = seqs[::7]
  got = jax.nn.log_softmax(synthetic.oracle_teacher(chain)(jnp.asarray(x0)), -1)
  idx = {tuple(s): i for i, s in enumerate(seqs)}
  for b, x in enumerate(x0):
    for i in range(length):
      nb = [logp[idx[tuple(np.where(np.arange(length) == i, y, x))]] for y in range(v)]
      want = np.asarray(nb) - np.logaddexp.reduce(nb)        # p(x^i = . | x^{-i})
      np.testing.assert_allclose(got[b, i], want, atol=2e-5)


def test_oracle_teacher_target_has_the_data_target_gradient_with_less_variance():
  """The mechanism behind parametric targets: the teacher target is the data target
  Rao-Blackwellized over the clean token (same expected gradient, lower variance)."""
  from jax.flatten_util import ravel_pytree
  from helpers import tiny_config
  from tcsm_jax.data import synthetic
  from tcsm_jax import objective
  from tcsm_jax.training import trainer
  cfg = tiny_config(**{"data.name": "markov", "data.markov_vocab": 4,
                       "data.markov_tokens": 40_000, "data.seq_len": 12,
                       "loss.form": "distribution", "loss.divergence": "kl",
                       "loss.weighting": "constant"})
  exp = trainer.build(cfg, synthetic.load(cfg.data))
  params = exp.init_params(jax.random.PRNGKey(0))
  oracle = synthetic.oracle_teacher(synthetic.chain_from_config(cfg.data))
  grads = {}
  for name, w in [("data", 0.0), ("teacher", 1.0)]:
    c = cfg.loss.copy_and_resolve_references()
    c.teacher_weight = w
    fn = objective.make_loss_fn(c, exp.process, exp.schedule, exp.apply_fn,
                                target_fn=oracle if w else None)
    flat = jax.jit(lambda p, x, k: ravel_pytree(
        jax.grad(lambda q: fn(q, x, k, False)[0])(p))[0])
    gs = []
    for i in range(48):   # same clean batches, times and corruptions for both targets
      x = exp.dataset.train[i * 96:(i + 1) * 96].reshape(8, 12).astype(np.int32)
      gs.append(np.asarray(flat(params, jnp.asarray(x), jax.random.PRNGKey(i))))
    grads[name] = np.stack(gs)
  mean_d, mean_t = grads["data"].mean(0), grads["teacher"].mean(0)
  var_d = ((grads["data"] - mean_d) ** 2).sum(1).mean()
  var_t = ((grads["teacher"] - mean_t) ** 2).sum(1).mean()
  assert var_t < 0.7 * var_d, (var_t, var_d)
  # Same expectation: the means differ by no more than their sampling error.
  se = np.sqrt(var_d / len(grads["data"]))
  assert np.linalg.norm(mean_d - mean_t) < 2.0 * se, (np.linalg.norm(mean_d - mean_t), se)
  assert np.linalg.norm(mean_d) > 2.0 * se          # the gradient is not just noise
  from tcsm_jax.training import config as config_lib
  with pytest.raises(ValueError, match="needs data.name='markov'"):
    config_lib.validate(tiny_config(**{"teacher.kind": "markov",
                                       "loss.teacher_weight": 1.0}))
