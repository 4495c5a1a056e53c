"""Reverse-CTMC samplers on a time grid: Euler (tau-leaping), analytic, cached
ancestral, ReMDM remasking; ``first_hitting`` (``first_hitting.py``) draws event times.

All samplers start from a state the model's reverse law starts from (the all-mask state
for the absorbing process, a draw from the prior otherwise), run the reverse chain from
``t = 1`` to ``t_end`` on ``steps`` equal time steps, in parallel over positions, with a
factorized denoiser ``(x_t [b, l], sigma_bar [b]) -> logits [b, l, V]``; then a final
denoising step draws ``x0 ~ p_theta(x0 | x_{t_end})``. Every categorical and Bernoulli
draw is exact down to ``2^-105`` of the step's largest probability (``draws.py``;
``draw="gumbel32"`` reproduces the float32 Gumbel-max draws of older versions).

* ``euler``: per position a categorical over ``[1 + dt R(x, x), dt R(x, y)]`` with the
  reverse rates ``R`` built from the model's noisy-space concrete score
  (``Process.noisy_log_score`` + ``Process.reverse_rates``): first-order tau-leaping.
* ``analytic``: the exact reverse transition of the factorized posterior,
  ``p(x_s | x_t) = sum_a p_theta(a | x_t) P_s(a, x_s) P_{s->t}(x_s, x_t) / P_t(a, x_t)``
  (Tweedie tau-leaping; for the absorbing process MDLM/MD4's ancestral step, drawn as a
  Bernoulli "unmask now" and a clean token: ``steps.absorbing_step``).
* ``ancestral``: the analytic step plus the unchanged-sequence cache (MDLM, RADD), per
  sequence: a sequence that the last step left unchanged keeps its logits, and the
  network runs only on the sequences that changed, gathered into the smallest of a few
  compiled batch sizes (``ancestral_cache_buckets``; none at all when nothing changed).
  When the schedule, length and step count make almost every sequence change at every
  step the cache steps aside and the sampler is the analytic one. Exact for a denoiser
  that does not depend on ``sigma_bar`` at masked positions (true for the Bayes
  denoiser of the absorbing process); an approximation otherwise.
* ``remdm``: the analytic absorbing step with remasking (``remask.py``: ``cap``,
  ``rescale``, ``loop`` schedules and ``eta``); ``eta = 0`` is ``analytic``.
* ``confidence``, ``entropy_bound``, ``confidence_threshold`` (absorbing,
  ``adaptive.py``): no time grid; each network call reveals a prefix of the free masked
  positions ranked by confidence (``k`` of them, EB-Sampler's entropy bound ``gamma``,
  or Fast-dLLM's threshold ``tau``), tokens drawn exactly.

Options: ``temperature`` and nucleus ``top_p`` on the denoiser's logits; guidance by an
additive log-tilt of the clean-token law (``log_tilt_fn``, ``posttrain/guidance.py``);
prompting and infilling by clamping any positions (``clamp_mask``, ``clamp_tokens``):
clamped positions hold their tokens at every step, so the network conditions on them.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from tcsm_jax import _checks
from tcsm_jax.processes import Absorbing, Process
from tcsm_jax.sampling import adaptive, draws, first_hitting, remask
from tcsm_jax.sampling.steps import (absorbing_step, euler_log_probs, model_log_probs_fn,
                                     reverse_transition_log_probs)
from tcsm_jax.schedules import Schedule

SAMPLERS = ("euler", "analytic", "ancestral", "remdm", "first_hitting"
            ) + adaptive.ADAPTIVE
STARTS = ("mask", "prior")


def ancestral_cache_buckets(schedule: Schedule, shape, steps: int, t_end: float = 1e-5,
                            free_positions=None, min_share: float = 0.05) -> tuple:
  """Batch sizes the cached ancestral sampler compiles the network for.

  The cache is per sequence: a sequence that did not change in the last step keeps its
  logits, and the network runs only on the sequences that changed, gathered into the
  smallest of these sizes that holds them (``0``: no network call). In the reverse chain
  of the absorbing process a sequence with ``n`` free positions changes in the step
  ``t -> s`` with probability ``1 - (1 - (alpha_s - alpha_t))^n``, so the number of
  changed sequences per step is binomial; a size below the batch is kept only when it
  would serve at least ``min_share`` of the steps (and one step). When none is kept the
  result is ``(batch,)``: the cache cannot pay (e.g. 256 tokens in 64 steps, where
  almost every sequence changes every step) and the sampler runs the network on the
  whole batch at every step, with no cache bookkeeping.

  Args:
    schedule, steps, t_end: those of ``sample``.
    shape: ``(batch, length)``.
    free_positions: positions per sequence that are not clamped (default ``length``).
  Returns:
    Increasing batch sizes ending with ``batch``.
  """
  from scipy import stats
  b, length = shape
  n_free = float(length if free_positions is None else np.mean(free_positions))
  ts = np.linspace(1.0, t_end, steps + 1)
  with jax.ensure_compile_time_eval():
    sig = np.asarray(schedule.sigma_bar(jnp.asarray(ts, jnp.float32)), np.float64)
  alpha = np.exp(-sig)
  p_row = 1.0 - (1.0 - np.clip(alpha[1:] - alpha[:-1], 0.0, 1.0)) ** n_free   # [steps]
  cands, m = [b], b
  while m > 1:
    m = -(-m // 2)
    cands.append(m)
  cands = sorted(set(cands) | {0})
  cdf = stats.binom.cdf(np.asarray(cands)[:, None], b, p_row[None])        # [C, steps]
  share = np.diff(np.concatenate([np.zeros((1, steps)), cdf]), axis=0).sum(1)
  keep = [c for c, e in zip(cands, share) if c == b or e >= max(1.0, min_share * steps)]
  return tuple(keep)


def _cached_model_log_probs(model_log_probs, x, sigma, lp, stale, buckets):
  """Refreshes the rows of ``lp`` whose sequence changed (``stale [batch]``).

  The changed rows are gathered into the smallest bucket that holds them (padded with
  unchanged rows, which are recomputed too) and the network runs on that many rows only.
  Returns ``(lp, rows)`` with ``rows`` the batch size the network saw (0: no call).
  """
  b = x.shape[0]
  order = jnp.argsort(~stale, stable=True)               # changed rows first
  branch = jnp.searchsorted(jnp.asarray(buckets), stale.sum(), side="left")

  def run(m):
    def f(lp):
      if m == 0:
        return lp
      if m == b:
        return model_log_probs(x, sigma)
      rows = order[:m]
      return lp.at[rows].set(model_log_probs(x[rows], sigma[rows]))
    return f

  lp = jax.lax.switch(branch, [run(m) for m in buckets], lp)
  return lp, jnp.asarray(buckets)[branch]


def validate(process: Process, sampler: str, steps: int, temperature: float,
             top_p: float, draw: str, start: str, remask_schedule: str,
             remask_eta: float, t_on: float, t_off: float, t_end: float,
             alpha_on: float = 0.9, unmask_per_call: int = 1, eb_gamma: float = 0.0,
             confidence_tau: float = 1.0) -> None:
  """Raises ``ValueError`` naming the first bad sampling option."""
  if sampler not in SAMPLERS:
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  if temperature <= 0 or not 0 < top_p <= 1:
    raise ValueError("temperature must be > 0 and top_p in (0, 1]")
  if draw not in draws.DRAWS:
    raise ValueError(f"unknown draw {draw!r}; choose one of {draws.DRAWS}")
  if start not in STARTS:
    raise ValueError(f"unknown start {start!r}; choose one of {STARTS}")
  if sampler in ("ancestral", "remdm", "first_hitting") + adaptive.ADAPTIVE and (
      not isinstance(process, Absorbing)):
    raise ValueError(f"the {sampler} sampler needs the absorbing process")
  adaptive.validate(sampler, unmask_per_call, eb_gamma, confidence_tau)
  if sampler == "remdm":
    if remask_schedule not in remask.REMASK_SCHEDULES:
      raise ValueError(f"unknown remask schedule {remask_schedule!r}; choose one of "
                       f"{remask.REMASK_SCHEDULES}")
    if not 0 <= remask_eta <= 1:
      raise ValueError(f"remask eta must lie in [0, 1], got {remask_eta}")
    if remask_schedule == "loop" and not t_end < t_off < t_on < 1:
      raise ValueError(f"remask loop needs t_end < t_off < t_on < 1, got t_off={t_off}, "
                       f"t_on={t_on}, t_end={t_end}")
    if remask_schedule == "loop" and not 0 < alpha_on < 1:
      raise ValueError(f"remask alpha_on must lie in (0, 1), got {alpha_on}")


def start_state(key, process: Process, schedule: Schedule, shape, start: str = "mask",
                draw: str = "exact"):
  """``[batch, length]`` int32 state at ``t = 1``.

  ``mask``: the all-mask state for the absorbing process (the state its reverse law
  starts from; a token drawn from the prior's ``alpha(1) / V`` data mass would never be
  revised), a draw from the prior ``prior_log_probs(sigma_bar(1))`` for the others.
  ``prior``: a draw from the prior for every process (older versions).
  """
  if start == "mask" and isinstance(process, Absorbing):
    return jnp.full(shape, process.mask_id, jnp.int32)
  prior = process.prior_log_probs(schedule.sigma_bar(1.0))
  # gumbel32: jax.random.categorical on the broadcast law, the same noise as older
  # versions' categorical(key, prior, shape=shape), so the same draws bit for bit.
  return draws.categorical(key, jnp.broadcast_to(prior, tuple(shape) + prior.shape), draw)


def sample(key, denoise_fn: Callable, process: Process, schedule: Schedule, shape,
           *, steps: int, sampler: str = "analytic", temperature: float = 1.0,
           top_p: float = 1.0, clamp_tokens=None, clamp_mask=None, t_end: float = 1e-5,
           final_denoise: bool = True, return_path: bool = False,
           progress: Optional[Callable] = None, cache_buckets=None,
           draw: str = "exact", start: str = "mask", remask_schedule: str = "cap",
           remask_eta: float = 0.0, remask_t_on: float = 0.55,
           remask_t_off: float = 0.05, remask_alpha_on: float = 0.9,
           log_tilt_fn: Optional[Callable] = None, events_per_call: int = 1,
           unmask_per_call: int = 1, eb_gamma: float = 0.0, confidence_tau: float = 1.0):
  """Draws ``shape = (batch, length)`` sequences by running the reverse chain.

  Args:
    key: PRNG key.
    denoise_fn: ``(x_t, sigma_bar [batch]) -> logits [batch, length, V]``.
    process, schedule: the forward corruption the model was trained on.
    shape: ``(batch, length)``.
    steps: number of reverse steps between ``t = 1`` and ``t_end`` (``first_hitting``:
      unused; it makes at most ``length`` network calls).
    sampler: one of ``SAMPLERS``.
    temperature, top_p: applied to the denoiser logits.
    clamp_tokens, clamp_mask: ``[batch, length]``; where ``clamp_mask`` is True the
      token is held at ``clamp_tokens`` (prompting, infilling).
    t_end: last time of the chain (> 0).
    final_denoise: draw ``x0 ~ p_theta(. | x_{t_end})`` at the end.
    return_path: also return every intermediate state ``[steps + 1, batch, length]``.
    progress: host callback ``f(step)`` called after each step (progress bars).
    cache_buckets: ``ancestral`` only: the batch sizes the network is compiled for
      (increasing, ending with ``batch``; see ``ancestral_cache_buckets``, the default).
      ``(batch,)`` turns the cache off.
    draw: ``exact`` or ``gumbel32`` (``draws.py``).
    start: ``mask`` or ``prior`` (``start_state``).
    remask_schedule, remask_eta, remask_t_on, remask_t_off, remask_alpha_on: ``remdm``
      (``remask.py``; ``loop`` runs on ``remask.loop_schedule``, not ``schedule``).
    log_tilt_fn: guidance, ``(x_t, sigma, log_probs) -> [batch, length, V]`` added to
      the denoiser's log-probabilities before normalization.
    events_per_call: ``first_hitting`` only (``first_hitting.py``).
    unmask_per_call, eb_gamma, confidence_tau: ``confidence``, ``entropy_bound``,
      ``confidence_threshold`` (``adaptive.py``; ``steps`` unused).
  Returns:
    ``(tokens [batch, length], info)`` with ``info['nfe']`` the number of network calls,
    ``info['nfe_rows']`` the number of sequences they evaluated in all (``nfe * batch``
    unless the ancestral cache evaluated only the changed ones), and ``info['path']`` if
    requested.
  """
  validate(process, sampler, steps, temperature, top_p, draw, start, remask_schedule,
           remask_eta, remask_t_on, remask_t_off, t_end, remask_alpha_on, unmask_per_call,
           eb_gamma, confidence_tau)
  b, length = shape
  clamp_given = clamp_mask                 # before conversion: host values if concrete
  clamp_mask, clamp_tokens = clamp_arrays(process, shape, clamp_tokens, clamp_mask)
  clamp = lambda x: jnp.where(clamp_mask, clamp_tokens, x)
  model_log_probs = model_log_probs_fn(denoise_fn, process, temperature, top_p,
                                       log_tilt_fn)
  k_init, k_loop, k_final = jax.random.split(key, 3)
  x = clamp(start_state(k_init, process, schedule, shape, start, draw))
  if sampler == "first_hitting":
    return first_hitting.run(k_loop, model_log_probs, process, schedule, x, clamp_mask,
                             t_end=t_end, final_denoise=final_denoise, draw=draw,
                             events_per_call=events_per_call, return_path=return_path)
  if sampler in adaptive.ADAPTIVE:
    if return_path:
      raise ValueError(f"the {sampler} sampler does not return a path")
    return adaptive.run(k_loop, model_log_probs, process, schedule, x, clamp_mask,
                        sampler=sampler, t_end=t_end, draw=draw,
                        unmask_per_call=unmask_per_call, eb_gamma=eb_gamma,
                        confidence_tau=confidence_tau)
  ts = jnp.linspace(1.0, t_end, steps + 1)
  loop = sampler == "remdm" and remask_schedule == "loop"
  if loop:        # the chain runs on the loop's own alpha(t) (remask.py)
    schedule = remask.loop_schedule(schedule, remask_t_on, remask_t_off, remask_alpha_on)
  full = lambda v: jnp.full((b,), v)
  if sampler == "ancestral" and cache_buckets is None:
    try:
      free = None if clamp_given is None else (~np.asarray(clamp_given, bool)).sum(-1)
    except jax.errors.TracerArrayConversionError:      # clamp given as a traced value
      free = None
    cache_buckets = ancestral_cache_buckets(schedule, shape, steps, t_end, free)
  cached = sampler == "ancestral" and tuple(cache_buckets) != (b,)
  if cached and (list(cache_buckets) != sorted(set(cache_buckets))
                 or cache_buckets[-1] != b or cache_buckets[0] < 0):
    raise ValueError(f"cache_buckets must increase and end with the batch size {b}, "
                     f"got {cache_buckets}")
  absorbing = isinstance(process, Absorbing) and sampler != "euler"

  def body(carry, k):
    x, lp, fresh, nfe, rows = carry
    t, s = ts[k], ts[k + 1]
    sig_t, dsig_t = schedule(full(t))
    sig_s = schedule.sigma_bar(full(s))
    if cached:       # per-sequence cache: the network sees only the changed sequences
      lp, m = _cached_model_log_probs(model_log_probs, x, sig_t, lp, ~fresh,
                                      tuple(cache_buckets))
      nfe, rows = nfe + (m > 0), rows + m
    else:
      lp, nfe, rows = model_log_probs(x, sig_t), nfe + 1, rows + b
    k_step = jax.random.fold_in(k_loop, k)
    if absorbing:    # the absorbing step law (steps.absorbing_step), with remasking
      log_remask = None
      if sampler == "remdm":
        log_remask = remask.log_remask_probs(sig_t, sig_s, remask_schedule, remask_eta,
                                             held=loop & remask.loop_held(
                                                 t, s, remask_t_on, remask_t_off))
      new = absorbing_step(k_step, process, lp, x, sig_t, sig_s, log_remask, draw)
    else:
      if sampler == "euler":
        logq = euler_log_probs(process, lp, x, sig_t, dsig_t, full(ts[k] - ts[k + 1]))
      else:
        logq = reverse_transition_log_probs(process, lp, x, sig_t, sig_s)
      new = draws.categorical(k_step, logq, draw)
    new = clamp(new.astype(jnp.int32))
    fresh = jnp.all(new == x, axis=-1)     # per sequence: cached logits stay valid
    if progress is not None:
      jax.debug.callback(progress, k)
    return (new, lp, fresh, nfe, rows), (new if return_path else None)

  lp0 = jnp.zeros(shape + (process.vocab_size,), jnp.float32)
  (x, lp, fresh, nfe, rows), path = jax.lax.scan(
      body, (x, lp0, jnp.zeros((b,), bool), jnp.asarray(0), jnp.asarray(0)),
      jnp.arange(steps))
  if final_denoise:
    x = clamp(draws.categorical(k_final, model_log_probs(x, schedule.sigma_bar(
        full(t_end))), draw))
    nfe, rows = nfe + 1, rows + b
  info = {"nfe": nfe, "nfe_rows": rows}
  if return_path:
    info["path"] = path
  return x, info


def clamp_arrays(process: Process, shape, clamp_tokens, clamp_mask):
  """``(clamp_mask bool, clamp_tokens int32)``, both ``shape``, validated."""
  if (clamp_mask is None) != (clamp_tokens is None):
    raise ValueError("clamp_mask and clamp_tokens go together")
  if clamp_mask is None:
    return jnp.zeros(shape, bool), jnp.zeros(shape, jnp.int32)
  clamp_mask = jnp.asarray(clamp_mask, bool)
  clamp_tokens = jnp.asarray(clamp_tokens, jnp.int32)
  if clamp_mask.shape != tuple(shape) or clamp_tokens.shape != tuple(shape):
    raise ValueError(f"clamp arrays must have shape {tuple(shape)}")
  _checks.check_tokens(jnp.where(clamp_mask, clamp_tokens, 0), process.vocab_size,
                       "clamp_tokens")
  return clamp_mask, clamp_tokens


def jit_sampler(apply_fn: Callable, process: Process, schedule: Schedule, shape,
                **kwargs) -> Callable:
  """``fn(params, key) -> (tokens, info)``: ``sample`` jitted with the model's
  parameters as an argument of the executable.

  ``apply_fn(params, x_t, sigma_bar) -> logits``; ``kwargs`` go to ``sample``. Passing
  the parameters (instead of closing over them) lets one compile serve every
  checkpoint, and avoids NaN results seen with jax 0.10.2 on multi-device CPU hosts
  when jitted closures captured parameters. The sampler runs under ``checkify``: a
  categorical draw from log-probabilities with a NaN or no finite entry (a NaN network,
  ``draws.categorical``) raises ``checkify.JaxRuntimeError`` on the host, one line.
  ``fn.lower(params, key).compile()`` gives the same callable, compiled. Called inside
  another transformation (``jax.jit``, ``jax.vmap``, ``checkify.checkify`` of the
  caller's function) it runs the plain sampler, whose checks the caller's ``checkify``
  collects (outside one they are no-ops and a draw with no law returns
  ``draws.NO_LAW``).
  """
  run = lambda params, key: sample(key, lambda x, s: apply_fn(params, x, s), process,
                                   schedule, shape, **kwargs)
  return _Checked.jit(run)


def jit_clamped_sampler(apply_fn: Callable, process: Process, schedule: Schedule, shape,
                        **kwargs) -> Callable:
  """``fn(params, key, clamp_tokens, clamp_mask) -> (tokens, info)``: ``jit_sampler``
  with the clamp arrays ``[batch, length]`` as arguments too, so one compile serves every
  prompt (``long.generate`` runs it once per block)."""
  run = lambda params, key, tokens, mask: sample(
      key, lambda x, s: apply_fn(params, x, s), process, schedule, shape,
      clamp_tokens=tokens, clamp_mask=mask, **kwargs)
  return _Checked.jit(run)


class _Checked:
  """A checkified jitted sampler that raises its error on the host (one line: e.g. a
  categorical draw from NaN log-probabilities, ``draws.categorical``) and otherwise
  returns what the sampler returns; ``lower`` reaches the jitted function. Under a
  transformation (any argument a tracer) the error cannot reach the host here, so the
  plain jitted sampler runs instead and its checks belong to the caller's ``checkify``."""

  def __init__(self, fn, plain=None):
    self._fn = fn
    self._plain = plain

  @classmethod
  def jit(cls, run: Callable) -> "_Checked":
    """``run`` jitted twice: checkified (called from the host) and plain (called under
    the caller's transformation)."""
    return cls(jax.jit(checkify.checkify(run, errors=checkify.user_checks)), jax.jit(run))

  def __call__(self, *args):
    if self._plain is not None and any(isinstance(leaf, jax.core.Tracer) for leaf in
                                       jax.tree_util.tree_leaves(args)):
      return self._plain(*args)
    err, out = self._fn(*args)
    err.throw()
    return out

  def lower(self, *args):
    return _CheckedLowered(self._fn.lower(*args))


class _CheckedLowered:

  def __init__(self, lowered):
    self._lowered = lowered

  def compile(self):
    return _Checked(self._lowered.compile())

  def __getattr__(self, name):
    return getattr(self._lowered, name)


def clamp_from_template(template, vocab_size: int, hole: int = -1):
  """``(clamp_tokens, clamp_mask)`` from a ``[batch, length]`` template with ``hole`` ids."""
  template = jnp.asarray(template, jnp.int32)
  mask = template != hole
  _checks.check_tokens(jnp.where(mask, template, 0), vocab_size, "template")
  return jnp.where(mask, template, 0), mask
