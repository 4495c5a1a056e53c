"""The absorbing step law is written once (steps.absorbing_step_log_probs), with one
log(1 - p) (steps.log1m), and every sampler and the start state draw through it."""

import jax
import jax.numpy as jnp
import numpy as np

from tcsm_jax import processes, schedules
from tcsm_jax.processes import log1mexp
from tcsm_jax.sampling import samplers, steps

V, B, L = 5, 4, 6

# Tokens [B, L] (row-major digits) that the code before the single step law (commit
# 79ae1a1: three copies of the law, two log(1 - u) formulas, start_state calling
# jax.random.categorical itself) drew with key PRNGKey(0), 8 steps, the denoiser below.
OLD = {
    "analytic-exact": "244111233113311331111311",
    "analytic-gumbel32": "433233130411213142332111",
    "ancestral-exact": "244111233113311331111311",
    "remdm-cap-exact": "221101113212112341210313",
    "remdm-rescale-exact": "220101133212111341110411",
    "remdm-cap-gumbel32": "334233142314211342140111",
    "first_hitting-exact": "131131241413231012112143",
    "euler-exact": "111144133213111341313123",
    "prior-start-gumbel32": "433233130411213142332111",
    "uniform-analytic-gumbel32": "011000412143144112013200",
}
CASES = {
    "analytic-exact": dict(sampler="analytic"),
    "analytic-gumbel32": dict(sampler="analytic", draw="gumbel32"),
    "ancestral-exact": dict(sampler="ancestral"),
    "remdm-cap-exact": dict(sampler="remdm", remask_schedule="cap", remask_eta=0.3),
    "remdm-rescale-exact": dict(sampler="remdm", remask_schedule="rescale", remask_eta=0.9),
    "remdm-cap-gumbel32": dict(sampler="remdm", remask_schedule="cap", remask_eta=0.3,
                               draw="gumbel32"),
    "first_hitting-exact": dict(sampler="first_hitting"),
    "euler-exact": dict(sampler="euler"),
    "prior-start-gumbel32": dict(sampler="analytic", start="prior", draw="gumbel32"),
    "uniform-analytic-gumbel32": dict(sampler="analytic", draw="gumbel32",
                                      process="uniform"),
}
# start_state(PRNGKey(11), Uniform(5), log_linear, (3, 9), draw="gumbel32") before.
OLD_START = [[2, 4, 2, 4, 2, 4, 1, 2, 1], [2, 3, 2, 1, 2, 0, 3, 4, 1],
             [4, 4, 2, 0, 1, 2, 2, 3, 3]]


def _den(x, s):
  w = jax.random.normal(jax.random.PRNGKey(7), (V + 1, V))
  return w[x] * (1.0 + 0.3 * jnp.tanh(s))[:, None, None]


def _check_cases(names):
  sched = schedules.get("log_linear")
  for name in names:
    kw = dict(CASES[name])
    proc = (processes.Uniform(V) if kw.pop("process", "") == "uniform"
            else processes.Absorbing(V))
    x, _ = samplers.sample(jax.random.PRNGKey(0), _den, proc, sched, (B, L), steps=8, **kw)
    assert "".join(str(t) for t in np.asarray(x).ravel()) == OLD[name], name


def test_samplers_draw_what_they_drew_before_bit_for_bit():
  """Every case above (slow: ten sampler compiles)."""
  _check_cases(CASES)


def test_some_samplers_draw_what_they_drew_before_bit_for_bit():
  """The default run's share: the Gumbel law, the exact remasking step, the start."""
  _check_cases(["analytic-gumbel32", "remdm-cap-exact"])
  sched = schedules.get("log_linear")
  st = samplers.start_state(jax.random.PRNGKey(11), processes.Uniform(V), sched, (3, 9),
                            draw="gumbel32")
  np.testing.assert_array_equal(np.asarray(st), OLD_START)


def test_remask_complement_keeps_its_relative_precision():
  """One step from t = 1 to 1e-5 with remasking: ``1 - u = (1 - a_s - rho a_t) / (1 -
  a_t) ~ 5e-6``. The old ReMDM law took ``log1mexp(log u)`` of a ``u`` rounded near 1
  (relative error ~1e-2 in ``1 - u``); ``log1m`` with the complement keeps ~1e-6."""
  sched = schedules.get("log_linear")
  st, ss = sched.sigma_bar(jnp.float32(1.0)), sched.sigma_bar(jnp.float32(1e-5))
  rho = 0.005
  log_u, log_keep = steps.absorbing_unmask_log_prob(st, ss, jnp.log(jnp.float32(rho)))
  a_t, a_s = np.exp(-np.float64(st)), np.exp(-np.float64(ss))
  want_keep = (-np.expm1(-np.float64(ss)) - rho * a_t) / (-np.expm1(-np.float64(st)))
  assert 1e-6 < want_keep < 1e-5
  np.testing.assert_allclose(np.exp(np.float64(log_keep)), want_keep, rtol=1e-5)
  np.testing.assert_allclose(np.exp(np.float64(log_u)), 1 - want_keep, rtol=1e-6)
  old = np.exp(np.float64(log1mexp(log_u)))
  assert abs(old / want_keep - 1) > 1e-3                        # the old formula's error
  # The law itself: a masked row and an unmasked row, each summing to one.
  lp = jax.nn.log_softmax(jnp.arange(V, dtype=jnp.float32))
  proc = processes.Absorbing(V)
  law = steps.absorbing_step_log_probs(proc, jnp.stack([lp, lp]), jnp.array([V, 2]),
                                       log_u, log_keep, jnp.log(jnp.float32(rho)))
  q = np.exp(np.asarray(law, np.float64))
  np.testing.assert_allclose(q.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(q[0, V], want_keep, rtol=1e-5)
  np.testing.assert_allclose(q[1], [0, 0, 1 - rho, 0, 0, rho], rtol=1e-6)
  # Without remasking: the analytic law, the same complement (1 - a_s) / (1 - a_t).
  _, keep0 = steps.absorbing_unmask_log_prob(st, ss)
  np.testing.assert_allclose(np.exp(np.float64(keep0)),
                             -np.expm1(-np.float64(ss)) / -np.expm1(-np.float64(st)),
                             rtol=1e-5)
