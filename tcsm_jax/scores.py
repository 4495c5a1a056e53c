"""Concrete scores on the 1-Hamming neighbourhood and the denoising posterior.

Notation: ``x0`` is the clean sequence (the paper's ``x_1``), ``x_t`` the noisy one. The
*concrete score* of a distribution ``p`` at ``x`` is the vector of ratios
``p(x^{i<-y}) / p(x)`` over the sequences ``x^{i<-y}`` that differ from ``x`` at one
position ``i`` only. For a factorized denoiser ``p_theta(x0 | x_t) = prod_i
p_theta(x0^i | x_t)`` these ratios are ``p_theta(x0^i = y | x_t) / p_theta(x0^i | x_t)``:
an array ``[batch, length, vocab]`` that is never a set of materialized neighbours.

The *path identity* ties the denoising posterior ``p(x0 | x_t) ~ p_1(x0) p(x_t | x0)`` to
the clean-space target ``p_1``:

  ``p(x0^{i<-y} | x_t) / p(x0 | x_t)
      = [p_1(x0^{i<-y}) / p_1(x0)] * [P(y, x_t^i) / P(x0^i, x_t^i)]``

so a target that only knows clean-space conditionals (data, a masked LM, an AR model,
a reward-tilted model) defines the posterior target through ``posterior_log_probs``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tcsm_jax import _checks
from tcsm_jax.processes import Process


def support(process: Process, x_t, sigma_bar) -> jnp.ndarray:
  """``[..., V]`` bool: clean values ``y`` with ``P(y, x_t) > 0`` (posterior support).

  For the absorbing process an unmasked position supports only its own token (the
  "carry-over" of MDLM/MD4); the uniform process supports every token for
  ``sigma_bar > 0``.
  """
  return process.likelihood_log_probs(x_t, sigma_bar) > -jnp.inf


def model_log_probs(logits, process: Process, x_t, sigma_bar) -> jnp.ndarray:
  """Denoiser log-probabilities ``log p_theta(x0^i = y | x_t)`` (float32).

  Args:
    logits: ``[batch, length, V]`` network outputs over clean tokens (any float dtype).
    process: the forward process.
    x_t: ``[batch, length]`` noisy tokens.
    sigma_bar: noise level, scalar or ``[batch]``.
  Returns:
    ``[batch, length, V]`` log-probabilities, ``-inf`` outside the posterior support.
  """
  _checks.check_last_dim(logits, process.vocab_size, "logits")
  if logits.shape[:-1] != jnp.shape(x_t):
    raise ValueError(f"logits {logits.shape} and x_t {jnp.shape(x_t)} disagree on "
                     "[batch, length]")
  ok = support(process, x_t, sigma_bar)
  return jax.nn.log_softmax(jnp.where(ok, logits.astype(jnp.float32), -jnp.inf), -1)


def posterior_log_probs(target_log_cond, process: Process, x_t, sigma_bar):
  """Target denoising posterior from clean-space target conditionals (path identity).

  Args:
    target_log_cond: ``[..., V]`` ``log p_1(x0^i = y | x0^{-i})`` up to an additive
      constant per position (e.g. teacher logits).
    process, x_t ``[...]``, sigma_bar: the forward corruption.
  Returns:
    ``[..., V]`` normalized ``log q(x0^i = y | x0^{-i}, x_t)``.
  """
  lik = process.likelihood_log_probs(x_t, sigma_bar)
  logits = jnp.where(lik > -jnp.inf, target_log_cond.astype(jnp.float32) + lik, -jnp.inf)
  return jax.nn.log_softmax(logits, -1)


def clean_log_ratios(log_probs, x0) -> jnp.ndarray:
  """Concrete score of a factorized distribution at ``x0``, in log space.

  Args:
    log_probs: ``[..., V]`` per-position log-probabilities.
    x0: ``[...]`` the sequence the neighbourhood is centred on.
  Returns:
    ``[..., V]``: ``log p(x0^{i<-y}) - log p(x0)`` (0 at ``y = x0^i``).
  """
  x0 = jnp.asarray(x0)
  return log_probs - jnp.take_along_axis(log_probs, x0[..., None], -1)


def posterior_log_ratios(target_log_ratios, process: Process, x0, x_t, sigma_bar):
  """The path identity in ratio form.

  Args:
    target_log_ratios: ``[..., V]`` clean-space concrete score of the target at ``x0``:
      ``log p_1(x0^{i<-y}) - log p_1(x0)``.
    process, x0 ``[...]``, x_t ``[...]``, sigma_bar: as above.
  Returns:
    ``[..., V]`` log concrete score of the denoising posterior ``p(. | x_t)`` at ``x0``.
  """
  lik = process.likelihood_log_probs(x_t, sigma_bar)
  return target_log_ratios + clean_log_ratios(lik, x0)
