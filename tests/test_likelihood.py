"""NLL bound: Monte Carlo estimator vs exact enumeration, and bound >= the model's NLL.

Two references on a tiny problem (``V = 3``, ``L = 2``):

* ``_exact_bound``: the library's bound itself (``likelihood.integrand``, ``prior_term``
  and the reconstruction term) with the expectation over ``x_t`` enumerated and the
  time integral by Gauss-Legendre quadrature, i.e. ``nll_bound`` without Monte Carlo.
* ``_reverse_ctmc_nll``: independent of the bound: the model's own ``-log p_theta(x0)``,
  obtained by solving its reverse CTMC on the joint space of all ``S^L`` sequences
  (generator from the denoiser's concrete scores, float64 kernels from scipy's expm,
  4th-order Magnus steps of the Kolmogorov forward equation from ``t = 1`` to ``0``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.special

from tcsm_jax import exact, likelihood, processes, schedules, scores
from tcsm_jax.data import synthetic

V, L = 3, 2


def _setup(kind, v=V, length=L, seed=0):
  proc = processes.Uniform(v) if kind == "uniform" else processes.Absorbing(v)
  p0 = exact.random_distribution(np.random.default_rng(seed), v, length, 1.0)
  return proc, p0


def _rate_matrix64(proc):
  """float64 ``Q`` whose rows sum to exactly 0."""
  q = np.asarray(proc.rate_matrix(), np.float64)
  q = q - np.diag(np.diag(q))
  return q - np.diag(q.sum(1))


def _kernels64(proc, sigma):
  """``[T, S, S]`` float64 ``expm(sigma Q)`` for ``sigma [T]``.

  Both structured rate matrices satisfy ``Q^2 = -Q`` (checked), so the exponential
  series sums to ``I + (1 - exp(-sigma)) Q`` exactly, zeros included; the closed forms
  of ``processes.py`` are not used.
  """
  q = _rate_matrix64(proc)
  np.testing.assert_allclose(q @ q, -q, atol=1e-12)
  sigma = np.asarray(sigma, np.float64)[:, None, None]
  return np.eye(len(q)) - np.expm1(-sigma) * q


def _seq_index(x_t, num_states):
  return jnp.sum(x_t * num_states ** jnp.arange(x_t.shape[-1] - 1, -1, -1), -1)


def _table_denoiser(proc, seed, scale=1.5):
  """A deliberately non-optimal denoiser: random tables of the whole ``x_t`` and ``t``.

  ``logits = A[x_t] + B[x_t] tanh(sigma) + log P(y, x_t^i)``; the likelihood term makes
  ``p(y != x_t^i | x_t) = O(sigma)`` for the uniform process, without which the bound
  is infinite (``int dt / t``) and the comparison empty.
  """
  n = proc.num_states ** L
  rng = np.random.default_rng(seed)
  a = jnp.asarray(rng.normal(size=(n, L, V)) * scale, jnp.float32)
  b = jnp.asarray(rng.normal(size=(n, L, V)) * scale, jnp.float32)

  def fn(x_t, sigma):
    idx = _seq_index(x_t, proc.num_states)
    lik = proc.likelihood_log_probs(x_t, sigma)
    return (a[idx] + b[idx] * jnp.tanh(sigma)[:, None, None]
            + jnp.where(lik > -jnp.inf, lik, 0.0))

  return fn


def _perturbed_denoiser(p0, proc, seed, scale=0.3):
  """The Bayes-optimal denoiser plus a random table of ``(x_t, t)``: near-optimal."""
  true = exact.true_denoiser(p0, proc, L)
  n = proc.num_states ** L
  a = jnp.asarray(np.random.default_rng(seed).normal(size=(n, L, V)) * scale, jnp.float32)

  def fn(x_t, sigma):
    return true(x_t, sigma) + a[_seq_index(x_t, proc.num_states)] * (
        1.0 + jnp.tanh(sigma))[:, None, None]

  return fn


def _time_nodes(nodes=24, panels=8):
  """Gauss-Legendre nodes/weights on ``[0, 1]`` in geometric panels (dense near 0)."""
  edges = np.concatenate([[0.0], np.geomspace(1e-7, 1.0, panels)])
  gx, gw = np.polynomial.legendre.leggauss(nodes)
  ts = [a + (b - a) * (gx + 1) / 2 for a, b in zip(edges[:-1], edges[1:])]
  ws = [(b - a) / 2 * gw for a, b in zip(edges[:-1], edges[1:])]
  return np.concatenate(ts), np.concatenate(ws)


def _exact_bound(x0s, proc, sched, denoise, nodes=24):
  """``[n]`` library bound (recon + diffusion + prior) per ``x0s [n, L]``, no MC."""
  x0s = np.asarray(x0s).reshape(-1, L)
  xts = exact.all_sequences(proc.num_states, L)
  nt, n0 = len(xts), len(x0s)
  ts, ws = _time_nodes(nodes)
  sig = np.asarray(sched.sigma_bar(jnp.asarray(ts, jnp.float32)), np.float64)
  # Weights p(x_t | x0) from float64 kernels: [T, n0, nt].
  kern = _kernels64(proc, sig)
  wts = np.prod(kern[:, x0s[:, None, :], xts[None, :, :]], -1)
  rows = len(ts) * n0 * nt
  x0_b = jnp.asarray(np.broadcast_to(x0s[None, :, None], (len(ts), n0, nt, L)).reshape(
      rows, L))
  xt_b = jnp.asarray(np.broadcast_to(xts[None, None], (len(ts), n0, nt, L)).reshape(
      rows, L))
  t_b = jnp.asarray(np.repeat(ts, n0 * nt), jnp.float32)

  @jax.jit
  def integrand(x0, x_t, t):
    sigma, dsigma = sched(t)
    return likelihood.integrand(denoise(x_t, sigma), x0, x_t, sigma, dsigma, proc)

  val = np.asarray(integrand(x0_b, xt_b, t_b), np.float64).reshape(wts.shape)
  diffusion = np.einsum("t,tnx->n", ws, np.where(wts > 0, wts * val, 0.0))
  prior = np.asarray(likelihood.prior_term(jnp.asarray(x0s), proc, sched.sigma_bar(1.0)),
                     np.float64)
  with jax.ensure_compile_time_eval():
    sig0 = float(sched.sigma_bar(0.0))
  recon = np.zeros(n0)
  if sig0 > 0:   # E_{x_t ~ P_{sigma(0)}(x0, .)} -log p_theta(x0 | x_t), enumerated
    s0 = jnp.full((nt,), sig0)
    lp = np.asarray(scores.model_log_probs(denoise(jnp.asarray(xts), s0), proc,
                                           jnp.asarray(xts), s0), np.float64)
    w0 = np.prod(_kernels64(proc, [sig0])[0][x0s[:, None, :], xts[None]], -1)
    nll0 = -lp[:, np.arange(L), x0s].sum(-1).T                       # [n0, nt]
    recon = np.where(w0 > 0, w0 * nll0, 0.0).sum(-1)
  return diffusion + prior + recon


def _model_probs64(proc, logits, kern, xs):
  """Support-masked ``p_theta(x0^i = a | x)`` ``[T, n, L, V]`` and ``P(a, x^i)``."""
  col = np.moveaxis(kern[:, :V][:, :, xs], 1, -1)                    # [T, n, L, V]
  lg = np.where(col > 0, logits, -np.inf)
  return np.exp(lg - scipy.special.logsumexp(lg, -1, keepdims=True)), col


def _reverse_generators(proc, sched, denoise, ts):
  """``[T, n, n]`` reverse-time generators on all ``n = S^L`` sequences at times ``ts``.

  ``R(x -> x^{i<-y}) = dsigma Q[y, x^i] sum_a p_theta(a | x) P(a, y) / P(a, x^i)``,
  computed in float64 from the denoiser's logits (independent of ``processes``' closed
  forms, ``noisy_log_score`` and ``reverse_rates``).
  """
  s = proc.num_states
  xs = exact.all_sequences(s, L)
  n = len(xs)
  q = _rate_matrix64(proc)
  sig, dsig = (np.asarray(a, np.float64) for a in sched(jnp.asarray(ts, jnp.float32)))
  logits = jax.jit(denoise)(jnp.asarray(np.tile(xs, (len(ts), 1))),
                            jnp.asarray(np.repeat(sig, n), jnp.float32))
  kern = _kernels64(proc, sig)
  probs, col = _model_probs64(proc, np.asarray(logits, np.float64).reshape(
      len(ts), n, L, V), kern, xs)
  ratio = np.where(col > 0, probs / np.where(col > 0, col, 1.0), 0.0)
  score = np.einsum("tnla,tas->tnls", ratio, kern[:, :V])            # [T, n, L, S]
  gen = np.zeros((len(ts), n, n))
  for i in range(L):
    for y in range(s):
      nb = xs.copy()
      nb[:, i] = y
      rate = dsig[:, None] * q[y, xs[:, i]][None] * score[:, :, i, y]
      gen[:, np.arange(n), exact.index_of(nb, s)] += np.where(y != xs[:, i], rate, 0.0)
  return gen - gen.sum(-1)[..., None] * np.eye(n)


def _time_grid(sched, steps, t_min=1e-9):
  """``[steps + 1]`` times from 1 down to ``t_min``, equally spaced in
  ``m(t) = log(expm1(sigma_bar(t))) + 10 t``: the reverse rates scale like
  ``dsigma / (1 - exp(-sigma))`` (``1/t`` near 0, ``dsigma`` at large noise), so every
  step carries about the same integrated rate."""
  fine = np.unique(np.concatenate([np.geomspace(t_min, 1e-2, 4000),
                                   np.linspace(1e-2, 1.0, 4000)]))
  sig = np.asarray(sched.sigma_bar(jnp.asarray(fine, jnp.float32)), np.float64)
  m = np.log(np.expm1(np.maximum(sig, 1e-30))) + 10.0 * fine
  m = np.maximum.accumulate(m)
  return np.interp(np.linspace(m[-1], m[0], steps + 1), m, fine)


def _reverse_ctmc_nll(proc, sched, denoise, steps=160):
  """``[V^L]`` exact ``-log p_theta(x0)`` of the model's reverse CTMC, every clean x0.

  Starts from the model's prior ``prod_i (1/V) sum_a P_1(a, x^i)`` at ``t = 1``, steps
  the Kolmogorov forward equation ``dp/d(-t) = p R(t)`` down to ``t = 1e-9`` with
  4th-order Magnus steps (``_time_grid``), then applies the model's final denoising
  step ``p_theta(x0 | x_{t=0})`` when ``sigma_bar(0) > 0``. Accurate to ~1e-5 nats (the
  optimal-denoiser case checks it against a closed form).
  """
  s = proc.num_states
  xs = exact.all_sequences(s, L)
  grid = _time_grid(sched, steps)
  h = grid[:-1] - grid[1:]
  c = np.sqrt(3.0) / 6.0
  gens = _reverse_generators(proc, sched, denoise, np.concatenate(
      [grid[:-1] - h * (0.5 - c), grid[:-1] - h * (0.5 + c)]))
  a1, a2 = np.split(gens, 2)               # a1: the earlier Gauss point in reverse time
  h = h[:, None, None]
  steps = scipy.linalg.expm(h / 2 * (a1 + a2) + np.sqrt(3.0) / 12 * h ** 2
                            * (a1 @ a2 - a2 @ a1))
  prior = _kernels64(proc, [float(sched.sigma_bar(1.0))])[0][:V].mean(0)
  p = np.prod(prior[xs], -1)
  for step in steps:
    p = p @ step
  x0s = exact.all_sequences(V, L)
  sig0 = float(sched.sigma_bar(0.0))
  if sig0 > 0:
    lg = np.asarray(denoise(jnp.asarray(xs), jnp.full((len(xs),), sig0, jnp.float32)),
                    np.float64)
    probs, _ = _model_probs64(proc, lg[None], _kernels64(proc, [sig0]), xs)
    final = np.prod(probs[0][:, np.arange(L), x0s], -1)            # [n, V^L]
    return -np.log(p @ final)
  return -np.log(p[exact.index_of(x0s, s)])


def _optimal_model(p0, proc, sched):
  """``(nll, bound)`` ``[V^L]`` of the Bayes-optimal denoiser, in closed form.

  Its reverse rates are the exact time reversal of the forward process, but started at
  the model's prior ``pi`` instead of the true ``p_1``: with ``r = pi(x_1) / p_1(x_1)``,
  ``x_1 ~ P_1(x0, .)``, ``p_theta(x0) = p0(x0) E[r]`` and the bound is
  ``-log p0(x0) - E[log r]`` (gap ``log E r - E log r >= 0``, 0 when ``pi = p_1``).
  """
  k1 = _kernels64(proc, [float(sched.sigma_bar(1.0))])[0]
  xs = exact.all_sequences(proc.num_states, L)
  x0s = exact.all_sequences(V, L)
  cond = np.prod(k1[x0s[:, None, :], xs[None]], -1)                  # [V^L, S^L]
  pi = np.prod(k1[:V].mean(0)[xs], -1)
  ok = cond > 0
  r = np.where(ok, pi / np.where(ok, p0 @ cond, 1.0), 1.0)
  return (-np.log(p0) - np.log((cond * r).sum(-1)),
          -np.log(p0) - (cond * np.log(r)).sum(-1))


CASES = [("absorbing", "log_linear", dict(eps=1e-4)),
         ("absorbing", "cosine", dict(eps=1e-2)),
         ("uniform", "linear", dict(sigma_max=12.0)),
         ("uniform", "geometric", dict(sigma_min=1e-3, sigma_max=12.0))]


@pytest.mark.parametrize("kind,name,kw", CASES, ids=[c[0] + "-" + c[1] for c in CASES])
@pytest.mark.parametrize("model", ["table", "perturbed", "optimal"])
def test_bound_is_above_the_models_exact_nll(kind, name, kw, model):
  """NLL bound >= -log p_theta(x0) of the model's own reverse CTMC, for every x0.

  Non-optimal denoisers (a random table of (x_t, t); the optimum plus a random table)
  must leave a gap >= 0; for the Bayes-optimal one the gap is exactly the prior
  mismatch (``_optimal_model``; ~0 unless the schedule ends at a large eps).
  """
  proc, p0 = _setup(kind, seed=3)
  sched = schedules.get(name, **kw)
  denoise = {"table": lambda: _table_denoiser(proc, 0),
             "perturbed": lambda: _perturbed_denoiser(p0, proc, 1),
             "optimal": lambda: exact.true_denoiser(p0, proc, L)}[model]()
  x0s = exact.all_sequences(V, L)
  nll = _reverse_ctmc_nll(proc, sched, denoise)
  bound = _exact_bound(x0s, proc, sched, denoise)
  gap = bound - nll
  if model == "optimal":
    # The closed form assumes an exact last step; with sigma_bar(0) > 0 the model's
    # last step is the factorized posterior, O(1e-4) nats away at sigma_bar(0) = 1e-3.
    atol = 1e-5 if float(sched.sigma_bar(0.0)) == 0.0 else 1e-4
    want_nll, want_bound = _optimal_model(p0, proc, sched)
    np.testing.assert_allclose(nll, want_nll, atol=atol)   # the CTMC solver is exact
    np.testing.assert_allclose(bound, want_bound, atol=atol)
    assert np.all(gap > -1e-5), gap
  else:
    assert np.all(gap > -1e-4), gap
    assert gap.max() > 1e-3, gap   # non-optimal models do pay for it


@pytest.mark.parametrize("kind", ["absorbing", "uniform"])
def test_mc_bound_matches_exact_enumeration(kind):
  """``nll_bound``'s Monte Carlo estimate agrees with ``_exact_bound`` (no MC)."""
  proc, p0 = _setup(kind)
  sched = schedules.get("log_linear") if kind == "absorbing" else schedules.get(
      "geometric", sigma_min=1e-3, sigma_max=8.0)            # geometric: recon term too
  denoise = _table_denoiser(proc, 1)
  x0 = np.array([1, 2])
  want = _exact_bound(x0[None], proc, sched, denoise)[0]
  n = 4000
  out = jax.jit(lambda k: likelihood.nll_bound(
      k, denoise, jnp.tile(jnp.asarray(x0)[None], (n, 1)), proc, sched, num_t=8))(
          jax.random.PRNGKey(0))
  got = np.asarray(out["bound"])
  se = got.std() / np.sqrt(n)
  assert abs(got.mean() - want) < 4 * se + 1e-3, (got.mean(), want, se)


