"""Optimizer from ``config.optim``: AdamW, warmup + cosine/constant/linear decay, clipping."""

from __future__ import annotations

import ml_collections
import optax

SCHEDULES = ("cosine", "constant", "linear")


def learning_rate_schedule(cfg: ml_collections.ConfigDict, num_steps: int):
  """Linear warmup to ``cfg.lr`` over ``cfg.warmup_steps``, then ``cfg.lr_schedule``."""
  if cfg.lr_schedule not in SCHEDULES:
    raise ValueError(f"optim.lr_schedule must be one of {SCHEDULES}, got "
                     f"{cfg.lr_schedule!r}")
  warm = max(int(cfg.warmup_steps), 0)
  warmup = optax.linear_schedule(0.0, cfg.lr, max(warm, 1))
  rest = max(num_steps - warm, 1)
  if cfg.lr_schedule == "cosine":
    decay = optax.cosine_decay_schedule(cfg.lr, rest, alpha=cfg.get("min_lr_ratio", 0.0))
  elif cfg.lr_schedule == "linear":
    decay = optax.linear_schedule(cfg.lr, cfg.lr * cfg.get("min_lr_ratio", 0.0), rest)
  else:
    decay = optax.constant_schedule(cfg.lr)
  return optax.join_schedules([warmup, decay], [warm]) if warm else decay


def make_optimizer(cfg: ml_collections.ConfigDict, num_steps: int):
  """Returns ``(optax transformation, learning-rate schedule)``."""
  sched = learning_rate_schedule(cfg, num_steps)
  chain = []
  if cfg.grad_clip and cfg.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(cfg.grad_clip))
  chain.append(optax.adamw(sched, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                           weight_decay=cfg.weight_decay))
  return optax.chain(*chain), sched
