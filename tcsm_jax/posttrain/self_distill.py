r"""Self-distillation through TCSM: a student learns to do in one step what the frozen
teacher (the model itself) does in ``k`` steps (SDTT, Deschenaux and Gulcehre, arXiv
2410.21035, in the TCSM frame).

**The target, in clean space.** The absorbing sampler (``sampling.steps``) moves
``x_t -> x_s`` by revealing each masked position with probability
``u(t, s) = (a_s - a_t) / (1 - a_t)``, whatever the denoiser says, and drawing the
revealed token from the denoiser's law at that position. ``k`` teacher steps on the
grid ``t = t_0 > t_1 > ... > t_k = s`` give a law ``T_k(x_s | x_t)`` over whole
sequences; one student step gives the product law
``prod_i [(1 - u) 1{x_s^i = m} + u p_S(x_s^i | x_t)_i]``. Since each position's
reveal events are independent coin flips with the schedule's probabilities (also under
the teacher), position ``i`` is still masked at ``s`` with probability ``1 - u`` under
both, and the student step has exactly the teacher's per-position marginals iff

  ``p_S(y | x_t)_i = q_k(y | x_t)_i := P_T(x_s^i = y | x_s^i revealed, x_t)``,

the law of the token the teacher writes at ``i`` within its ``k`` steps. ``q_k`` is the
clean-space law the ``k`` steps imply for a position revealed between ``t`` and ``s``
(the student's one step only ever uses its denoiser there), and the product of these
marginals is the closest one-step law to ``T_k`` (the M-projection: ``argmin`` over
product laws ``Q`` of ``KL(T_k || Q)`` is the product of ``T_k``'s marginals). The joint
correlations ``T_k`` builds across positions within the ``k`` steps are what no
factorized step can hold: that is the price of the fewer calls, here and in SDTT.
``k = 1`` gives ``q_1 = p_T(. | x_t)``: one step of the teacher is its own fixed point.
(Not SDTT's target, which puts the teacher's denoiser at ``x_s`` on positions still
masked there: that is the law of ``x_0^i``, equal to ``q_k`` for an exact continuous
chain, not for the ``k``-step teacher.)

**The estimator.** Write ``J_i`` for the teacher step that reveals ``i``; its law is
the schedule's alone, and up to step ``J_i`` the trajectory of the other positions is
that of the chain with ``i`` held masked. Hence, with ``u_j = u(t_{j-1}, t_j)``,
``P(J_i = j | J_i <= k) = u_j P(J_i >= j) / u`` and

  ``q_k(. | x_t)_i = E[ sum_{j=1}^k 1{i masked at t_{j-1}} (u_j / u) p_T(. | x_{t_{j-1}})_i ]``

over one teacher trajectory from ``x_t`` (``k`` teacher calls, the steps drawn with the
project's exact draws). The bracket is the target ``q_hat``: unbiased for ``q_k`` at
every masked position (not only those the trajectory revealed), normalized in
expectation but not draw by draw. It enters ``losses.tcsm_loss`` as a target posterior
(``target_log_posterior``), the way every target does. With the ``kl`` divergence (score
or distribution form) the loss is linear in the target, so its gradient is unbiased
and its minimizer is ``p_S = q_k`` exactly (tested on an enumerable space with the
Bayes-optimal teacher). The other divergences see ratios of ``q_hat`` and are
consistent as its spread vanishes (small steps: ``u_j / u -> 1 / k``, every position
masked), like the sampled ``top_k_tail`` teacher.

**Training.** ``x_t`` is a forward corruption of a data sequence at a time ``t`` of the
student's grid (``finetune.distill_steps = M`` equal steps from 1 to 0: the sampler's
grid with ``t_end = 0``, whose last step reveals every position left, so sampling
takes exactly ``M`` network calls with ``final_denoise = False``), ``s`` the next grid
time, and the teacher runs ``k = finetune.distill_k`` equal steps in between (so the
teacher's grid has ``k M`` steps).
The student is a full copy of the teacher's network started at its weights; the run
is an ordinary workdir (``finetune.kind = 'self_distill'``, the teacher pinned as a
reference in ``finetune.ref_workdir``) that samples, evaluates and resumes like any
other. ``experiments.distill --self --rounds=R`` chains rounds: round ``r`` distils the
``N / 2^(r-1)``-step model into ``N / 2^r`` steps, each student the next teacher.

**The uniform process (DUO's discrete consistency distillation, arXiv 2506.10892).**
DUO distils a uniform-state model by letting the student, at ``x_t``, match the
teacher's denoiser at the ``x_s`` that a deterministic (Gaussian-probability-flow
derived) trajectory reaches. Its discrete, stochastic analogue in the TCSM frame would
match, per position, one student step to ``k`` teacher steps of the uniform process's
analytic step (``steps.reverse_transition_log_probs``, Tweedie). The form above does
not cover it, for a precise reason: uniform-process positions have no reveal time (every step may move
any position), so the teacher's ``x_s^i`` marginal is not ``u q_k``. The student's
analytic step maps its denoiser ``p`` to the ``x_s^i`` law by a ``V x V`` linear map
(``q(z) = K_{s->t}(z, x_t) [b_s sum_a p(a) / K_t(a, x_t) + a_s p(z) / K_t(z, x_t)]``,
``steps.reverse_transition_log_probs``), so the denoiser that reproduces the teacher's
marginal is that map's preimage, which can leave the probability simplex (negative
entries) and is then no target posterior any divergence here accepts. That, and DUO's
deterministic trajectory (its Gaussian relaxation and curriculum), are not implemented:
``self_distill`` requires ``process = 'absorbing'`` (the config table says so).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from tcsm_jax import errors, losses, objective
from tcsm_jax.posttrain import finetune
from tcsm_jax.processes import Absorbing
from tcsm_jax.sampling import steps as steps_lib
from tcsm_jax.training import experiment as experiment_lib

T_END = 0.0           # the grid's last time: the last step reveals every position


def k_step_target(key, teacher_log_probs: Callable, process: Absorbing, x_t, sig_path,
                  draw: str = "exact"):
  """``q_hat [b, l, V]`` (log): the teacher's ``k``-step target at ``x_t`` (module
  docstring), one teacher trajectory per row.

  Args:
    key: PRNG key of the trajectory.
    teacher_log_probs: ``(x [b, l], sigma [b]) -> [b, l, V]`` normalized teacher
      log-probabilities (``steps.model_log_probs_fn``).
    x_t: ``[b, l]`` tokens (mask id ``process.mask_id``).
    sig_path: ``[k + 1, b]`` decreasing noise levels ``sigma(t_0) > ... > sigma(t_k)``.
    draw: the teacher steps' draw (``exact`` or ``gumbel32``).
  Returns:
    ``[b, l, V]`` float32 log-weights: ``log q_hat`` at masked positions (normalized
    in expectation), the one-hot of the token elsewhere.
  """
  sig_path = jnp.asarray(sig_path, jnp.float32)
  k = sig_path.shape[0] - 1
  if k < 1:
    raise ValueError("sig_path needs k + 1 >= 2 noise levels")
  v = process.vocab_size
  log_u, _ = steps_lib.absorbing_unmask_log_prob(sig_path[0], sig_path[-1])   # [b]
  x = x_t
  acc = jnp.zeros(x_t.shape + (v,), jnp.float32)
  for j in range(k):
    lp = teacher_log_probs(x, sig_path[j])
    log_uj, _ = steps_lib.absorbing_unmask_log_prob(sig_path[j], sig_path[j + 1])
    w = jnp.exp(log_uj - log_u)[:, None, None]                               # u_j / u
    masked = (x == process.mask_id)[..., None]
    acc = acc + jnp.where(masked, w * jnp.exp(lp), 0.0)
    if j < k - 1:
      x = steps_lib.absorbing_step(jax.random.fold_in(key, j), process, lp, x,
                                   sig_path[j], sig_path[j + 1], draw=draw)
  was_masked = (x_t == process.mask_id)[..., None]
  onehot = jax.nn.one_hot(jnp.where(x_t == process.mask_id, 0, x_t), v, dtype=bool)
  return jnp.where(was_masked, jnp.log(acc), jnp.where(onehot, 0.0, -jnp.inf))


def grid(distill_steps: int, t_end: float = T_END):
  """``[M + 1]`` the student's time grid (the sampler's ``linspace(1, t_end, M + 1)``;
  sample with ``t_end = T_END, final_denoise = False``)."""
  return jnp.linspace(1.0, t_end, distill_steps + 1)


def round_config(base, teacher_dir: str, student_steps: int, train_steps: int = 0,
                 divergence: str = "kl", k: int = 2):
  """The config of one round (an ordinary run's config): ``base`` (the teacher's
  training settings) distilling ``teacher_dir`` into a ``student_steps``-step model
  (``k`` teacher steps per student step), ``train_steps`` steps (0: ``base``'s)."""
  cfg = base.copy_and_resolve_references()
  cfg.finetune.kind = "self_distill"
  cfg.finetune.ref_workdir = teacher_dir
  cfg.finetune.distill_steps = student_steps
  cfg.finetune.distill_k = k
  cfg.sampling.steps = student_steps
  cfg.teacher.kind = "none"
  cfg.loss.kind = "tcsm"
  cfg.loss.teacher_weight = 0.0
  cfg.loss.divergence = divergence
  if train_steps:
    cfg.train.num_steps = train_steps
  return cfg


@dataclasses.dataclass
class SelfDistillExperiment(experiment_lib.Experiment):
  teacher: Any = None          # the teacher's Experiment (frozen params: ``frozen``)

  def init_params(self, key):           # the student starts at the teacher
    del key
    return jax.tree.map(lambda a: jnp.array(a, copy=True), self.frozen)

  def loss_fns(self):
    """``(train, eval)``: ``fn(params, frozen, x0, key, train)``, frozen = teacher."""
    cfg, ft = self.config, self.config.finetune
    proc, sched = self.process, self.schedule
    m_steps, k = int(ft.distill_steps), int(ft.distill_k)
    ts = grid(m_steps)
    draw = cfg.sampling.draw
    teacher_apply = self.teacher.apply_fn

    def train_fn(params, frozen, x0, key, train=True):
      b, length = x0.shape
      k_m, k_x, k_d, k_tr = jax.random.split(key, 4)
      m = jax.random.randint(k_m, (b,), 0, m_steps)
      t, s = ts[m], ts[m + 1]
      sigma, dsigma = sched(t)
      x_t = proc.sample_forward(k_x, x0, sigma)
      fracs = jnp.linspace(0.0, 1.0, k + 1)[:, None]
      sig_path = sched.sigma_bar(t[None] + (s - t)[None] * fracs)           # [k+1, b]
      sig_path = sig_path.at[0].set(sigma)
      teacher = steps_lib.model_log_probs_fn(
          lambda x, sg: teacher_apply(frozen, x, sg), proc)
      log_q = jax.lax.stop_gradient(k_step_target(k_tr, teacher, proc, x_t, sig_path,
                                                  draw))
      logits = self.apply_fn(params, x_t, sigma, train, k_d)
      per = losses.tcsm_loss(logits, x0, x_t, sigma, proc, form=cfg.loss.form,
                             divergence=cfg.loss.divergence, target_log_posterior=log_q)
      w = losses.time_weight(cfg.loss.weighting, sigma, dsigma)
      loss = jnp.mean(w * per.sum(-1)) / length
      return loss, {"loss": loss}

    def eval_fn(params, frozen, x0, key, train=False):
      apply = lambda p, x_t, sg, tr, kk: self.apply_fn(p, x_t, sg, tr, kk)
      return objective.make_loss_fn(experiment_lib.elbo_loss_config(proc), proc, sched,
                                    apply)(params, x0, key, train)

    return train_fn, eval_fn


def build(config, workdir: str = "", dataset=None) -> SelfDistillExperiment:
  """The self-distillation experiment: teacher restored from ``finetune.ref_workdir``
  and pinned; the student is the teacher's network (``config.model`` is not used)."""
  ft = config.finetune
  ds, run = finetune.load_reference(config, workdir, dataset)
  teacher = run.experiment
  if run.config.finetune.kind not in ("none", "self_distill"):
    raise errors.ConfigError(f"finetune.kind='self_distill' distils a plain diffusion "
                             f"model or a self-distilled one; {ft.ref_workdir} holds a "
                             f"{run.config.finetune.kind!r} fine-tuning run")
  if teacher.causal or not isinstance(teacher.process, Absorbing):
    raise errors.ConfigError(f"finetune.kind='self_distill' needs an absorbing diffusion "
                             f"teacher; {ft.ref_workdir} holds another model")
  if run.config.data.seq_len != config.data.seq_len:
    raise errors.ConfigError("self-distillation must keep the teacher's data.seq_len "
                             f"({run.config.data.seq_len})")
  return SelfDistillExperiment(config, ds, teacher.process, teacher.schedule,
                               teacher.model, frozen=run.params,
                               pins={"reference": run.pin()}, teacher=teacher)


experiment_lib.register_builder("self_distill", build)