@pytest.mark.parametrize("kind", ["absorbing", "uniform"])
def test_bound_with_true_denoiser_is_tight(kind):
  """With the Bayes-optimal denoiser the bound is ``-log p0(x0) - E[log r]`` exactly
  (``_optimal_model``; within ``L eps log V`` of ``-log p0`` for the absorbing schedule),
  and the Monte Carlo estimator agrees with it within its standard error.
  """
  proc, p0 = _setup(kind, seed=3)
  sched = schedules.get("log_linear") if kind == "absorbing" else schedules.get(
      "linear", sigma_max=12.0)
  denoise = exact.true_denoiser(p0, proc, L)
  x0s = exact.all_sequences(V, L)
  ex = _exact_bound(x0s, proc, sched, denoise)
  np.testing.assert_allclose(ex, _optimal_model(p0, proc, sched)[1], atol=1e-5)
  slack = L * 1e-3 * np.log(V) if kind == "absorbing" else 1e-5
  assert np.all(np.abs(ex + np.log(p0)) < slack), ex + np.log(p0)
  reps = 400
  x = jnp.asarray(np.repeat(x0s, reps, 0))
  out = jax.jit(lambda k: likelihood.nll_bound(k, denoise, x, proc, sched, num_t=16))(
      jax.random.PRNGKey(2))
  b = np.asarray(out["bound"]).reshape(len(x0s), reps)
  mean, var = b.mean(1), b.var(1) / reps
  gap, gap_se = float((p0 * (mean - ex)).sum()), float(np.sqrt((p0 ** 2 * var).sum()))
  assert abs(gap) < 4 * gap_se + 1e-3, (gap, gap_se)


