"""ReMDM remasking: eta = 0 is the analytic sampler; the Bayes denoiser keeps p0."""

import jax
import numpy as np
import pytest

from tcsm_jax import exact, processes, schedules
from tcsm_jax.sampling import remask, samplers


def _setup(seed=0, v=3, length=2):
  proc, sched = processes.Absorbing(v), schedules.get("log_linear")
  p0 = exact.random_distribution(np.random.default_rng(seed), v, length, 1.0)
  return proc, sched, p0, exact.true_denoiser(p0, proc, length)


def test_eta_zero_is_the_analytic_sampler():
  proc, sched, _, den = _setup()
  run = lambda **kw: np.asarray(jax.jit(lambda k: samplers.sample(
      k, den, proc, sched, (256, 2), steps=16, **kw)[0])(jax.random.PRNGKey(3)))
  analytic = run(sampler="analytic")
  for kind in ["cap", "rescale"]:
    np.testing.assert_array_equal(
        run(sampler="remdm", remask_schedule=kind, remask_eta=0.0), analytic)
  # ... and eta > 0 does change the draws (the comparison can fail).
  assert (run(sampler="remdm", remask_schedule="cap", remask_eta=0.5) != analytic).any()


@pytest.mark.parametrize("kind,eta", [("cap", 0.5), ("rescale", 0.9), ("loop", 0.3)])
def test_remasking_with_the_bayes_denoiser_keeps_the_data_law(kind, eta):
  """Remasking at rho <= rho_max keeps the forward marginals, so with the exact
  denoiser the samples still follow p0 (TV of 40,000 samples on 9 cells ~ 0.01)."""
  proc, sched, p0, den = _setup(seed=4)
  n = 40_000
  x = jax.jit(lambda k: samplers.sample(k, den, proc, sched, (n, 2), steps=64,
                                        sampler="remdm", remask_schedule=kind,
                                        remask_eta=eta)[0])(jax.random.PRNGKey(5))
  emp = np.bincount(exact.index_of(np.asarray(x), 3), minlength=9) / n
  assert 0.5 * np.abs(emp - p0).sum() < 0.03
  assert 0.5 * np.abs(np.full(9, 1 / 9) - p0).sum() > 0.15       # the check can fail


def test_remask_probabilities_and_loop_grid():
  import jax.numpy as jnp
  sig_t, sig_s = jnp.float32(2.0), jnp.float32(1.0)
  a_t, a_s = np.exp(-2.0), np.exp(-1.0)
  rho_max = min(1.0, (1 - a_s) / a_t)
  np.testing.assert_allclose(np.exp(remask.log_remask_probs(sig_t, sig_s, "cap", 0.02)),
                             min(0.02, rho_max), rtol=1e-5)
  np.testing.assert_allclose(np.exp(remask.log_remask_probs(
      jnp.float32(0.1), jnp.float32(0.05), "rescale", 0.5)),
      0.5 * (-np.expm1(-0.05)) / np.exp(-0.1), rtol=1e-5)
  ts = jnp.linspace(1.0, 1e-5, 11)
  eff = np.asarray(remask.effective_times(ts, "loop", 0.55, 0.05, 1e-5))
  assert (np.diff(eff) <= 0).all() and eff[0] == 1.0 and abs(eff[-1] - 1e-5) < 1e-7
  held = eff[(np.asarray(ts) < 0.55) & (np.asarray(ts) >= 0.05)]
  np.testing.assert_allclose(held, 0.55)
  with pytest.raises(ValueError, match="eta"):
    remask.log_remask_probs(sig_t, sig_s, "cap", 1.5)
  with pytest.raises(ValueError, match="loop"):
    samplers.sample(jax.random.PRNGKey(0), lambda x, s: jnp.zeros(x.shape + (3,)),
                    processes.Absorbing(3), schedules.get("log_linear"), (1, 2), steps=4,
                    sampler="remdm", remask_schedule="loop", remask_t_on=0.1,
                    remask_t_off=0.5)
