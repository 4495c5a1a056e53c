"""TCSM losses and their special cases, proven by exact computation."""

import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tcsm_jax import divergences, exact, losses, processes, scores

DIVS = ["gkl", "kl", "lsif", "itakura_saito"]
FORMS = ["score", "distribution"]


def rand_logp(rng, shape, scale=1.0):
  return jax.nn.log_softmax(jnp.asarray(rng.normal(size=shape) * scale, jnp.float32))


def expected_over_x(fn, log_p, log_q, **kw):
  """E_{x ~ q} fn(log_p, x) for a single position, by enumeration of x."""
  v = log_p.shape[-1]
  xs = jnp.arange(v)
  vals = fn(jnp.broadcast_to(log_p, (v, v)), xs,
            log_q=None if log_q is None else jnp.broadcast_to(log_q, (v, v)), **kw)
  return jnp.sum(jnp.exp(log_q) * vals)


def test_score_gkl_data_target_closed_form():
  rng = np.random.default_rng(0)
  log_p = rand_logp(rng, (2, 5, 7))
  x0 = jnp.asarray(rng.integers(0, 7, (2, 5)))
  got = losses.score_loss(log_p, x0, "gkl")
  p = np.exp(np.asarray(log_p, np.float64))
  px = np.take_along_axis(p, np.asarray(x0)[..., None], -1)[..., 0]
  want = -np.log(px) + 1 / (7 * px) + np.log(p).sum(-1) / 7
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(losses.distribution_loss(log_p, x0, "kl"), -np.log(px),
                             rtol=1e-5)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("div", DIVS)
