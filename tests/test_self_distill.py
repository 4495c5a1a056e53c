"""Self-distillation through TCSM (``tcsm_jax/posttrain/self_distill.py``): with the
Bayes-optimal teacher on an enumerable space (V = 3, L = 3), the target is unbiased for
the teacher's k-step law, and one step of the student that minimizes the project's loss
reproduces that law's per-position marginals (chi-square)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tcsm_jax import exact, losses, processes, schedules
from tcsm_jax.posttrain import self_distill
from tcsm_jax.sampling import steps as steps_lib

V, L, K = 3, 3, 3
T, S = 1.0, 0.02


@pytest.fixture(scope="module")
def setup():
  proc, sched = processes.Absorbing(V), schedules.get("log_linear")
  p0 = exact.random_distribution(np.random.default_rng(5), V, L, concentration=0.1)
  teacher = steps_lib.model_log_probs_fn(exact.true_denoiser(p0, proc, L), proc)
  ts = np.linspace(T, S, K + 1)
  sig = np.asarray(sched.sigma_bar(jnp.asarray(ts, jnp.float32)), np.float64)
  return proc, sched, teacher, sig


def _k_step_law(proc, teacher, sig, x_t, k):
  """``T_k(x_s | x_t)`` over all ``(V + 1)^L`` states, by enumeration (float64)."""
  states = exact.all_sequences(V + 1, L)                           # [64, L]
  n = len(states)
  dist = np.zeros(n)
  dist[exact.index_of(np.asarray(x_t)[None], V + 1)[0]] = 1.0
  for j in range(k):
    st, ss = (jnp.full((n,), sig[i], jnp.float32) for i in (j, j + 1))
    lp = teacher(jnp.asarray(states), st)
    rt = np.asarray(steps_lib.reverse_transition_log_probs(proc, lp, jnp.asarray(states),
                                                           st, ss), np.float64)
    # P[x, y] = prod_i rt[x, i, y_i]
    logp = sum(rt[:, i, states[:, i]] for i in range(L))            # [64, 64]
    dist = dist @ np.exp(logp)
  return states, dist


def _marginals(states, dist):
  return np.stack([np.bincount(states[:, i], weights=dist, minlength=V + 1)
                   for i in range(L)])                               # [L, V + 1]


def test_one_student_step_reproduces_the_teachers_k_step_law(setup):
  """From the all-mask state (with one position revealed, the Bayes teacher's k-step
  marginals equal its one-step law: the tower property over one other position)."""
  proc, sched, teacher, sig = setup
  x_t = np.asarray((V, V, V))
  states, law = _k_step_law(proc, teacher, sig, x_t, K)
  np.testing.assert_allclose(law.sum(), 1.0, atol=1e-6)
  marg = _marginals(states, law)
  masked = x_t == V
  u = float(np.exp(steps_lib.absorbing_unmask_log_prob(sig[0], sig[-1])[0]))
  np.testing.assert_allclose(marg[masked, V], 1.0 - u, atol=1e-5)   # reveal: schedule's
  q = marg[masked, :V] / u                                          # the exact target
  one_step = np.exp(np.asarray(teacher(jnp.asarray(x_t[None]),
                                       jnp.full((1,), sig[0], jnp.float32))[0]))
  assert np.abs(q - one_step[masked]).max() > 0.01       # k steps differ from one step

  # The target estimator is unbiased for q at every masked position.
  n = 20_000
  xb = jnp.asarray(np.tile(x_t, (n, 1)), jnp.int32)
  path = jnp.asarray(np.tile(sig[:, None], (1, n)), jnp.float32)
  log_q = jax.jit(lambda k: self_distill.k_step_target(k, teacher, proc, xb, path))(
      jax.random.PRNGKey(0))
  qh = np.exp(np.asarray(log_q, np.float64))[:, masked]              # [n, m, V]
  mean, se = qh.mean(0), qh.std(0) / np.sqrt(n)
  assert (np.abs(mean - q) < 5 * se + 1e-6).all(), (mean, q, se)
  assert (np.abs(mean - one_step[masked]) > 5 * se).any()     # the test can tell

  # The student that minimizes the project's loss (kl, both forms) on these targets is
  # q: tabular logits at x_t, trained with losses.tcsm_loss.
  nf = 4000
  sigma = jnp.full((nf,), sig[0], jnp.float32)
  fit = qh[:nf].mean(0)
  for form in ("distribution", "score"):
    def loss_fn(theta):
      logits = jnp.broadcast_to(theta, (nf, L, V))
      per = losses.tcsm_loss(logits, jnp.zeros((nf, L), jnp.int32), xb[:nf], sigma, proc,
                             form=form, divergence="kl", target_log_posterior=log_q[:nf])
      return per.sum(-1).mean()
    opt = optax.adam(0.1)
    theta = jnp.zeros((L, V))
    state = opt.init(theta)

    @jax.jit
    def step(theta, state):
      g = jax.grad(loss_fn)(theta)
      upd, state = opt.update(g, state)
      return optax.apply_updates(theta, upd), state
    for _ in range(300):
      theta, state = step(theta, state)
    p_student = np.asarray(jax.nn.softmax(theta, -1), np.float64)[masked]
    np.testing.assert_allclose(p_student, fit / fit.sum(-1, keepdims=True), atol=2e-3)

  # One student step (the project's absorbing step) from x_t: its law is the product of
  # the teacher's k-step marginals (chi-square over the 64 states).
  student_lp = np.full((L, V), -np.inf)
  student_lp[masked] = np.log(p_student)
  student_lp[~masked] = np.where(np.arange(V) == x_t[~masked][:, None], 0.0, -np.inf)
  xs = steps_lib.absorbing_step(jax.random.PRNGKey(1), proc,
                                jnp.broadcast_to(jnp.asarray(student_lp, jnp.float32),
                                                 (n, L, V)), xb, sig[0], sig[-1])
  counts = np.bincount(exact.index_of(np.asarray(xs), V + 1), minlength=(V + 1) ** L)
  product = np.array([np.prod([marg[i, y[i]] for i in range(L)]) for y in states])
  assert exact.chisquare_pvalue(counts, product) > 1e-3
  # ... which is the M-projection: the k-step law itself has correlations no one-step
  # factorized law holds (at these coarse steps).
  assert 0.5 * np.abs(product - law).sum() > 0.005


def test_k_equal_one_is_the_teacher(setup):
  proc, sched, teacher, sig = setup
  xb = jnp.asarray([[V, V, V], [V, 2, V]], jnp.int32)
  path = jnp.asarray(np.tile(sig[[0, -1]][:, None], (1, 2)), jnp.float32)
  log_q = self_distill.k_step_target(jax.random.PRNGKey(0), teacher, proc, xb, path)
  np.testing.assert_allclose(np.asarray(log_q)[np.asarray(xb) == V],
                             np.asarray(teacher(xb, path[0]))[np.asarray(xb) == V],
                             atol=1e-5)
  assert np.asarray(log_q)[1, 1, 2] == 0 and np.isneginf(np.asarray(log_q)[1, 1, 0])
