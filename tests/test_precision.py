"""float32 closed forms against float64 references (numpy) at small noise and small steps.

The analytic (Tweedie) reverse step and the kernels of ``Uniform``/``Absorbing`` are
evaluated in float32 on the grids a sampler with 10^4 steps visits, and compared with
the same formulas evaluated in float64 from the *same* float32 inputs (noise levels and
denoiser log-probabilities), so only the arithmetic of the library is under test.

Tolerances: probabilities within 1e-6 absolute; relative error of every positive
probability within 1e-5 (a float32 log-probability of size ``|l|`` cannot hold a
probability to better than about ``1.2e-7 |l|`` relative); log-probabilities within
``5e-7 max(1, |log p|)`` (a few ulps). The forms ``1 - exp(-sigma)`` and ``a_s - a_t``
computed directly miss these by orders of magnitude (up to 1e-4 absolute, 100%
relative for the absorbing step at the end of a cosine schedule).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from tcsm_jax import processes, sampling, schedules

STEPS = 10_000


def _grid(name, **kw):
  """``(sigma_t, sigma_s)`` float32 ``[STEPS]``: consecutive noise levels of a sampler."""
  sched = schedules.get(name, **kw)
  ts = jnp.linspace(1.0, 1e-5, STEPS + 1)
  return np.asarray(sched.sigma_bar(ts[:-1])), np.asarray(sched.sigma_bar(ts[1:]))


def _log_probs(seed, n, v):
  rng = np.random.default_rng(seed)
  return np.asarray(jax.nn.log_softmax(jnp.asarray(rng.normal(size=(n, v)) * 2,
                                                   jnp.float32)))


def _check(got_log, want, what):
  """Compares float32 log-probabilities with float64 probabilities (see module doc)."""
  got_log = np.asarray(got_log, np.float64)
  got = np.exp(got_log)
  assert np.array_equal(got == 0, want == 0), what          # same zero pattern
  abs_err = np.abs(got - want).max()
  pos = want > 0
  rel_err = (np.abs(got - want)[pos] / want[pos]).max()
  log_err = (np.abs(got_log[pos] - np.log(want[pos]))
             / np.maximum(1.0, np.abs(np.log(want[pos])))).max()
  assert abs_err <= 1e-6, (what, "absolute", abs_err)
  assert rel_err <= 1e-5, (what, "relative", rel_err)
  assert log_err <= 5e-7, (what, "log", log_err)


def _absorbing_step_f64(logp, sigma_t, sigma_s):
  """``[n, V + 1]`` p(x_s | x_t = mask) in float64."""
  p = np.exp(logp.astype(np.float64))
  st, ss = sigma_t.astype(np.float64)[:, None], sigma_s.astype(np.float64)[:, None]
  unmask = (np.exp(-ss) - np.exp(-st)) / (1.0 - np.exp(-st))   # exact enough in f64
  return np.concatenate([p * unmask, 1.0 - unmask], -1)


def _uniform_step_f64(logp, x_t, sigma_t, sigma_s, v):
  """``[n, V]`` sum_a p(a) P_s(a, z) P_{s->t}(z, x_t) / P_t(a, x_t), float64 matrices."""
  p = np.exp(logp.astype(np.float64))
  st, ss = sigma_t.astype(np.float64), sigma_s.astype(np.float64)

  def kern(s):                                            # [n, V, V]
    return (np.exp(-s)[:, None, None] * np.eye(v)
            + (-np.expm1(-s))[:, None, None] / v)

  k_t, k_s, k_ts = kern(st), kern(ss), kern(st - ss)
  n = len(x_t)
  col_t = k_t[np.arange(n), :, x_t]                        # P_t(a, x_t)   [n, V]
  col_ts = k_ts[np.arange(n), :, x_t]                      # P_{s->t}(z, x_t)
  probs = np.einsum("na,naz->nz", p / col_t, k_s) * col_ts
  return probs / probs.sum(-1, keepdims=True)


@pytest.mark.parametrize("name", ["log_linear", "cosine"])
def test_absorbing_analytic_step_float32_matches_float64(name):
  v = 5
  proc = processes.Absorbing(v)
  st, ss = _grid(name)
  assert np.all(st > ss)                                   # the grid is resolved
  logp = _log_probs(0, STEPS, v)
  x_t = jnp.full((STEPS,), proc.mask_id)
  got = sampling.reverse_transition_log_probs(proc, jnp.asarray(logp), x_t,
                                              jnp.asarray(st), jnp.asarray(ss))
  _check(got, _absorbing_step_f64(logp, st, ss), name)
  # An unmasked token stays put with probability exactly 1.
  data = sampling.reverse_transition_log_probs(proc, jnp.asarray(logp),
                                               jnp.full((STEPS,), 2), jnp.asarray(st),
                                               jnp.asarray(ss))
  np.testing.assert_array_equal(np.exp(np.asarray(data)), np.eye(v + 1)[[2] * STEPS])


@pytest.mark.parametrize("v", [5, 40])
@pytest.mark.parametrize("name,kw", [("geometric", dict(sigma_min=1e-4, sigma_max=20.0)),
                                     ("log_linear", {}), ("linear", {})])
def test_uniform_analytic_step_float32_matches_float64(name, kw, v):
  proc = processes.Uniform(v)
  st, ss = _grid(name, **kw)
  logp = _log_probs(1, STEPS, v)
  x_t = np.random.default_rng(2).integers(0, v, STEPS)
  got = sampling.reverse_transition_log_probs(proc, jnp.asarray(logp), jnp.asarray(x_t),
                                              jnp.asarray(st), jnp.asarray(ss))
  _check(got, _uniform_step_f64(logp, x_t, st, ss, v), f"{name} V={v}")


SIGMAS = np.geomspace(1e-7, 30.0, 25).astype(np.float32)


def _kernel_f64(proc, sigma):
  """Closed-form float64 kernel (checked against scipy's expm below)."""
  s, v = proc.num_states, proc.vocab_size
  sig, em = np.float64(sigma), -np.expm1(-np.float64(sigma))
  if isinstance(proc, processes.Uniform):
    return np.exp(-sig) * np.eye(v) + em / v
  k = np.exp(-sig) * np.eye(s)
  k[:v, v] = em
  k[v, v] = 1.0
  return k


@pytest.mark.parametrize("v", [5, 200])
@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_kernels_float32_match_float64(kind, v):
  proc = processes.Uniform(v) if kind == "uniform" else processes.Absorbing(v)
  x = jnp.arange(proc.num_states)
  want = np.stack([_kernel_f64(proc, s) for s in SIGMAS])              # [n, S, S]
  small = type(proc)(4)         # the reference is the matrix exponential
  for s in (1e-3, 0.7, 5.0):
    q = np.asarray(small.rate_matrix(), np.float64)
    np.testing.assert_allclose(_kernel_f64(small, s), scipy.linalg.expm(s * q),
                               rtol=1e-9, atol=1e-14)
  got = np.asarray(proc.transition_matrix(jnp.asarray(SIGMAS)), np.float64)
  assert got.dtype == np.float64 and got.shape == want.shape
  with np.errstate(divide="ignore"):
    _check(np.log(got), want, "transition_matrix")
  xs = jnp.broadcast_to(x, (len(SIGMAS), proc.num_states))
  _check(proc.transition_log_probs(xs, jnp.asarray(SIGMAS)), want, "transition_log_probs")
  _check(proc.likelihood_log_probs(xs, jnp.asarray(SIGMAS)),
         np.swapaxes(want, -1, -2)[..., :v], "likelihood_log_probs")


@pytest.mark.parametrize("eps", [1e-3, 1e-5])
@pytest.mark.parametrize("name", ["log_linear", "cosine"])
def test_schedules_float32_match_float64(name, eps):
  """sigma_bar and dsigma within 8 float32 ulps (relative) on a 10^4-step grid.

  Near ``t = 1`` the direct ``1 - (1 - eps) t`` (and ``1 - (1 - eps)(1 - cos)``) cancel:
  thousands of ulps for ``eps = 1e-5``.
  """
  sched = schedules.get(name, eps=eps)
  ts = jnp.linspace(1.0, 1e-5, STEPS + 1)
  t = np.asarray(ts, np.float64)
  if name == "log_linear":
    alpha = (1.0 - t) + eps * t
    sigma = -np.log(alpha)
    dsigma = (1.0 - eps) / alpha
  else:
    alpha = eps + (1.0 - eps) * np.cos(np.pi * t / 2)
    sigma = -np.log1p(-(1.0 - eps) * 2.0 * np.sin(np.pi * t / 4) ** 2)
    dsigma = (1.0 - eps) * np.pi / 2 * np.sin(np.pi * t / 2) / alpha
  got_sigma, got_dsigma = (np.asarray(a, np.float64) for a in sched(ts))
  ulp = np.finfo(np.float32).eps
  assert np.abs(got_sigma / sigma - 1).max() <= 8 * ulp
  assert np.abs(got_dsigma / dsigma - 1).max() <= 8 * ulp
