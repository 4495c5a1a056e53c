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
  with pytest.raises(ValueError, match="eta"):
    remask.log_remask_probs(sig_t, sig_s, "cap", 1.5)
  with pytest.raises(ValueError, match="loop"):
    samplers.sample(jax.random.PRNGKey(0), lambda x, s: jnp.zeros(x.shape + (3,)),
                    processes.Absorbing(3), schedules.get("log_linear"), (1, 2), steps=4,
                    sampler="remdm", remask_schedule="loop", remask_t_on=0.1,
                    remask_t_off=0.5)


# ReMDM's loop as its authors run it: github:kuleshov-group/remdm at f830d65,
# scripts/remdm-loop.sh (t_on = 0.55, t_off = 0.05, alpha_on = 0.9, eta = 0.02, 1,024
# steps, eps = 1e-5) and diffusion.py, ``_ddpm_caching_update``, branch
# ``sampler == 'remdm-loop'``; ``_sample`` walks ``t = linspace(1, eps, steps + 1)`` with
# ``dt = (1 - eps) / steps``. Reimplemented here from that code, in float64.
REF = dict(t_on=0.55, t_off=0.05, alpha_on=0.9, eta=0.02, steps=1024, eps=1e-5)


def _reference_loop_step(t, dt, t_on, t_off, alpha_on, eta):
  """``(alpha_t, alpha_s, rho, unmask)`` of one reference step that starts at ``t``."""
  if t > t_on:
    move_t = 1 - (1 - t) * alpha_on / (1 - t_on)
    move_s = 1 - (1 - t + dt) * alpha_on / (1 - t_on)
  elif t <= t_off:
    move_t = t * (1 - alpha_on) / t_off
    move_s = (t - dt) * (1 - alpha_on) / t_off
  else:               # ReMDM: remask with sigma = eta, unmask with the q_xs_2 coefficient
    return alpha_on, alpha_on, eta, (alpha_on - (1 - eta) * alpha_on) / (1 - alpha_on)
  # MDLM: q_xs = p_x0 (move_t - move_s), mask kept with move_s (normalized by move_t).
  return 1 - move_t, 1 - move_s, 0.0, (move_t - move_s) / move_t


def test_loop_schedule_matches_the_reference_formulas():
  """Per step: alpha at both ends, the remask and the unmask probabilities, against the
  reference's formulas. The two steps that cross t_on and t_off differ on purpose (our
  alpha is the continuous piecewise-linear one, so the step crossing t_on stops at
  alpha_on where the reference overshoots it, and the step crossing t_off leaves the
  held phase without remasking); they are counted, and every other step agrees."""
  import jax.numpy as jnp
  from tcsm_jax.sampling import steps as steps_lib
  r = REF
  base = schedules.LogLinear(eps=1e-3)
  sched = remask.loop_schedule(base, r["t_on"], r["t_off"], r["alpha_on"], alpha_start=0.0)
  ts = jnp.linspace(1.0, r["eps"], r["steps"] + 1)
  t, s = ts[:-1], ts[1:]
  sig_t, sig_s = sched.sigma_bar(t), sched.sigma_bar(s)
  held = remask.loop_held(t, s, r["t_on"], r["t_off"])
  log_rho = remask.log_remask_probs(sig_t, sig_s, "loop", r["eta"], held=held)
  log_unmask, _ = steps_lib.absorbing_unmask_log_prob(sig_t, sig_s, log_rho)
  dt = (1 - r["eps"]) / r["steps"]
  ref = np.array([_reference_loop_step(float(x), dt, r["t_on"], r["t_off"],
                                       r["alpha_on"], r["eta"]) for x in np.asarray(t)])
  ours = np.stack([np.exp(-np.asarray(sig_t, np.float64)),
                   np.exp(-np.asarray(sig_s, np.float64)),
                   np.exp(np.asarray(log_rho, np.float64)),
                   np.exp(np.asarray(log_unmask, np.float64))], -1)
  close = np.isclose(ours, ref, rtol=2e-4, atol=1e-6).all(-1)
  tt, ss = np.asarray(t), np.asarray(s)
  crossing = ((tt > r["t_on"]) & (ss < r["t_on"])) | ((tt > r["t_off"]) & (ss < r["t_off"]))
  assert crossing.sum() == 2
  np.testing.assert_array_equal(close, ~crossing)
  # What the crossing steps do here: stop at alpha_on, and leave it without remasking.
  i_on, i_off = np.nonzero(crossing)[0]
  np.testing.assert_allclose(ours[i_on, 1], r["alpha_on"], rtol=1e-6)
  assert ours[i_off, 2] == 0.0 and ours[i_off, 1] > r["alpha_on"]
  # The phases: 55% of the grid to alpha_on, held for half the steps, the rest to 1.
  assert held.sum() == ((tt <= r["t_on"]) & (ss >= r["t_off"])).sum() > 400
  # The default alpha_start is the model's alpha(1): a finite noise level everywhere.
  default = remask.loop_schedule(base, r["t_on"], r["t_off"], r["alpha_on"])
  np.testing.assert_allclose(float(default.alpha(jnp.float32(1.0))), 1e-3, rtol=1e-4)
  assert np.isfinite(np.asarray(default.sigma_bar(ts))).all()


