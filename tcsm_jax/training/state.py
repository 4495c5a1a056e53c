"""Train state: everything that must be checkpointed to resume exactly."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
  """A pytree of arrays.

  Attributes:
    step: int32 scalar, number of optimizer steps taken (skipped steps included).
    params: model parameters.
    opt_state: optax state.
    ema_params: exponential moving average of ``params``.
    rng: uint32 ``[2]`` raw PRNG key; step ``s`` uses ``fold_in(rng, s)``.
    skipped: int32 scalar, steps skipped by the NaN/inf guard.
  """

  step: jnp.ndarray
  params: Any
  opt_state: Any
  ema_params: Any
  rng: jnp.ndarray
  skipped: jnp.ndarray


def create(params, optimizer, rng) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params),
                    ema_params=jax.tree.map(jnp.copy, params),
                    rng=jnp.asarray(rng), skipped=jnp.zeros((), jnp.int32))
