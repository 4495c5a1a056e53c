"""Guidance: what distribution the tilted sampler draws, against p exp(gamma r) / Z."""

import jax
import jax.numpy as jnp
import numpy as np

from tcsm_jax import exact, processes, schedules
from tcsm_jax.posttrain import guidance, reward
from tcsm_jax.sampling import samplers, steps

V, L, STEPS = 3, 2, 12


def _exact_law(den, proc, sched, tilt):
  """Law of the analytic sampler's output, by enumerating its Markov chain on all
  ``(V + 1)^L`` states: per-step factorized transitions, then the final step."""
  s = proc.num_states
  states = jnp.asarray(exact.all_sequences(s, L))
  n = len(states)
  lp_fn = steps.model_log_probs_fn(den, proc, log_tilt_fn=tilt)
  ts = np.linspace(1.0, 1e-5, STEPS + 1)
  pi = np.zeros(n)
  pi[-1] = 1.0                                             # all mask (highest index)
  for t, u in zip(ts[:-1], ts[1:]):
    sig_t = sched.sigma_bar(jnp.full((n,), t, jnp.float32))
    sig_s = sched.sigma_bar(jnp.full((n,), u, jnp.float32))
    q = np.exp(np.asarray(steps.reverse_transition_log_probs(
        proc, lp_fn(states, sig_t), states, sig_t, sig_s), np.float64))   # [n, L, S]
    trans = np.ones((n, n))
    for m, y in enumerate(np.asarray(states)):
      trans[:, m] = np.prod([q[:, i, y[i]] for i in range(L)], axis=0)
    pi = pi @ trans
  p_end = np.exp(np.asarray(lp_fn(states, sched.sigma_bar(jnp.full((n,), 1e-5))),
                            np.float64))
  law = np.zeros(V ** L)
  for m, x0 in enumerate(exact.all_sequences(V, L)):
    law[m] = (pi * np.prod([p_end[:, i, x0[i]] for i in range(L)], axis=0)).sum()
  return law


def _target(p0, w, gamma):
  r = np.asarray([w[x].sum() for x in exact.all_sequences(V, L)])
  t = p0 * np.exp(gamma * r)
  return t / t.sum()


def test_token_reward_guidance_is_exact_for_a_product_law():
  proc, sched = processes.Absorbing(V), schedules.get("log_linear")
  rng = np.random.default_rng(0)
  marg = rng.dirichlet(np.ones(V), size=L)
  p0 = np.asarray([np.prod([marg[i, x[i]] for i in range(L)])
                   for x in exact.all_sequences(V, L)])
  w = jnp.asarray([0.0, 1.0, -0.5])
  gamma = 1.5
  tilt = guidance.reward_tilt(lambda x0: reward.token_reward_deltas(w, x0), gamma,
                              proc.mask_id)
  law = _exact_law(exact.true_denoiser(p0, proc, L), proc, sched, tilt)
  target = _target(p0, np.asarray(w), gamma)
  assert 0.5 * np.abs(target - p0).sum() > 0.1                 # the tilt matters
  np.testing.assert_allclose(law, target, atol=2e-5)


def test_guidance_on_a_correlated_law_samples_its_computed_law():
  """Correlated p0: the guided sampler is not p0 exp(gamma r) / Z; its exact law (by
  enumeration) is what the sampler draws, and its distance to the target is stated."""
  proc, sched = processes.Absorbing(V), schedules.get("log_linear")
  p0 = exact.random_distribution(np.random.default_rng(3), V, L, 1.0)
  w = jnp.asarray([0.0, 1.0, -0.5])
  gamma = 1.5
  tilt = guidance.reward_tilt(lambda x0: reward.token_reward_deltas(w, x0), gamma,
                              proc.mask_id)
  den = exact.true_denoiser(p0, proc, L)
  law = _exact_law(den, proc, sched, tilt)
  target = _target(p0, np.asarray(w), gamma)
  tv_to_target = 0.5 * np.abs(law - target).sum()
  tv_untilted = 0.5 * np.abs(p0 - target).sum()
  # Closer to the tilted target than the untilted model, but not on it.
  print(f"TV(guided, target) = {tv_to_target:.4f}, TV(untilted, target) = {tv_untilted:.4f}")
  assert 0.005 < tv_to_target < 0.5 * tv_untilted, (tv_to_target, tv_untilted)
  n = 40_000
  x = jax.jit(lambda k: samplers.sample(k, den, proc, sched, (n, L), steps=STEPS,
                                        log_tilt_fn=tilt)[0])(jax.random.PRNGKey(0))
  counts = np.bincount(exact.index_of(np.asarray(x), V), minlength=V ** L)
  assert exact.chisquare_pvalue(counts, law) > 1e-3
  assert exact.chisquare_pvalue(counts, target) < 1e-6


def test_zero_gamma_is_the_plain_sampler():
  proc, sched = processes.Absorbing(V), schedules.get("log_linear")
  p0 = exact.random_distribution(np.random.default_rng(1), V, L, 1.0)
  den = exact.true_denoiser(p0, proc, L)
  tilt = guidance.reward_tilt(lambda x0: reward.token_reward_deltas(
      jnp.ones(V), x0), 0.0, proc.mask_id)
  x = jnp.asarray([[3, 3], [0, 3], [2, 1]])
  sig = jnp.full((3,), 0.7)
  with_tilt = steps.model_log_probs_fn(den, proc, log_tilt_fn=tilt)(x, sig)
  np.testing.assert_array_equal(with_tilt, steps.model_log_probs_fn(den, proc)(x, sig))