def test_prior_term_closed_forms():
  proc = processes.Absorbing(27)
  sched = schedules.get("log_linear", eps=1e-3)
  x0 = jnp.zeros((1, 10), jnp.int32)
  got = float(likelihood.prior_term(x0, proc, sched.sigma_bar(1.0))[0])
  np.testing.assert_allclose(got, 10 * 1e-3 * np.log(27), rtol=2e-3)
  uni = processes.Uniform(5)
  s = 2.0
  k = exact.kernel(uni, s)[0]
  np.testing.assert_allclose(float(likelihood.prior_term(jnp.zeros((1, 1), jnp.int32),
                                                         uni, s)[0]),
                             (k * np.log(k * 5)).sum(), rtol=1e-4)
  dense = processes.Dense(np.asarray(proc.rate_matrix()), vocab_size=27)
  np.testing.assert_allclose(np.exp(dense.prior_log_probs(1.3)),
                             np.exp(proc.prior_log_probs(1.3)), atol=1e-6)


def test_summary_statistics():
  rep = likelihood.summarize(np.array([10.0, 12.0, 14.0]), np.zeros(3), seq_len=4)
  np.testing.assert_allclose(rep.nats_per_token, 3.0)
  np.testing.assert_allclose(rep.stderr, np.std([2.5, 3.0, 3.5], ddof=1) / np.sqrt(3))
  np.testing.assert_allclose(rep.bits_per_token, 3.0 / np.log(2))
  np.testing.assert_allclose(rep.perplexity, np.exp(3.0))


