"""The training loop: build, restore, step, log, evaluate, checkpoint, resume.

``train_and_evaluate(config, workdir)`` is what ``experiments/train.py`` runs. Re-running
it with the same ``workdir`` resumes from the newest checkpoint: params, optimizer,
EMA, step, PRNG key and (since the input pipeline is a pure function of the step) the
data position, so the loss curve continues exactly. SIGTERM (preemption) saves a
checkpoint at the next step boundary and returns.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from typing import Callable, Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from tcsm_jax import models, objective, processes, schedules
from tcsm_jax.data import pipeline
from tcsm_jax.training import checkpoint as ckpt_lib
from tcsm_jax.training import config as config_lib
from tcsm_jax.training import metrics as metrics_lib
from tcsm_jax.training import optim, partition, state as state_lib, step as step_lib


@dataclasses.dataclass
class Experiment:
  """Everything built from a config and a dataset (no arrays of the run itself)."""

  config: ml_collections.ConfigDict
  dataset: pipeline.TokenDataset
  process: processes.Process
  schedule: schedules.Schedule
  model: object          # DiffusionTransformer or CausalTransformer

  @property
  def causal(self) -> bool:
    return self.config.model.arch == "causal"

  def apply_fn(self, params, x_t, sigma, train: bool = False, key=None):
    """Denoiser logits ``[b, l, V]`` (diffusion models only)."""
    rngs = {"dropout": key} if (train and key is not None) else None
    return self.model.apply({"params": params}, x_t, sigma, deterministic=not train,
                            rngs=rngs)

  def init_params(self, key):
    seq = self.config.data.seq_len
    tokens = jnp.zeros((1, seq), jnp.int32)
    if self.causal:
      return self.model.init({"params": key}, tokens)["params"]
    return self.model.init({"params": key}, tokens, jnp.ones((1,)))["params"]

  def train_tokens(self):
    """The flat token array the train batches are cut from."""
    return self.dataset.train

  def train_chunk_len(self) -> int:
    return self.config.data.seq_len

  def loss_fns(self, target_fn=None):
    """``(train loss_fn, eval loss_fn)``; eval is the NLL (bound) in nats/token."""
    if self.causal:
      fn = ar_loss_fn(self.model)
      return fn, fn
    train = objective.make_loss_fn(self.config.loss, self.process, self.schedule,
                                   self.apply_fn, target_fn=target_fn)
    ev = objective.make_loss_fn(elbo_loss_config(self.process), self.process,
                                self.schedule, self.apply_fn)
    return train, ev


def ar_loss_fn(model):
  """Next-token cross-entropy (nats/token) of a causal model, first token after BOS."""

  def loss_fn(params, x0, key, train: bool = True):
    bos = jnp.full(x0.shape[:1] + (1,), model.cfg.vocab_size, x0.dtype)
    inp = jnp.concatenate([bos, x0[:, :-1]], 1)
    rngs = {"dropout": key} if train else None
    logits = model.apply({"params": params}, inp, deterministic=not train, rngs=rngs)
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    loss = -jnp.mean(jnp.take_along_axis(lp, x0[..., None], -1))
    return loss, {"loss": loss}

  return loss_fn


def schedule_from_config(cfg: ml_collections.ConfigDict) -> schedules.Schedule:
  kwargs = {"log_linear": ("eps",), "linear_alpha": ("eps",), "cosine": ("eps",),
            "geometric": ("sigma_min", "sigma_max"), "linear": ("sigma_max",)}
  if cfg.name not in kwargs:
    raise ValueError(f"unknown schedule.name {cfg.name!r}; choose one of {sorted(kwargs)}")
  return schedules.get(cfg.name, **{k: cfg[k] for k in kwargs[cfg.name]})


def build(config: ml_collections.ConfigDict,
          dataset: Optional[pipeline.TokenDataset] = None,
          workdir: str = "") -> Experiment:
  """Validates ``config`` and builds the experiment (loads data unless given)."""
  config_lib.validate(config)
  if config.finetune.kind != "none":
    from tcsm_jax.posttrain import finetune
    return finetune.build(config, workdir, dataset)
  dataset = pipeline.load(config, workdir) if dataset is None else dataset
  proc = processes.get(config.process, dataset.vocab_size)
  sched = schedule_from_config(config.schedule)
  if config.model.arch == "causal":
    model = models.build_causal(config, dataset.vocab_size)
  else:
    model = models.build_denoiser(config, dataset.vocab_size, proc.num_states)
    objective.validate_loss_config(config.loss, proc)
  return Experiment(config, dataset, proc, sched, model)


def elbo_loss_config(process: processes.Process) -> ml_collections.ConfigDict:
  """The NLL-bound objective of a process: masked ELBO (absorbing) or SEDD (uniform)."""
  cfg = ml_collections.ConfigDict(dict(
      kind="masked_elbo" if process.mask_id is not None else "sedd", form="score",
      divergence="gkl", weighting="constant", t_min=1e-5, stratified=True,
      teacher_weight=0.0))
  return cfg


def state_factory(exp: Experiment):
  """``(create(key) -> TrainState, optimizer, lr_schedule)`` for an experiment."""
  optimizer, lr_sched = optim.make_optimizer(exp.config.optim, exp.config.train.num_steps)

  def create(key):
    k_init, k_run = jax.random.split(key)
    return state_lib.create(exp.init_params(k_init), optimizer, k_run)

  return create, optimizer, lr_sched


class _Preemption:
  """Turns SIGTERM into a flag checked at step boundaries (main thread only)."""

  def __init__(self):
    self.requested = False
    self._old = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    logging.warning("SIGTERM received: checkpointing at the next step boundary")
    self.requested = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def _any_process(flag: bool) -> bool:
  """True on every process if ``flag`` is True on any (a collective: all must call)."""
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.asarray([flag], np.int32))))


def _log0(*args):
  """INFO log from process 0 only (one line per step for the whole job)."""
  if jax.process_index() == 0:
    logging.info(*args)


def _fmt_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       stop_at_step: Optional[int] = None,
                       target_fn: Optional[Callable] = None,
                       experiment: Optional[Experiment] = None) -> Dict[str, float]:
  """Trains until ``config.train.num_steps`` (or ``stop_at_step``), resuming if possible.

  Args:
    config: a config validated against ``tcsm_jax.training.config``.
    workdir: checkpoints, ``metrics.jsonl``, TensorBoard files and ``config.json``.
    stop_at_step: stop (with a checkpoint) at this step without changing the run's
      schedule -- the programmatic twin of a preemption.
    target_fn: optional teacher ``x0 -> log-conditionals`` for ``loss.teacher_weight``.
    experiment: a prebuilt ``Experiment`` (e.g. with an in-memory dataset).
  Returns:
    The last logged and evaluated scalars.
  """
  exp = build(config, workdir=workdir) if experiment is None else experiment
  if target_fn is None and config.teacher.kind != "none" and config.loss.teacher_weight > 0:
    from tcsm_jax.posttrain import distill
    target_fn = distill.load_teacher(config, exp.dataset.vocab_size)
  ds, tcfg = exp.dataset, config.train
  mesh = partition.make_mesh(config.mesh.fsdp)
  partition.check_batch_size(tcfg.batch_size, mesh)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  batch_sh = partition.batch_sharding(mesh)
  repl = partition.replicated(mesh)
  create, optimizer, lr_sched = state_factory(exp)
  abstract = jax.eval_shape(create, jax.random.PRNGKey(config.seed))
  state_sh = partition.state_shardings(abstract, mesh)

  loss_fn, eval_fn = exp.loss_fns(target_fn)
  train_step = jax.jit(
      step_lib.make_train_step(loss_fn, optimizer, lr_sched, tcfg.ema_decay,
                               tcfg.accum_steps),
      in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, repl),
      donate_argnums=(0,))
  eval_step = jax.jit(step_lib.make_eval_step(eval_fn),
                      in_shardings=(state_sh.ema_params, batch_sh, repl),
                      out_shardings=repl)

  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                               max_to_keep=tcfg.keep_checkpoints,
                               async_save=tcfg.async_checkpoint)
  if ckpt.latest_step() is not None:
    state, meta, start = ckpt.restore(ckpt_lib.abstract_like(abstract, state_sh))
    logging.info("resumed from step %d in %s", start, ckpt.directory)
  else:
    state = jax.jit(create, out_shardings=state_sh)(jax.random.PRNGKey(config.seed))
    start = 0
    logging.info("initialized %s parameters", f"{models.count_params(state.params):,}")

  sampler = pipeline.ChunkSampler(exp.train_tokens(), exp.train_chunk_len(),
                                  tcfg.batch_size, seed=config.seed,
                                  process_index=jax.process_index(),
                                  process_count=jax.process_count())
  writer = metrics_lib.MetricWriter(workdir)
  meta = {"config": json.loads(config.to_json_best_effort()),
          "dataset": pipeline.stats(ds), "dataset_name": ds.name}
  end = tcfg.num_steps if stop_at_step is None else min(stop_at_step, tcfg.num_steps)
  tokens_per_step = tcfg.batch_size * config.data.seq_len
  last: Dict[str, float] = {}

  def evaluate(step):
    key = jax.random.PRNGKey(config.seed + 1)
    vals = []
    for i, b in enumerate(pipeline.eval_batches(
        ds.validation, config.data.seq_len, tcfg.batch_size, tcfg.eval_batches,
        jax.process_index(), jax.process_count())):
      params = state.ema_params if config.eval.use_ema else state.params
      m = eval_step(params, partition.to_global(b, batch_sh),
                    jax.random.fold_in(key, i))
      vals.append(float(m["loss"]))
    if not vals:
      logging.warning("validation split shorter than one eval batch; no eval")
      return {}
    nll = float(np.mean(vals))
    out = {"eval/nll_bound": nll, "eval/bits_per_token": nll / np.log(2.0)}
    writer.write(step, out)
    _log0("eval step %d | NLL bound %.4f nats/token | %.4f bits/token", step, nll,
          nll / np.log(2.0))
    return out

  if start >= end:
    logging.info("%s is already at step %d (train.num_steps = %d): nothing to train; "
                 "raise --config.train.num_steps to continue", workdir, start,
                 tcfg.num_steps)
  else:
    # Compile ahead of time so that step times (and equal-compute comparisons) do not
    # include compilation; the compile time is logged and written once.
    t_c = time.time()
    train_step = train_step.lower(
        state, partition.to_global(sampler.batch(start), batch_sh)).compile()
    compile_sec = time.time() - t_c
    _log0("compiled the train step in %.1f s", compile_sec)
    writer.write(start, {"compile_sec": compile_sec})
  train_time = 0.0          # seconds spent in train steps (this process, this run)
  with _Preemption() as preempt:
    t0, s0 = time.time(), start
    step = start
    prev_m = None
    while step < end:
      batch = partition.to_global(sampler.batch(step), batch_sh)
      state, m = train_step(state, batch)
      step += 1
      # Keep at most two steps in flight: the host still runs one step ahead of the
      # devices, and a deep queue of dispatched collectives cannot starve XLA:CPU's
      # rendezvous (8 virtual devices on 2 cores deadlocked with ~100 queued steps).
      if prev_m is not None:
        jax.block_until_ready(prev_m)
      prev_m = m
      if step % tcfg.log_every == 0 or step == end:
        m = jax.device_get(m)
        dt = time.time() - t0
        train_time += dt
        sps = (step - s0) / max(dt, 1e-9)
        last = {k: float(v) for k, v in m.items()}
        last.update({"steps_per_sec": sps, "tokens_per_sec": sps * tokens_per_step,
                     "train_time_sec": train_time})
        writer.write(step, last)
        _log0("step %d/%d | loss %.4f | grad %.3f | %.2f steps/s | %.0f tok/s | "
              "skipped %d | ETA %s", step, tcfg.num_steps, last["loss"],
              last["grad_norm"], sps, sps * tokens_per_step, int(state.skipped),
              _fmt_eta((tcfg.num_steps - step) / max(sps, 1e-9)))
        if last["skipped"]:
          logging.warning("step %d skipped: non-finite loss or gradient", step)
        t0, s0 = time.time(), step
      t_pause = time.time()   # eval and checkpointing do not count as train time
      # A SIGTERM may reach the hosts of a pod at different steps: act on it only at
      # steps where all processes agree, so that they save the same step together.
      stop = preempt.requested
      if jax.process_count() > 1:
        stop = (step % tcfg.preemption_sync_every == 0 or step == end) and _any_process(
            preempt.requested)
      if step % tcfg.eval_every == 0 or step == tcfg.num_steps:
        last.update(evaluate(step))
      if step % tcfg.checkpoint_every == 0 or step == end or stop:
        ckpt.save(step, state, dict(meta, step=step))
      t0 += time.time() - t_pause
      if stop:
        logging.warning("stopping at step %d after SIGTERM", step)
        break
  ckpt.close()
  writer.close()
  return last
