"""Input validation shared by the public functions.

Shape, rank and dtype checks use ``chex`` (static: they hold under ``jax.jit`` too) and
raise ``ValueError`` naming the array, like every other bad-input check here. Value
checks (token range, sign of the noise level) run only on concrete arrays: under
``jax.jit`` the values are tracers. Callers that jit their own code validate their
inputs once, outside the jitted region (the data pipeline does this for every batch it
yields).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def check_tokens(x, num_states: int, name: str = "tokens") -> None:
  """Raises ValueError if ``x`` is not integer or holds ids outside [0, num_states)."""
  if not jnp.issubdtype(jnp.asarray(x).dtype, jnp.integer):
    raise ValueError(f"{name} must be integer token ids, got dtype {jnp.asarray(x).dtype}")
  if is_concrete(x):
    arr = np.asarray(x)
    if arr.size and (arr.min() < 0 or arr.max() >= num_states):
      raise ValueError(
          f"{name} holds ids in [{arr.min()}, {arr.max()}] but must lie in "
          f"[0, {num_states}) (token out of vocabulary)")


def check_sigma(sigma_bar, name: str = "sigma_bar") -> None:
  """Raises ValueError if a concrete noise level is negative or not finite."""
  if is_concrete(sigma_bar):
    arr = np.asarray(sigma_bar, dtype=np.float64)
    if arr.size and (not np.all(np.isfinite(arr)) or arr.min() < 0):
      raise ValueError(f"{name} must be finite and >= 0, got range "
                       f"[{arr.min()}, {arr.max()}]")


def expand_leading(v, ndim: int):
  """Appends trailing unit axes so ``v`` broadcasts against an ``ndim`` array.

  Per-example quantities such as a ``[batch]`` noise level are aligned with the
  *leading* axes of ``[batch, length, ...]`` arrays.
  """
  v = jnp.asarray(v)
  if v.ndim > ndim:
    raise ValueError(f"cannot align an array of shape {v.shape} with {ndim} axes")
  return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def check_last_dim(x, size: int, name: str) -> None:
  """Asserts ``x.shape[-1] == size`` (``[..., size]``)."""
  chex.assert_axis_dimension(x, -1, size, custom_message=name, exception_type=ValueError)


def check_tokens_and_logits(tokens, logits, name: str = "logits") -> None:
  """Asserts ``tokens [batch, length]`` ints and ``logits [batch, length, V]`` floats."""
  kw = dict(exception_type=ValueError)
  chex.assert_rank(tokens, 2, custom_message="tokens", **kw)
  chex.assert_rank(logits, 3, custom_message=name, **kw)
  chex.assert_type(tokens, int, custom_message="tokens", **kw)
  chex.assert_type(logits, float, custom_message=name, **kw)
  chex.assert_equal_shape_prefix([tokens, logits], 2, custom_message=name, **kw)
