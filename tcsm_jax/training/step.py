"""Pure train and eval steps (jitted and sharded by the trainer)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from tcsm_jax.training.state import TrainState


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation,
                    lr_schedule: Callable, ema_decay: float, accum_steps: int = 1,
                    mesh=None):
  """Returns ``train_step(state, batch [B, L]) -> (state, metrics)``.

  Gradient accumulation splits the batch into ``accum_steps`` micro-batches (scanned,
  so memory is that of one micro-batch) and averages their gradients: the update equals
  the one of the whole batch. A step whose loss or gradient norm is not finite leaves
  params, optimizer state and EMA untouched, counts itself in ``state.skipped`` and
  reports ``skipped = 1``.

  With ``mesh`` the step is traced under its abstract mesh
  (``jax.sharding.use_abstract_mesh``): the model pins its
  hidden states to the batch layout (``models.transformer.constrain_batch``), which
  makes FSDP gather weights instead of all-reducing activations (same values).
  """
  grad_fn = jax.value_and_grad(lambda p, x, k: loss_fn(p, x, k, True), has_aux=True)

  def train_step(state: TrainState, batch):
    key = jax.random.fold_in(state.rng, state.step)
    if accum_steps == 1:
      (loss, metrics), grads = grad_fn(state.params, batch, key)
    else:
      b = batch.shape[0]
      if b % accum_steps:
        raise ValueError(f"batch {b} not divisible by accum_steps {accum_steps}")
      micro = batch.reshape((accum_steps, b // accum_steps) + batch.shape[1:])

      def body(carry, xs):
        i, mb = xs
        (l, m), g = grad_fn(state.params, mb, jax.random.fold_in(key, i))
        acc = jax.tree.map(jnp.add, carry, (l, m, g))
        return acc, None

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      init = (jnp.zeros(()), {"loss": jnp.zeros(())}, zeros)
      (loss, metrics, grads), _ = jax.lax.scan(body, init,
                                               (jnp.arange(accum_steps), micro))
      scale = 1.0 / accum_steps
      loss, metrics, grads = jax.tree.map(lambda x: x * scale,
                                                    (loss, metrics, grads))
    gnorm = optax.global_norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(gnorm)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p,
                                 state.ema_params, params)
    keep = lambda new, old: jax.tree.map(
        lambda n, o: jnp.where(ok, n, o), new, old)
    new_state = state.replace(
        step=state.step + 1, params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state), ema_params=keep(ema, state.ema_params),
        skipped=state.skipped + (1 - ok.astype(jnp.int32)))
    metrics = dict(metrics, grad_norm=gnorm, skipped=1.0 - ok.astype(jnp.float32),
                   lr=lr_schedule(state.step))
    return new_state, metrics

  if mesh is None:
    return train_step

  def train_step_on_mesh(state: TrainState, batch):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return train_step(state, batch)

  return train_step_on_mesh


def make_eval_step(loss_fn: Callable):
  """Returns ``eval_step(params, batch, key) -> metrics`` (no dropout)."""

  def eval_step(params, batch, key):
    loss, metrics = loss_fn(params, batch, key, False)
    return metrics

  return eval_step