def test_markov_chain_entropy_is_exact():
  chain = synthetic.MarkovChain.random(3, order=2, concentration=0.5, seed=4)
  length = 4
  seqs = exact.all_sequences(3, length)
  lp = chain.log_prob(seqs)
  np.testing.assert_allclose(scipy.special.logsumexp(lp), 0.0, atol=1e-9)
  h = -(np.exp(lp) * lp).sum()
  np.testing.assert_allclose(chain.chunk_entropy(length), h, rtol=1e-9)
  # Samples follow the chain: empirical bigram-given-context frequencies.
  path = chain.sample(200_000, seed=1)
  ctx = path[:-2] * 3 + path[1:-1]
  for s in range(9):
    sel = path[2:][ctx == s]
    freq = np.bincount(sel, minlength=3) / len(sel)
    np.testing.assert_allclose(freq, chain.trans[s], atol=0.02)


def test_evaluate_sharded_over_eight_devices_equals_one_device():
  from tcsm_jax.training import partition
  assert jax.device_count() == 8
  proc, sched = processes.Absorbing(5), schedules.get("log_linear")
  w = jnp.asarray(np.random.default_rng(2).normal(size=(6, 5)), jnp.float32)
  denoise = lambda x_t, sigma: w[x_t] * jnp.exp(-sigma)[:, None, None]
  batches = [np.random.default_rng(i).integers(0, 5, (16, 6)) for i in range(3)]
  one = likelihood.evaluate(jax.random.PRNGKey(0), denoise, batches, proc, sched, 4)
  mesh = partition.make_mesh(1)
  w8 = jax.device_put(w, partition.replicated(mesh))
  eight = likelihood.evaluate(jax.random.PRNGKey(0),
                              lambda p, x_t, s: p[x_t] * jnp.exp(-s)[:, None, None],
                              batches, proc, sched, 4, params=w8,
                              batch_sharding=partition.batch_sharding(mesh))
  assert one.num_sequences == eight.num_sequences == 48
  np.testing.assert_allclose(eight.nats_per_token, one.nats_per_token, rtol=1e-5)
  np.testing.assert_allclose(eight.stderr, one.stderr, rtol=1e-4)