def test_loop_sampler_follows_the_reference_alpha():
  """The sampler's masked fraction along its path is ``1 - alpha`` of the reference's
  loop (alpha_on = 0.9 from t_on = 0.55 to t_off = 0.05), with and without remasking:
  a binomial count per step. The old loop held the model schedule's alpha(t_on) = 0.45
  (55% masked) through the held phase."""
  proc, sched = processes.Absorbing(3), schedules.get("log_linear")
  w = jax.random.normal(jax.random.PRNGKey(0), (proc.num_states, 3))
  den = lambda x, s: w[x]
  b, length, steps = 64, 64, 40
  ts = np.linspace(1.0, 1e-5, steps + 1)
  # The reference's alpha at each step's end (its step formula with dt = 0).
  alpha_ref = np.array([_reference_loop_step(float(t), 0.0, 0.55, 0.05, 0.9, 0.0)[0]
                        for t in ts[1:]])
  for eta in [0.0, 0.05]:
    _, info = jax.jit(lambda k: samplers.sample(
        k, den, proc, sched, (b, length), steps=steps, sampler="remdm",
        remask_schedule="loop", remask_eta=eta, return_path=True,
        final_denoise=False))(jax.random.PRNGKey(1))
    masked = (np.asarray(info["path"]) == proc.mask_id).mean((1, 2))   # [steps]
    p = 1 - alpha_ref
    n = b * length
    z = (masked - p) / np.sqrt(np.maximum(p * (1 - p), 1e-4) / n)
    assert np.abs(z).max() < 5, (eta, masked[::4], p[::4])
    mid = (ts[1:] < 0.5) & (ts[1:] > 0.1)
    np.testing.assert_allclose(masked[mid], 0.1, atol=0.03)


def test_loop_eta_zero_is_analytic_on_the_loop_schedule():
  """``eta = 0``: the loop is the analytic sampler run on the loop's own alpha schedule
  (bit for bit with the exact draw; the held steps move nothing), not the analytic
  sampler on the model's schedule."""
  proc, sched, _, den = _setup()
  run = lambda **kw: np.asarray(jax.jit(lambda k: samplers.sample(
      k, den, proc, kw.pop("schedule", sched), (256, 2), steps=16, **kw)[0])(
          jax.random.PRNGKey(3)))
  loop = run(sampler="remdm", remask_schedule="loop", remask_eta=0.0)
  on_loop = run(sampler="analytic", schedule=remask.loop_schedule(sched, 0.55, 0.05, 0.9))
  np.testing.assert_array_equal(loop, on_loop)
  assert (loop != run(sampler="analytic")).any()                 # the check can fail