def test_data_target_is_unbiased_up_to_a_constant(form, div):
  """E_{x~q}[MC loss(p)] - exact loss(p, q) does not depend on the model p."""
  rng = np.random.default_rng(1)
  v = 5
  log_q = rand_logp(rng, (v,))
  fn = losses.score_loss if form == "score" else losses.distribution_loss
  gaps = []
  for _ in range(3):
    log_p = rand_logp(rng, (v,))
    mc = expected_over_x(lambda lp, x, log_q: fn(lp, x, div), log_p, log_q)
    ex = expected_over_x(lambda lp, x, log_q: fn(lp, x, div, log_q=log_q), log_p, log_q)
    gaps.append(float(mc - ex))
  np.testing.assert_allclose(gaps, gaps[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("div", DIVS)
def test_minimized_when_model_equals_target(form, div):
  rng = np.random.default_rng(2)
  v = 4
  log_q = rand_logp(rng, (v,))
  fn = losses.score_loss if form == "score" else losses.distribution_loss

  def exact_loss(logits):
    return expected_over_x(lambda lp, x, log_q: fn(lp, x, div, log_q=log_q),
                           jax.nn.log_softmax(logits), log_q)

  def mc_loss(logits):
    return expected_over_x(lambda lp, x, log_q: fn(lp, x, div),
                           jax.nn.log_softmax(logits), log_q)

  assert abs(float(exact_loss(log_q))) < 1e-5
  assert np.abs(np.asarray(jax.grad(mc_loss)(log_q))).max() < 1e-4
  for _ in range(5):
    other = log_q + jnp.asarray(rng.normal(size=v) * 0.3, jnp.float32)
    assert float(exact_loss(other)) > 1e-6
    assert float(mc_loss(other)) > float(mc_loss(log_q))


def test_known_minimum_values_of_data_target_losses():
  rng = np.random.default_rng(3)
  v = 6
  log_q = rand_logp(rng, (v,))
  q = np.exp(np.asarray(log_q, np.float64))
  h = -(q * np.log(q)).sum()
  score = expected_over_x(lambda lp, x, log_q: losses.score_loss(lp, x, "gkl"), log_q, log_q)
  np.testing.assert_allclose(score, h + 1 + np.log(q).sum() / v, rtol=1e-5)
  dist = expected_over_x(lambda lp, x, log_q: losses.distribution_loss(lp, x, "kl"),
                         log_q, log_q)
  np.testing.assert_allclose(dist, h, rtol=1e-5)


@pytest.mark.parametrize("full", [True, False])
def test_score_form_scale_identities(full):
  """One 1/V scale for the four score-form divergences (losses.py docstring).

  With exact targets, support N (n = |N|) and E over the centre x ~ q:
  V E[score_gkl] = V E[score_itakura_saito] = n KL(q||p) + IS(q, p) = n V E[score_kl] + IS;
  score_kl = KL / V pointwise; with the data target score_kl = -log p(x) / V.
  """
  rng = np.random.default_rng(4)
  v = 5
  keep = np.ones(v, bool) if full else np.array([True, False, True, True, False])
  n = int(keep.sum())
  sup = jnp.broadcast_to(jnp.asarray(keep), (v, v))

  def masked_logp():
    return jax.nn.log_softmax(jnp.where(keep, jnp.asarray(rng.normal(size=v),
                                                          jnp.float32), -jnp.inf))

  def expect(div, log_p, log_q):
    xs = jnp.arange(v)
    vals = losses.score_loss(jnp.broadcast_to(log_p, (v, v)), xs, div,
                             log_q=jnp.broadcast_to(log_q, (v, v)), support=sup)
    q = np.exp(np.asarray(log_q, np.float64))
    return float((q[keep] * np.asarray(vals, np.float64)[keep]).sum()), np.asarray(vals)

  for _ in range(3):
    log_q, log_p = masked_logp(), masked_logp()
    q, p = np.exp(np.asarray(log_q, np.float64))[keep], np.exp(
        np.asarray(log_p, np.float64))[keep]
    kl = (q * np.log(q / p)).sum()
    isd = (q / p - np.log(q / p) - 1).sum()
    gkl, _ = expect("gkl", log_p, log_q)
    its, _ = expect("itakura_saito", log_p, log_q)
    skl, skl_vals = expect("kl", log_p, log_q)
    np.testing.assert_allclose(v * gkl, n * kl + isd, rtol=1e-4)
    np.testing.assert_allclose(v * its, n * kl + isd, rtol=1e-4)
    np.testing.assert_allclose(v * gkl, n * v * skl + isd, rtol=1e-4)
    np.testing.assert_allclose(skl_vals[keep], kl / v, rtol=1e-4)   # pointwise
    dist = lambda div: float(losses.distribution_loss(log_p, jnp.array(0), div,
                                                      log_q=log_q, support=sup[0]))
    np.testing.assert_allclose(dist("kl"), kl, rtol=1e-4)
    np.testing.assert_allclose(dist("itakura_saito"), isd, rtol=1e-4)
  # Data target: the score-form KL is the cross-entropy on the same 1/V scale.
  log_p = masked_logp()
  x = jnp.asarray(np.flatnonzero(keep))
  lp = jnp.broadcast_to(log_p, (n, v))
  np.testing.assert_allclose(losses.score_loss(lp, x, "kl", support=sup[:n]),
                             -np.asarray(log_p)[keep] / v, rtol=1e-6)
  np.testing.assert_allclose(losses.distribution_loss(lp, x, "kl", support=sup[:n]),
                             -np.asarray(log_p)[keep], rtol=1e-6)
  pk = np.exp(np.asarray(log_p, np.float64))[keep]
  np.testing.assert_allclose(losses.score_loss(lp, x, "gkl", support=sup[:n]),
                             -(n / v) * np.log(pk) + 1 / (v * pk) + np.log(pk).sum() / v,
                             rtol=1e-5)


def _setup(kind, v=3, length=3, seed=0):
  rng = np.random.default_rng(seed)
  proc = processes.Uniform(v) if kind == "uniform" else processes.Absorbing(v)
  p0 = exact.random_distribution(rng, v, length)
  return proc, p0


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_path_identity(kind):
  """Posterior concrete score = target concrete score x kernel ratio (enumeration)."""
  v, length, sigma = 3, 3, 0.8
  proc, p0 = _setup(kind, v, length)
  _, post = exact.posterior(p0, proc, sigma, length)              # [Nt, N0]
  x0s, xts = exact.all_sequences(v, length), exact.all_sequences(proc.num_states, length)
  cond = exact.conditionals(p0, v, length)                        # [N0, L, V]
  ti, ni = np.nonzero(post > 0)
  x0, xt = jnp.asarray(x0s[ni]), jnp.asarray(xts[ti])
  target = jnp.asarray(np.log(cond[ni]), jnp.float32)
  got = scores.posterior_log_ratios(scores.clean_log_ratios(target, x0), proc, x0, xt, sigma)
  want = np.zeros((len(ti), length, v))
  for i in range(length):
    for y in range(v):
      nb = x0s[ni].copy()
      nb[:, i] = y
      want[:, i, y] = post[ti, exact.index_of(nb, v)] / post[ti, ni]
  np.testing.assert_allclose(np.exp(np.asarray(got)), want, rtol=2e-4, atol=1e-7)
  # The normalized form is the exact conditional p(x0^i = y | x0^{-i}, x_t).
  qpost = np.exp(np.asarray(scores.posterior_log_probs(target, proc, xt, sigma)))
  np.testing.assert_allclose(qpost, want / want.sum(-1, keepdims=True), rtol=2e-4,
                             atol=1e-7)


CASES = [("score", "gkl", False), ("distribution", "kl", False),
         ("score", "lsif", False), ("distribution", "kl", True),
         ("score", "gkl", True)]


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
@pytest.mark.parametrize("form,div,teacher", CASES)
def test_expected_loss_minimized_by_true_posterior(kind, form, div, teacher):
  """E_{x0 ~ p(x0|x_t)} of the TCSM loss is stationary at the true posterior marginals.

  With the data target the loss only sees x0^i, so the minimizer is the posterior
  marginal for any p0. With a teacher target equal to p0's conditionals the same
  holds for the KL distribution form (KL's minimizer in its second argument is the
  mixture); for the score form we use a factorized p0 where conditionals = marginals.
  """
  v, length, sigma = 3, 2, 0.7
  proc, p0 = _setup(kind, v, length, seed=5)
  if teacher and form == "score":
    m = np.random.default_rng(6).dirichlet(np.ones(v), size=length)
    x0s = exact.all_sequences(v, length)
    p0 = np.prod(m[np.arange(length), x0s], -1)
  _, post = exact.posterior(p0, proc, sigma, length)
  marg = exact.position_marginals(post, v, length)
  x0s = jnp.asarray(exact.all_sequences(v, length))
  xts = exact.all_sequences(proc.num_states, length)
  target = jnp.asarray(np.log(exact.conditionals(p0, v, length)), jnp.float32)

  @jax.jit
  def expected(logits, xt, w):
    # Pairs (x0, x_t) that the forward process cannot produce are swapped for a
    # possible one with weight 0, so the loss only ever sees consistent pairs.
    first = jnp.argmax(w > 0)
    x0v = jnp.where((w > 0)[:, None], x0s, x0s[first])
    tg = jnp.where((w > 0)[:, None, None], target, target[first])
    n = x0s.shape[0]
    lg = jnp.broadcast_to(logits, (n,) + logits.shape)
    xt_b = jnp.broadcast_to(xt, x0s.shape)
    per = losses.tcsm_loss(lg, x0v, xt_b, sigma, proc, form=form, divergence=div,
                           target_log_cond=tg if teacher else None)
    return jnp.sum(w * per.sum(-1))

  grad = jax.grad(expected)
  rng = np.random.default_rng(7)
  checked = with_choice = 0
  for t in range(len(xts)):
    w = jnp.asarray(post[t], jnp.float32)
    if post[t].sum() < 0.5:
      continue
    ok = np.asarray(scores.support(proc, jnp.asarray(xts[t]), sigma))
    truth = jnp.asarray(np.where(ok, np.log(np.maximum(marg[t], 1e-30)), 0.0), jnp.float32)
    xt = jnp.asarray(xts[t])
    g = np.asarray(grad(truth, xt, w))
    assert np.abs(g[ok]).max() < 2e-4, (t, g)
    base = float(expected(truth, xt, w))
    bump = truth + jnp.asarray(rng.normal(size=truth.shape) * 0.5, jnp.float32)
    if ok.sum() > length:   # some position has a choice to make
      assert float(expected(bump, xt, w)) > base
      with_choice += 1
    checked += 1
  # p0 has full support and sigma > 0, so every noisy sequence has mass and is checked;
  # a position has a choice wherever it is masked (absorbing) / always (uniform).
  assert checked == proc.num_states ** length
  masked = (xts == proc.mask_id).any(-1) if kind == "absorbing" else np.ones(len(xts))
  assert with_choice == int(masked.sum()) > 0


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_data_target_gkl_score_minimum_value(kind):
  """At the true posterior the expected loss is H(q) + |N|/V + (1/V) sum_N log q.

  Positions whose posterior is determined (|N| = 1) contribute exactly 0.
  """
  v, length, sigma = 3, 2, 1.1
  proc, p0 = _setup(kind, v, length, seed=8)
  _, post = exact.posterior(p0, proc, sigma, length)
  marg = exact.position_marginals(post, v, length)
  x0s = exact.all_sequences(v, length)
  xts = exact.all_sequences(proc.num_states, length)
  for t in range(len(xts)):
    ok = np.asarray(scores.support(proc, jnp.asarray(xts[t]), sigma))
    logits = jnp.asarray(np.where(ok, np.log(np.maximum(marg[t], 1e-30)), 0.0), jnp.float32)
    n = len(x0s)
    per = losses.tcsm_loss(jnp.broadcast_to(logits, (n, length, v)), jnp.asarray(x0s),
                           jnp.broadcast_to(jnp.asarray(xts[t]), (n, length)), sigma, proc)
    got = float((post[t] * np.asarray(per).sum(-1)).sum())
    q = np.where(ok, marg[t], 1.0)
    want = sum(-(q[i] * np.log(q[i])).sum() + ok[i].sum() / v + np.log(q[i]).sum() / v
               for i in range(length) if ok[i].sum() > 1)   # determined positions: 0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_masked_elbo_equals_tcsm_kl_distribution_with_elbo_weighting():
  rng = np.random.default_rng(9)
  v, b, length = 6, 4, 8
  proc = processes.Absorbing(v)
  logits = jnp.asarray(rng.normal(size=(b, length, v)), jnp.float32)
  x0 = jnp.asarray(rng.integers(0, v, (b, length)))
  sigma = jnp.asarray([0.01, 0.5, 2.0, 9.0])
  dsigma = jnp.asarray([1.0, 1.3, 4.0, 0.2])
  xt = proc.sample_forward(jax.random.PRNGKey(0), x0, sigma)
  elbo = losses.masked_elbo(logits, x0, xt, sigma, dsigma, proc.mask_id)
  tcsm = losses.tcsm_loss(logits, x0, xt, sigma, proc, form="distribution", divergence="kl")
  w = losses.time_weight("masked_elbo", sigma, dsigma)
  np.testing.assert_allclose(elbo, w * tcsm.sum(-1), rtol=1e-5)
  assert float(jnp.abs(elbo).sum()) > 0


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_score_entropy_is_generalized_kl(kind):
  rng = np.random.default_rng(10)
  v, b, length = 4, 3, 5
  proc = processes.Uniform(v) if kind == "uniform" else processes.Absorbing(v)
  s = proc.num_states
  x0 = jnp.asarray(rng.integers(0, v, (b, length)))
  sigma, dsigma = jnp.asarray([0.2, 1.0, 3.0]), jnp.asarray([1.0, 2.0, 0.5])
  xt = proc.sample_forward(jax.random.PRNGKey(1), x0, sigma)
  log_score = jnp.asarray(rng.normal(size=(b, length, s)), jnp.float32)
  got = np.asarray(losses.score_entropy(log_score, x0, xt, sigma, dsigma, proc))
  q = np.asarray(proc.rate_matrix())
  want = np.zeros((b, length))
  for bi in range(b):
    k = exact.kernel(proc, float(sigma[bi]))
    for i in range(length):
      a0, x = int(x0[bi, i]), int(xt[bi, i])
      for y in range(s):
        if y != x and q[y, x] > 0:
          ratio = k[a0, y] / k[a0, x]
          want[bi, i] += dsigma[bi] * q[y, x] * float(
              divergences.generalized_kl(ratio, np.exp(float(log_score[bi, i, y]))))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_score_entropy_with_denoiser_score_equals_masked_elbo():
  """SEDD (absorbing, score from the denoiser) == MDLM/MD4 ELBO, pointwise."""
  rng = np.random.default_rng(11)
  v, b, length = 5, 4, 6
  proc = processes.Absorbing(v)
  logits = jnp.asarray(rng.normal(size=(b, length, v)), jnp.float32)
  x0 = jnp.asarray(rng.integers(0, v, (b, length)))
  sigma, dsigma = jnp.asarray([0.05, 0.6, 2.0, 7.0]), jnp.asarray([1.0, 1.5, 3.0, 0.7])
  xt = proc.sample_forward(jax.random.PRNGKey(2), x0, sigma)
  log_p = scores.model_log_probs(logits, proc, xt, sigma)
  log_score = proc.noisy_log_score(log_p, xt, sigma)
  dse = losses.score_entropy(log_score, x0, xt, sigma, dsigma, proc).sum(-1)
  elbo = losses.masked_elbo(logits, x0, xt, sigma, dsigma, proc.mask_id)
  np.testing.assert_allclose(dse, elbo, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_score_entropy_minimized_by_exact_noisy_score(kind):
  v, length, sigma = 3, 2, 0.6
  proc, p0 = _setup(kind, v, length, seed=12)
  jnt = exact.joint(p0, proc, sigma, length)                  # [N0, Nt]
  pt = jnt.sum(0)
  score = exact.noisy_concrete_score(pt, proc.num_states, length)
  x0s = jnp.asarray(exact.all_sequences(v, length))
  xts = exact.all_sequences(proc.num_states, length)

  @jax.jit
  def expected(log_score, xt, w):
    n = x0s.shape[0]
    per = losses.score_entropy(jnp.broadcast_to(log_score, (n,) + log_score.shape), x0s,
                               jnp.broadcast_to(xt, x0s.shape), sigma, 1.0, proc)
    return jnp.sum(w * per.sum(-1))

  for t in range(len(xts)):
    if pt[t] < 1e-9:
      continue
    used = np.asarray(proc.rates_into(jnp.asarray(xts[t]))) > 0
    used &= np.arange(proc.num_states) != xts[t][:, None]
    ls = jnp.asarray(np.where(used, np.log(np.where(used, score[t], 1.0)), 0.0),
                     jnp.float32)
    if not used.any():
      continue
    w = jnp.asarray(jnt[:, t] / pt[t], jnp.float32)
    g = np.asarray(jax.grad(expected)(ls, jnp.asarray(xts[t]), w))
    assert np.abs(g[used]).max() < 1e-4


@hypothesis.given(
    b=st.integers(1, 3), length=st.integers(1, 5), v=st.integers(2, 6),
    log_sigma=st.floats(np.log(1e-6), np.log(50.0)),
    kind=st.sampled_from(["uniform", "absorbing"]), form=st.sampled_from(FORMS),
    div=st.sampled_from(DIVS), bf16=st.booleans(), teacher=st.booleans(),
    seed=st.integers(0, 2 ** 16))
def test_losses_finite_for_all_shapes_dtypes_and_noise_levels(
    b, length, v, log_sigma, kind, form, div, bf16, teacher, seed):
  rng = np.random.default_rng(seed)
  proc = processes.Uniform(v) if kind == "uniform" else processes.Absorbing(v)
  dtype = jnp.bfloat16 if bf16 else jnp.float32
  logits = jnp.asarray(rng.normal(size=(b, length, v)) * 3, dtype)
  x0 = jnp.asarray(rng.integers(0, v, (b, length)), jnp.int32)
  sigma = jnp.full((b,), np.exp(log_sigma), jnp.float32)
  xt = proc.sample_forward(jax.random.PRNGKey(seed), x0, sigma)
  target = jnp.asarray(rng.normal(size=(b, length, v)), dtype) if teacher else None
  out = losses.tcsm_loss(logits, x0, xt, sigma, proc, form=form, divergence=div,
                         target_log_cond=target)
  assert out.shape == (b, length) and out.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(out)))
  grads = jax.grad(lambda lg: losses.tcsm_loss(lg, x0, xt, sigma, proc, form=form,
                                               divergence=div,
                                               target_log_cond=target).sum())(
                                                   logits.astype(jnp.float32))
  assert np.all(np.isfinite(np.asarray(grads)))
  log_p = scores.model_log_probs(logits, proc, xt, sigma)
  dse = losses.score_entropy(proc.noisy_log_score(log_p, xt, sigma), x0, xt, sigma,
                             jnp.ones((b,)), proc)
  assert np.all(np.isfinite(np.asarray(dse)))


def test_bad_inputs_raise_clear_errors():
  proc = processes.Absorbing(4)
  logits = jnp.zeros((2, 3, 4))
  x0 = jnp.zeros((2, 3), jnp.int32)
  with pytest.raises(ValueError, match="x0"):
    losses.tcsm_loss(logits, x0 + 4, x0, 0.5, proc)       # mask id is not clean data
  with pytest.raises(ValueError, match="x_t"):
    losses.tcsm_loss(logits, x0, x0 + 9, 0.5, proc)
  with pytest.raises(ValueError, match="logits"):
    losses.tcsm_loss(jnp.zeros((2, 3, 5)), x0, x0, 0.5, proc)
  with pytest.raises(ValueError, match="form"):
    losses.tcsm_loss(logits, x0, x0, 0.5, proc, form="energy")
  with pytest.raises(ValueError, match="divergence"):
    losses.tcsm_loss(logits, x0, x0, 0.5, proc, divergence="hellinger")
  with pytest.raises(ValueError, match="target_log_cond"):
    losses.tcsm_loss(logits, x0, x0, 0.5, proc, target_log_cond=jnp.zeros((2, 3, 3)))
  with pytest.raises(ValueError, match="sigma_bar"):
    losses.tcsm_loss(logits, x0, x0, -1.0, proc)
  with pytest.raises(ValueError, match="weighting"):
    losses.time_weight("snr", 1.0, 1.0)


def test_which_data_target_objectives_are_bounded_below():
  """With the Monte Carlo data target (a one-hot clean token), the score-form gKL,
  LSIF and Itakura-Saito objectives and the distribution-form IS objective are unbounded
  below: driving unseen tokens' probabilities to 0 lowers them without limit (the
  objectives study's divergent runs). KL (both forms) and the distribution-form gKL
  and LSIF stay bounded. Exact per-position values on one masked position."""
  v = 4
  proc = processes.Absorbing(v)
  x0, xt, sigma = jnp.zeros((1, 1), jnp.int32), jnp.full((1, 1), v), jnp.array([2.0])

  def loss(eps, form, div):
    p = np.array([1 - eps] + [eps / (v - 1)] * (v - 1))
    logits = jnp.log(jnp.asarray(p, jnp.float32))[None, None]
    return float(losses.tcsm_loss(logits, x0, xt, sigma, proc, form=form,
                                  divergence=div)[0, 0])

  bounded = [("score", "kl"), ("distribution", "kl"), ("distribution", "gkl"),
             ("distribution", "lsif")]
  unbounded = [("score", "gkl"), ("score", "lsif"), ("score", "itakura_saito"),
               ("distribution", "itakura_saito")]
  for form, div in bounded:
    vals = [loss(e, form, div) for e in (1e-2, 1e-4, 1e-8)]
    assert min(vals) > -0.51 and abs(vals[-1] - vals[-2]) < 1e-3, (form, div, vals)
  for form, div in unbounded:
    vals = [loss(e, form, div) for e in (1e-2, 1e-4, 1e-8)]
    assert vals[0] > vals[1] > vals[2] and vals[2] < vals[0] - 5, (form, div, vals)


# ------------------------------------------------------------------ chunked loss (memory)


def _objective_cases(processes_, kinds):
  """(name, loss config, process) for every loss path of ``objective.make_loss_fn``."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  out = []
  for pname in processes_:
    for kind in kinds:
      combos = ([(f, d) for f in FORMS for d in DIVS] if kind == "tcsm"
                else [("score", "gkl")])
      if kind == "masked_elbo" and pname != "absorbing":
        continue
      for form, div in combos:
        cfg = ml_collections.ConfigDict(dict(
            kind=kind, form=form, divergence=div, weighting="masked_elbo", t_min=1e-3,
            stratified=True, teacher_weight=0.5 if kind == "tcsm" else 0.0, hamming=1,
            chunk_size=0))
        out.append((f"{pname}/{kind}/{form}/{div}", cfg, pname))
  return out


def _check_chunked_equals_plain(processes_, kinds, chunks, only=None,
                                teacher_weight=0.5):
  """Loss values and gradients w.r.t. the logits, plain vs chunked, through
  ``objective.make_loss_fn`` (data target and a teacher target mixed half/half for
  ``tcsm``), all in one jitted function."""
  from tcsm_jax import objective, schedules  # pylint: disable=g-import-not-at-top
  b, length, v = 3, 8, 11
  rng = np.random.default_rng(7)
  x0 = jnp.asarray(rng.integers(0, v, (b, length)), jnp.int32)
  logits0 = jnp.asarray(rng.normal(size=(b, length, v)) * 2, jnp.float32)
  teacher = jnp.asarray(rng.normal(size=(b, length, v)), jnp.float32)
  sched = schedules.get("log_linear")
  cases = [c for c in _objective_cases(processes_, kinds)
           if only is None or c[0] in only]

  def all_losses(logits):
    out = {}
    for name, cfg, pname in cases:
      proc = processes.get(pname, v)
      for chunk in (0,) + tuple(chunks):
        c = cfg.copy_and_resolve_references()
        c.chunk_size = chunk
        if c.kind == "tcsm":
          c.teacher_weight = teacher_weight
        fn = objective.make_loss_fn(c, proc, sched, lambda p, *_: p,
                                    target_fn=lambda x, key=None: teacher)
        val = lambda lg: fn(lg, x0, jax.random.PRNGKey(3), True)[0]
        out[(name, chunk)] = jax.value_and_grad(val)(logits)
    return out

  got = jax.jit(all_losses)(logits0)
  for name, _, _ in cases:
    plain_v, plain_g = got[(name, 0)]
    assert np.isfinite(float(plain_v)), name
    assert float(jnp.abs(plain_g).max()) > 0, name
    for chunk in chunks:
      val, grad = got[(name, chunk)]
      np.testing.assert_allclose(val, plain_v, rtol=1e-6, atol=1e-6,
                                 err_msg=f"{name} chunk {chunk}")
      np.testing.assert_allclose(grad, plain_g, rtol=1e-6, atol=1e-6,
                                 err_msg=f"{name} chunk {chunk}")


def test_chunked_loss_equals_plain_loss():
  """The cheap default: the score-form gKL with the data target (teacher targets, every
  form x divergence x process, the masked ELBO and SEDD: the slow test below)."""
  _check_chunked_equals_plain(["absorbing"], ["tcsm"], [5],
                              only=("absorbing/tcsm/score/gkl",), teacher_weight=0.0)


def test_chunked_loss_equals_plain_loss_every_form_and_divergence():
  _check_chunked_equals_plain(["absorbing", "uniform"], ["tcsm", "masked_elbo", "sedd"],
                              [5, 24])


def test_chunk_rows():
  assert losses.chunk_rows(24, 0) == 24
  assert losses.chunk_rows(24, 100) == 24
  assert losses.chunk_rows(24, 5) == 4
  assert losses.chunk_rows(24, 8) == 8
  assert losses.chunk_rows(13, 4) == 1
