"""Every contraction in the math states its precision (TPU float32 matmuls otherwise run
as one bf16 pass): the math functions are lowered and every ``dot_general`` of the
StableHLO is read. A float32 x float32 contraction must say ``HIGHEST``; a bf16 one must
accumulate in float32 (``preferred_element_type``) or say ``HIGHEST``."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tcsm_jax import exact, hamming, likelihood, losses, processes, schedules, scores
from tcsm_jax.sampling import samplers, steps

_DOT = re.compile(r"stablehlo\.(dot_general|dot)\b(.*)$", re.M)


def dots(fn, *args):
  """``[(precision text, operand types, result type)]`` of every dot in ``jit(fn)``."""
  text = jax.jit(fn).lower(*args).as_text()
  out = []
  for _, rest in _DOT.findall(text):
    prec = re.search(r"precision = \[([A-Z_, ]+)\]", rest)
    sig = re.search(r":\s*\((tensor<[^)]*)\)\s*->\s*(tensor<[^>]*>)", rest)
    assert sig, rest
    operands = re.findall(r"x([a-z]+\d*)>", sig.group(1))
    result = re.search(r"x([a-z]+\d*)>", sig.group(2)).group(1)
    out.append((prec.group(1) if prec else "DEFAULT, DEFAULT", tuple(operands), result))
  return out


def unsafe(found):
  """The dots that would round on a TPU: DEFAULT precision with float32 operands, or
  bf16 operands accumulated in bf16."""
  bad = []
  for prec, operands, result in found:
    highest = set(p.strip() for p in prec.split(",")) == {"HIGHEST"}
    if "f32" in operands and not highest:
      bad.append((prec, operands, result))
    elif set(operands) == {"bf16"} and result == "bf16" and not highest:
      bad.append((prec, operands, result))
  return bad


def test_the_checker_sees_default_and_highest():
  a, b = jnp.ones((3, 4)), jnp.ones((4, 5))
  found = dots(lambda a, b: jnp.einsum("ij,jk->ik", a, b), a, b)
  assert found == [("DEFAULT, DEFAULT", ("f32", "f32"), "f32")]
  assert unsafe(found)
  assert not unsafe(dots(lambda a, b: jnp.matmul(a, b, precision="highest"), a, b))
  bf = lambda a, b: jnp.matmul(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16),
                               preferred_element_type=jnp.float32)
  assert not unsafe(dots(bf, a, b))
  assert unsafe(dots(lambda a, b: a.astype(jnp.bfloat16) @ b.astype(jnp.bfloat16), a, b))


def _dense(v):
  rng = np.random.default_rng(0)
  q = rng.uniform(0.1, 1.0, (v, v))
  np.fill_diagonal(q, 0.0)
  np.fill_diagonal(q, -q.sum(1))
  return processes.Dense(q)


V, L, B = 4, 3, 2
PROCS = {"uniform": processes.Uniform(V), "absorbing": processes.Absorbing(V),
         "dense": _dense(V)}


def _math_functions(proc):
  """``{name: (fn, args)}``: the core math of one process, on tiny shapes."""
  s = proc.num_states
  x0 = jnp.asarray([[0, 1, 2], [3, 0, 1]], jnp.int32)
  x_t = jnp.asarray([[0, s - 1, 2], [3, s - 1, 1]], jnp.int32)
  sig = jnp.asarray([0.3, 1.2])
  logits = jnp.linspace(-1.0, 1.0, B * L * V).reshape(B, L, V)
  log_probs = jax.nn.log_softmax(logits)
  sched = schedules.get("log_linear")
  p0 = np.full(V ** L, 1.0 / V ** L)
  den = exact.true_denoiser(p0, proc, L)
  fns = {
      "transition_log_probs": (proc.transition_log_probs, (x0, sig[:, None])),
      "likelihood_log_probs": (proc.likelihood_log_probs, (x_t, sig[:, None])),
      "prior_log_probs": (proc.prior_log_probs, (jnp.asarray(1.5),)),
      "noisy_log_score": (lambda lp, x, sg: proc.noisy_log_score(lp, x, sg[:, None]),
                          (log_probs, x_t, sig)),
      "reverse_step": (lambda lp, x: steps.reverse_transition_log_probs(
          proc, lp, x, sig, 0.5 * sig), (log_probs, x_t)),
      "euler_step": (lambda lp, x: steps.euler_log_probs(
          proc, lp, x, sig, sig, 0.01), (log_probs, x_t)),
      "model_log_probs": (lambda lg, x: scores.model_log_probs(lg, proc, x, sig[:, None]),
                          (logits, x_t)),
      "tcsm_score": (lambda lg: losses.tcsm_loss(lg, x0, x_t, sig, proc), (logits,)),
      "tcsm_distribution": (lambda lg: losses.tcsm_loss(
          lg, x0, x_t, sig, proc, form="distribution", divergence="kl"), (logits,)),
      "grad_tcsm": (jax.grad(lambda lg: losses.tcsm_loss(lg, x0, x_t, sig, proc).sum()),
                    (logits,)),
      "pair_tcsm": (lambda lg: hamming.pair_tcsm_loss(
          lg, x0, x_t, sig, proc, hamming.all_pairs(L)), (logits,)),
      "true_denoiser": (den, (x_t, sig)),
      "nll_bound": (lambda k, x: likelihood.nll_bound(k, den, x, proc, sched, num_t=2),
                    (jax.random.PRNGKey(0), x0)),
      "sampler": (lambda k: samplers.sample(k, den, proc, sched, (B, L), steps=4),
                  (jax.random.PRNGKey(1),)),
  }
  if isinstance(proc, processes.Absorbing):
    fns["masked_elbo"] = (lambda lg: losses.masked_elbo(lg, x0, x_t, sig, sig, V),
                          (logits,))
  return fns


@pytest.mark.parametrize("name", sorted(PROCS))
def test_no_math_contraction_runs_at_default_precision(name):
  proc = PROCS[name]
  total = 0
  for fname, (fn, args) in _math_functions(proc).items():
    found = dots(fn, *args)
    total += len(found)
    assert not unsafe(found), f"{name}.{fname}: {unsafe(found)}"
  if name == "dense":        # the explicit kernels (expm) and the reverse step contract
    assert total > 0


def test_dense_reverse_step_einsum_is_highest():
  proc = PROCS["dense"]
  x_t = jnp.asarray([[0, 1, 2]], jnp.int32)
  lp = jax.nn.log_softmax(jnp.zeros((1, L, V)))
  found = dots(lambda lp: steps.reverse_transition_log_probs(
      proc, lp, x_t, jnp.asarray([1.0]), jnp.asarray([0.5])), lp)
  mine = [d for d in found if d[1] == ("f32", "f32")]
  assert mine and all(d[0] == "HIGHEST, HIGHEST" for d in mine)
