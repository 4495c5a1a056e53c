"""The diffusion training objective: sample times, corrupt, run the denoiser, score.

``make_loss_fn`` turns ``config.loss`` into a pure function
``loss_fn(params, x0, key, train) -> (loss, metrics)`` that the train and eval steps
jit. Kinds:

* ``tcsm``: ``losses.tcsm_loss`` with ``config.loss.form``/``divergence``/``weighting``;
  the target is the data (Monte Carlo), a parametric teacher (``target_fn``) or a
  mixture of both (``config.loss.teacher_weight``). With ``config.loss.hamming = 2``
  the score form runs on pair blocks (``hamming.pair_tcsm_loss``): all pairs, or
  ``hamming_pairs`` uniformly drawn ones per step, and the teacher is called as
  ``target_fn(x0, pairs=pairs) -> [b, P, V, V]`` pair log-ratios.
* ``masked_elbo``: MDLM/MD4's continuous-time ELBO (absorbing only).
* ``sedd``: SEDD's denoising score entropy, with the score computed from the
  denoiser (``Process.noisy_log_score``).

The loss is the batch mean of the time-weighted per-sequence sum, divided by the
sequence length: nats per token for the ELBO-type objectives. With ``pad_id`` (the
``padded`` data layout, one document per row) positions whose clean token is the pad
id contribute nothing, and the sum is divided by the number of real tokens instead;
without it the computation is unchanged.

Vocabulary tiling (``config.loss.tile_vocab`` with ``chunk_size > 0``): the denoiser
returns ``Hidden(states [b, L, D], head)`` instead of logits, and the output layer runs
per chunk inside ``losses.per_position``: full ``[b, L, V]`` logits never exist.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections

from tcsm_jax import hamming, losses, scores, targets
from tcsm_jax.processes import Process
from tcsm_jax.schedules import Schedule

KINDS = ("tcsm", "masked_elbo", "sedd")


class Hidden(NamedTuple):
  """A denoiser's output for vocabulary tiling: ``states [b, L, D]`` (before the output
  layer) and ``head(rows [n, D]) -> logits [n, V]``."""
  states: Any
  head: Callable


def sample_times(key, batch: int, t_min: float = 1e-5, stratified: bool = True):
  """``[batch]`` times in ``[t_min, 1]``; stratified = one uniform offset + even grid."""
  if stratified:
    u = jnp.mod(jax.random.uniform(key, ()) + jnp.arange(batch) / batch, 1.0)
  else:
    u = jax.random.uniform(key, (batch,))
  return t_min + (1.0 - t_min) * u


def _sum_real(per_pos, real):
  """``[b, l] -> [b]``: the sum over real (non-pad) positions (all when ``real`` is
  None)."""
  return per_pos.sum(-1) if real is None else jnp.where(real, per_pos, 0.0).sum(-1)


def _pair_loss(cfg, process, logits, x0, x_t, sigma, target_fn, key):
  """``[b]`` per-sequence 2-Hamming score-form loss, ``(L / P) sum_pairs``."""
  length = x0.shape[1]
  num = int(cfg.get("hamming_pairs", 0))
  pairs = (hamming.all_pairs(length) if num == 0 else
           hamming.sample_pairs(jax.random.fold_in(key, 0x9a1), length, num))
  scale = length / pairs.shape[0]
  teacher_w = float(cfg.get("teacher_weight", 0.0))
  out = 0.0
  if teacher_w < 1.0:
    out = (1.0 - teacher_w) * hamming.pair_tcsm_loss(
        logits, x0, x_t, sigma, process, pairs, divergence=cfg.divergence).sum(-1)
  if teacher_w > 0.0:
    target = jax.lax.stop_gradient(target_fn(x0, pairs=pairs))
    out = out + teacher_w * hamming.pair_tcsm_loss(
        logits, x0, x_t, sigma, process, pairs, divergence=cfg.divergence,
        target_pair_log_ratios=target).sum(-1)
  return scale * out


def make_loss_fn(cfg: ml_collections.ConfigDict, process: Process, schedule: Schedule,
                 apply_fn: Callable, target_fn: Optional[Callable] = None,
                 pad_id: Optional[int] = None):
  """Builds ``loss_fn(params, x0, key, train) -> (scalar loss, metrics)``.

  Args:
    cfg: ``config.loss``, validated by ``tcsm_jax.training.config.validate`` (the one
      validation table; this builder does not re-check choices or ranges).
    process, schedule: the forward corruption.
    apply_fn: ``(params, x_t, sigma_bar, train, key) -> logits [batch, length, V]``.
    target_fn: optional ``x0 [batch, length] -> [batch, length, V]`` clean-space
      target log-conditionals (a teacher); used with weight ``cfg.teacher_weight``.
      One with a ``key`` argument gets a fresh key each step.
    pad_id: the dataset's padding id (``TokenDataset.pad_id``): pad positions of ``x0``
      are left out of the loss, which is then per real token.
  """
  if cfg.kind not in KINDS:        # dispatch guard (choices are checked by the table)
    raise ValueError(f"unknown loss.kind {cfg.kind!r}; one of {KINDS}")
  teacher_w = float(cfg.get("teacher_weight", 0.0))
  if teacher_w > 0 and target_fn is None:
    raise ValueError("loss.teacher_weight > 0 needs a teacher (config.teacher)")

  def loss_fn(params, x0, key, train: bool = True):
    b, length = x0.shape
    k_t, k_x, k_drop = jax.random.split(key, 3)
    t = sample_times(k_t, b, cfg.t_min, cfg.get("stratified", True))
    sigma, dsigma = schedule(t)
    x_t = process.sample_forward(k_x, x0, sigma)
    logits = apply_fn(params, x_t, sigma, train, k_drop)
    real = None if pad_id is None else x0 != pad_id
    chunk = int(cfg.get("chunk_size", 0) or 0)
    head = None
    if isinstance(logits, Hidden):     # vocabulary tiling: logits per chunk, inside
      logits, head = logits
    per_position = lambda *a: losses.per_position(*a, head=head)
    if cfg.kind == "masked_elbo":
      # A pad position shows its clean token to the loss, so it never counts as masked.
      x_seen = x_t if real is None else jnp.where(real, x_t, x0)
      w = dsigma / jnp.expm1(sigma)
      per_seq = w * per_position(
          lambda s, lg, a, b: losses.masked_nll(lg, a, b, process.mask_id), chunk,
          (sigma,), logits, x0, x_seen).sum(-1)
    elif cfg.kind == "sedd":
      def sedd_fn(s, ds, lg, a, b):
        log_score = process.noisy_log_score(scores.model_log_probs(lg, process, b, s),
                                            b, s)
        return losses.score_entropy(log_score, a, b, s, ds, process)
      per_seq = _sum_real(per_position(sedd_fn, chunk, (sigma, dsigma), logits,
                                       x0, x_t), real)
    elif cfg.get("hamming", 1) == 2:
      per_seq = losses.time_weight(cfg.weighting, sigma, dsigma) * _pair_loss(
          cfg, process, logits, x0, x_t, sigma, target_fn, key)
    else:
      w = losses.time_weight(cfg.weighting, sigma, dsigma)
      per_seq = 0.0
      if teacher_w < 1.0:
        per_seq = (1.0 - teacher_w) * _sum_real(per_position(
            lambda s, lg, a, b: losses.tcsm_loss(lg, a, b, s, process, form=cfg.form,
                                                 divergence=cfg.divergence),
            chunk, (sigma,), logits, x0, x_t), real)
      if teacher_w > 0.0:
        # A stochastic target (teacher.mode=top_k_tail) draws from its own stream; the
        # corruption's keys stay as they were.
        target = jax.lax.stop_gradient(targets.call_target(
            target_fn, x0, jax.random.fold_in(key, 0x7a5)))
        per_seq = per_seq + teacher_w * _sum_real(per_position(
            lambda s, lg, a, b, tg: losses.tcsm_loss(
                lg, a, b, s, process, form=cfg.form, divergence=cfg.divergence,
                target_log_cond=tg),
            chunk, (sigma,), logits, x0, x_t, target), real)
      per_seq = w * per_seq
    if real is None:
      loss = jnp.mean(per_seq) / length
    else:
      loss = jnp.sum(per_seq) / jnp.maximum(jnp.sum(real), 1)
    return loss, {"loss": loss}

  return loss_fn
