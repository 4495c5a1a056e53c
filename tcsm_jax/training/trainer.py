"""The training loop: build, restore, step, log, evaluate, checkpoint, resume.

``train_and_evaluate(config, workdir)`` is what ``experiments/train.py`` runs. Re-running
it with the same ``workdir`` resumes from the newest good checkpoint: params, optimizer,
EMA, step, PRNG key and (since the input pipeline is a pure function of the step) the
data position, so the loss curve continues exactly. SIGTERM (preemption) and Ctrl-C
save a checkpoint at the next step boundary and return (``stopped_by``; the binaries
then exit with status 143 and 130 respectively). One trainer per workdir: the primary process holds
the workdir's lock (``workdir.lock``) for the run; a second one refuses at once.

Nothing good is lost, nothing bad is silent (``Health``):

* a checkpoint is saved as *good* when the recent (median) training loss is finite and
  within ``train.divergence_factor`` of the best recent loss, the last steps were not all
  skipped, and the last eval is within that factor of the best eval; keep-N rotation
  never deletes the newest good checkpoint nor the best one (``checkpoint.py``);
* ``train.max_consecutive_skipped`` skipped steps in a row, or ``train.max_bad_evals``
  bad evals in a row, stop the run with ``errors.TrainingError`` naming the last good
  checkpoint (the binary prints it as one line and exits 2);
* resuming with a config that changes what the saved state means (model, data,
  process, loss, optimizer, seed, ...) is refused with the list of differences before
  anything is written, unless ``train.allow_config_change``;
* models borrowed from other workdirs (``Experiment.pins``: a fine-tuning reference, a
  teacher, a reward classifier) are recorded in every checkpoint and in
  ``references.json``; resuming after one of them changed on disk is refused before
  anything is written, unless ``train.allow_reference_change`` (then recorded).

The loop's pieces are plain functions with explicit arguments.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import ml_collections
import numpy as np
from absl import logging

from tcsm_jax import errors, fs, models, targets
from tcsm_jax.data import pipeline, prefetch as prefetch_lib, prepared
from tcsm_jax.training import checkpoint as ckpt_lib
from tcsm_jax.training import config as config_lib
from tcsm_jax.training import experiment as experiment_lib
from tcsm_jax.training import metrics as metrics_lib
from tcsm_jax.training import partition, pins as pins_lib, restore, step as step_lib
from tcsm_jax.training import workdir as workdir_lib

# Re-exported: the builders live in ``experiment.py``.
Experiment = experiment_lib.Experiment
build = experiment_lib.build
state_factory = experiment_lib.state_factory
elbo_loss_config = experiment_lib.elbo_loss_config
ar_loss_fn = experiment_lib.ar_loss_fn
schedule_from_config = experiment_lib.schedule_from_config


class TrainingError(errors.UserError):
  """The run diverged or got stuck; the message names the last good checkpoint."""


# ---------------------------------------------------------------------------------------
# Signals.

def _interactive() -> bool:
  """A Python prompt or notebook kernel (not ended by a second Ctrl-C)."""
  return hasattr(sys, "ps1") or "ipykernel" in sys.modules


class _StopSignals:
  """SIGTERM and SIGINT (Ctrl-C) become a flag checked at step boundaries.

  A second Ctrl-C raises ``KeyboardInterrupt`` at once (no checkpoint); while a
  checkpoint is being written (``saving``) it ends the process (not a notebook's
  kernel) at once with status 130 and one line instead, rather than tearing orbax's save apart mid-way (its
  tracebacks): the step being written is left as orbax's temporary directory, never
  as a step that looks valid, and the trainer removes it at its next start.
  """

  def __init__(self):
    self.requested: Optional[str] = None
    self.saving = False
    self._old = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    name = signal.Signals(signum).name
    if self.requested == "SIGINT" and signum == signal.SIGINT:
      if self.saving and not _interactive():
        sys.stdout.flush()
        sys.stderr.write("interrupted again during a checkpoint save: quit without it "
                         "(the checkpoints saved before are intact)\n")
        sys.stderr.flush()
        os._exit(130)   # pylint: disable=protected-access
      raise KeyboardInterrupt
    logging.warning("%s received: checkpointing at the next step boundary%s", name,
                    " (Ctrl-C again to quit without saving)" if name == "SIGINT" else "")
    self.requested = name

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def _any_process(flag: bool) -> bool:
  """True on every process if ``flag`` is True on any (a collective: all must call)."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
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


# ---------------------------------------------------------------------------------------
# Health: what makes a checkpoint good, and when to stop.

@dataclasses.dataclass
class Health:
  """Tracks skipped steps, loss and eval against their best values.

  All inputs are replicated scalars, so every process reaches the same verdicts.
  """

  max_skipped: int
  factor: float
  max_bad_evals: int
  best_eval: float = math.inf
  best_loss: float = math.inf
  consecutive_skipped: int = 0
  bad_evals: int = 0
  last_eval_ok: bool = True
  window: list = dataclasses.field(default_factory=list)
  window_ok: bool = True

  @classmethod
  def from_config(cls, tcfg, meta: Optional[Dict[str, Any]] = None) -> "Health":
    h = cls(tcfg.max_consecutive_skipped, tcfg.divergence_factor, tcfg.max_bad_evals)
    meta = meta or {}
    h.best_eval = float(meta.get("best_eval", math.inf))
    h.best_loss = float(meta.get("best_loss", math.inf))
    return h

  def step(self, loss: float, skipped: bool) -> None:
    self.consecutive_skipped = self.consecutive_skipped + 1 if skipped else 0
    if not skipped:
      self.window.append(loss)

  def close_window(self) -> None:
    """At a log boundary: compare the window's median loss with the best one.

    The median, not the mean: per-step losses are heavy-tailed (a batch whose times
    sit near t = 0 under the ``masked_elbo`` weighting), and one such step made the
    mean of a healthy, converging window exceed ``factor`` x the best and its
    checkpoint "not good" (seen on 8 of 35 Markov runs with an exact target). A
    divergence moves the median: it needs most of the window's steps to be bad.
    """
    if not self.window:
      self.window_ok = self.consecutive_skipped == 0
      return
    mid = float(np.median(self.window))
    self.window = []
    self.window_ok = math.isfinite(mid) and mid <= self.factor * max(self.best_loss,
                                                                      1e-12)
    if math.isfinite(mid):
      self.best_loss = min(self.best_loss, mid)

  def eval(self, nll: float) -> bool:
    ok = math.isfinite(nll) and nll <= self.factor * max(self.best_eval, 1e-12)
    if ok:
      self.best_eval = min(self.best_eval, nll)
      self.bad_evals = 0
    else:
      self.bad_evals += 1
    self.last_eval_ok = ok
    return ok

  @property
  def good(self) -> bool:
    return self.window_ok and self.last_eval_ok and self.consecutive_skipped == 0

  def stop_reason(self) -> Optional[str]:
    if self.consecutive_skipped >= self.max_skipped:
      return (f"{self.consecutive_skipped} consecutive steps were skipped (non-finite "
              "loss or gradient; config key train.max_consecutive_skipped)")
    if self.bad_evals >= self.max_bad_evals:
      return (f"{self.bad_evals} consecutive evals were worse than "
              f"train.divergence_factor={self.factor} x the best NLL bound "
              f"{self.best_eval:.4f} (config key train.max_bad_evals)")
    return None

  def meta(self) -> Dict[str, float]:
    return {"best_eval": self.best_eval, "best_loss": self.best_loss}


# ---------------------------------------------------------------------------------------
# Pieces of the loop.

def check_resume(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses (ConfigError) a resume whose config changes what the saved state means.

  Harmless differences (cadence, length, eval, mesh, ...) are logged.
  """
  if not workdir_lib.has_config(workdir):
    logging.warning("%s has checkpoints but no config.json: resuming without a config "
                    "check", workdir)
    return
  saved = workdir_lib.load_config(workdir)
  refused, allowed = config_lib.resume_changes(saved, config)
  for line in allowed:
    logging.info("resuming with a changed config: %s", line)
  if refused and not config.train.allow_config_change:
    raise errors.ConfigError(
        f"workdir {workdir} holds a run with a different config; refusing to resume "
        f"(config.json is untouched). Changed: {'; '.join(refused)}. Use another "
        "--workdir, or --config.train.allow_config_change=true to resume anyway")
  for line in refused:
    logging.warning("resuming with a changed config (train.allow_config_change): %s",
                    line)


def has_checkpoints(workdir: str) -> bool:
  ckdir = fs.join(workdir, "checkpoints")
  return fs.isdir(ckdir) and any(n.isdigit() for n in fs.listdir(ckdir))


def compile_steps(exp: Experiment, mesh, state_sh, frozen_sh, batch_sh):
  """``(train_step(state, batch, frozen), eval_step(params, frozen, batch, key))``."""
  optimizer, lr_sched = experiment_lib.state_factory(exp)[1:]
  tcfg = exp.config.train
  loss_fn, eval_fn = exp.loss_fns()
  repl = partition.replicated(mesh)

  def train_step(state, batch, frozen):
    lf = lambda p, x, k, train: loss_fn(p, frozen, x, k, train)
    # Traced under the mesh: the model pins hidden states to the batch layout, so FSDP
    # gathers weights per layer instead of all-reducing activations (scale_plan).
    return step_lib.make_train_step(lf, optimizer, lr_sched, tcfg.ema_decay,
                                    tcfg.accum_steps, mesh=mesh)(state, batch)

  def eval_step(params, frozen, batch, key):
    return eval_fn(params, frozen, batch, key, False)[1]

  train = jax.jit(train_step, in_shardings=(state_sh, batch_sh, frozen_sh),
                  out_shardings=(state_sh, repl), donate_argnums=(0,))
  ev = jax.jit(eval_step, in_shardings=(state_sh.ema_params, frozen_sh, batch_sh, repl),
               out_shardings=repl)
  return train, ev


def evaluate(eval_step, params, frozen, exp: Experiment, batch_sh, step: int
             ) -> Dict[str, float]:
  """Validation NLL bound (nats and bits per token) of ``params``; ``{}`` if no batch."""
  config = exp.config
  key = jax.random.PRNGKey(config.seed + 1)
  vals = []
  for i, b in enumerate(pipeline.eval_batches(
      exp.dataset.validation, config.data.seq_len, config.train.batch_size,
      config.train.eval_batches, jax.process_index(), jax.process_count())):
    m = eval_step(params, frozen, partition.to_global(b, batch_sh),
                  jax.random.fold_in(key, i))
    vals.append(float(m["loss"]))
  if not vals:
    logging.warning("validation split shorter than one eval batch; no eval")
    return {}
  nll = float(np.mean(vals))
  _log0("eval step %d | NLL bound %.4f nats/token | %.4f bits/token", step, nll,
        nll / np.log(2.0))
  return {"eval/nll_bound": nll, "eval/bits_per_token": nll / np.log(2.0)}


class _Profiler:
  """``jax.profiler`` trace of steps ``[first, last)`` into ``<workdir>/profile``."""

  def __init__(self, spec: str, workdir: str):
    self.first, self.last = (map(int, spec.split(","))) if spec else (-1, -1)
    self.remote = fs.join(workdir, "profile")
    self.local = (tempfile.mkdtemp(prefix="tcsm_profile_") if fs.is_remote(workdir)
                  else os.fspath(self.remote))
    self.active = False
    if self.first >= 0:
      fs.check_inside(self.remote)        # the profiler writes here, not through fs

  def at(self, step: int) -> None:
    if step == self.first and not self.active:
      jax.profiler.start_trace(self.local)
      self.active = True
      _log0("profiling steps %d..%d into %s", self.first, self.last - 1, self.remote)
    elif step == self.last and self.active:
      self.stop()

  def stop(self) -> None:
    if not self.active:
      return
    jax.profiler.stop_trace()
    self.active = False
    if self.local != os.fspath(self.remote):
      for root, _, names in os.walk(self.local):
        for name in names:
          src = os.path.join(root, name)
          with open(src, "rb") as f:
            fs.write_bytes_atomic(fs.join(self.remote, os.path.relpath(src, self.local)),
                                  f.read())


def _check_tokenizer(meta: Dict[str, Any], exp: Experiment,
                     config: ml_collections.ConfigDict) -> None:
  """A resumed run must read the tokens it was trained on (same tokenizer hash)."""
  old = (meta.get("dataset") or {}).get("tokenizer_sha256")
  new = pipeline.stats(exp.dataset).get("tokenizer_sha256")
  if old and new and old != new and not config.train.allow_config_change:
    raise errors.ConfigError(
        f"the checkpoint was trained with tokenizer sha256 {old[:12]}..., data.path "
        f"{config.data.path!r} has {new[:12]}...; refusing to resume (config.json is "
        "untouched; --config.train.allow_config_change=true to resume anyway)")


def _place_frozen(frozen, mesh, min_bytes):
  if frozen is None:
    return None, None
  sh = partition.state_shardings(frozen, mesh, min_bytes)
  return jax.device_put(frozen, sh), sh


def _restore_or_init(ckpt, create, abstract, state_sh, seed: int
                     ) -> Tuple[Any, Dict[str, Any], int]:
  if ckpt.all_steps():
    state, meta, start = ckpt.restore(ckpt_lib.abstract_like(abstract, state_sh))
    newer = [s for s in ckpt.all_steps() if s > start]
    if newer:   # the next save moves the good ones to superseded/, drops the bad ones
      logging.warning("resuming from step %d: the newer steps %s are not good or did "
                      "not restore", start, newer)
    logging.info("resumed from step %d in %s", start, ckpt.directory)
    return state, dict(meta or {}), start
  state = jax.jit(create, out_shardings=state_sh)(jax.random.PRNGKey(seed))
  logging.info("initialized %s parameters", f"{models.count_params(state.params):,}")
  return state, {}, 0


_SHAPE_KEYS = ("arch", "num_layers", "width", "num_heads", "cond_width", "mlp_ratio")


def _check_init_from(workdir: str, exp: Experiment) -> None:
  """Before anything compiles: ``train.init_from``'s run must have this config's
  process, model shape, vocabulary and tokenizer (one ``ConfigError`` line if not)."""
  other = restore.load_config(workdir)        # WorkdirError if it is not a run
  pins_lib.require_same_data("init", workdir, restore.trained_on(workdir), exp.dataset)
  mine = config_lib.complete(exp.config)
  dims = lambda c: dict(zip(("num_layers", "width", "num_heads"),
                            config_lib._model_dims(c)))  # pylint: disable=protected-access
  a = {k: other.model.get(k) for k in _SHAPE_KEYS} | dims(other)
  b = {k: mine.model.get(k) for k in _SHAPE_KEYS} | dims(mine)
  diff = [f"model.{k}: {a[k]!r} there, {b[k]!r} here" for k in _SHAPE_KEYS if a[k] != b[k]]
  if other.process != mine.process:
    diff.append(f"process: {other.process!r} there, {mine.process!r} here")
  if diff:
    raise errors.ConfigError(f"train.init_from {workdir} holds another model ("
                             f"{'; '.join(diff)}): use its config "
                             f"(--config=experiments/configs/pretrained.py:{workdir})")


def _init_from(workdir: str, exp: Experiment, state, state_sh):
  """``(state with the parameters of workdir's run, its pin)``: a fresh run started
  from another run's (EMA) parameters (``train.init_from``), e.g. a converted peer
  checkpoint (checked by ``_check_init_from`` first)."""
  run = restore.load_run(workdir, dataset=exp.dataset)
  want = jax.tree_util.tree_leaves(state.params)
  have = jax.tree_util.tree_leaves(run.params)
  if (jax.tree_util.tree_structure(state.params)
      != jax.tree_util.tree_structure(run.params)) or any(
          a.shape != b.shape for a, b in zip(want, have)):
    raise errors.ConfigError(f"train.init_from {workdir}: its parameters do not have "
                             "this config's shapes")
  params = jax.device_put(run.params, state_sh.params)
  ema = jax.jit(lambda t: jax.tree.map(lambda a: a + 0, t),      # its own buffers: both
                out_shardings=state_sh.ema_params)(params)       # are donated to the step
  logging.info("initialized from %s (step %d, parameters %s)", workdir, run.step,
               run.fingerprint)
  return state.replace(params=params, ema_params=ema), run.pin()


# ---------------------------------------------------------------------------------------
# The loop.

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       stop_at_step: Optional[int] = None,
                       experiment: Optional[Experiment] = None,
                       target_fn: Optional[Callable] = None,
                       on_log: Optional[Callable[[int, Dict[str, float]], None]] = None
                       ) -> Dict[str, float]:
  """Trains until ``config.train.num_steps`` (or ``stop_at_step``), resuming if possible.

  Args:
    config: the run's config (validated here).
    workdir: local path or bucket URL: checkpoints, ``metrics.jsonl``, TensorBoard
      files, ``config.json`` and its history.
    stop_at_step: stop (with a checkpoint) at this step without changing the run's
      schedule -- the programmatic twin of a preemption.
    experiment: a prebuilt ``Experiment`` (e.g. with an in-memory dataset).
    target_fn: a teacher ``x0 -> [b, L, V]`` log-conditionals for
      ``loss.teacher_weight`` that replaces the one of ``config.teacher`` (anything it
      closes over is baked into the executable; ``config.teacher`` passes parameters
      as arguments).
    on_log: called as ``on_log(step, scalars)`` at every log and eval (live plots).
  Returns:
    The last logged and evaluated scalars, plus ``stopped_by`` ('SIGTERM'/'SIGINT')
    when a signal stopped the run.
  Raises:
    errors.ConfigError: a bad config, or a resume with a changed config.
    errors.WorkdirError: the workdir is a file.
    TrainingError: the run diverged (the good checkpoints are kept).
    errors.WorkdirError: another trainer holds the workdir's lock (``workdir.lock``).
  """
  config_lib.validate(config)
  workdir_lib.check(workdir)
  agree = _any_process if jax.process_count() > 1 else None
  with workdir_lib.lock(workdir, primary=jax.process_index() == 0, agree=agree):
    return _train(config, workdir, stop_at_step, experiment, target_fn, on_log)


def _train(config, workdir, stop_at_step, experiment, target_fn, on_log):
  """``train_and_evaluate`` once validated, while holding the workdir's lock."""
  tcfg = config.train
  mesh = partition.make_mesh(config.mesh.fsdp)
  partition.check_batch_size(tcfg.batch_size, mesh)
  if has_checkpoints(workdir):
    check_resume(config, workdir)
  exp = build(config, workdir=workdir) if experiment is None else experiment
  if tcfg.get("init_from") and not has_checkpoints(workdir):
    _check_init_from(tcfg.init_from, exp)
  if target_fn is not None:
    exp = dataclasses.replace(
        exp, target_fn=lambda frozen, x0, key=None, **kw: targets.call_target(
            functools.partial(target_fn, **kw), x0, key),   # kw: pairs (loss.hamming 2)
        frozen=None, pins={k: v for k, v in exp.pins.items() if k != "teacher"})

  batch_sh = partition.batch_sharding(mesh)
  create, _, _ = experiment_lib.state_factory(exp)
  abstract = jax.eval_shape(create, jax.random.PRNGKey(config.seed))
  state_sh = partition.state_shardings(abstract, mesh, config.mesh.fsdp_min_bytes)
  frozen, frozen_sh = _place_frozen(exp.frozen, mesh, config.mesh.fsdp_min_bytes)
  train_step, eval_step = compile_steps(exp, mesh, state_sh, frozen_sh, batch_sh)

  ckpt = ckpt_lib.Checkpointer(fs.join(workdir, "checkpoints"),
                               max_to_keep=tcfg.keep_checkpoints,
                               async_save=tcfg.async_checkpoint, clean_tmp=True)
  state, meta0, start = _restore_or_init(ckpt, create, abstract, state_sh, config.seed)
  if tcfg.get("init_from") and not ckpt.all_steps():
    state, init_pin = _init_from(tcfg.init_from, exp, state, state_sh)
    exp = dataclasses.replace(exp, pins=dict(exp.pins, init=init_pin))
  elif "init" in (meta0.get("pins") or {}):          # keep the record across resumes
    exp = dataclasses.replace(exp, pins=dict(exp.pins, init=meta0["pins"]["init"]))
  _check_tokenizer(meta0, exp, config)
  pin_changes = list(meta0.get("pin_changes", [])) + [
      dict(c, step=start) for c in pins_lib.check_unchanged(
          meta0.get("pins"), exp.pins, tcfg.allow_reference_change, workdir)]
  if jax.process_index() == 0:
    workdir_lib.save_config(workdir, config, start)   # only after a good restore
    if config.data.name == "prepared":   # decode samples without the data at hand
      prepared.copy_tokenizer(config.data.path, fs.join(workdir, "tokenizer"))
    if exp.pins:
      pins_lib.write_record(workdir, exp.pins, pin_changes)
  health = Health.from_config(tcfg, meta0)

  sampler = pipeline.ChunkSampler(exp.train_tokens(), exp.train_chunk_len(),
                                  tcfg.batch_size, seed=config.seed,
                                  process_index=jax.process_index(),
                                  process_count=jax.process_count())
  writer = metrics_lib.MetricWriter(workdir, tensorboard=tcfg.tensorboard)
  meta = {"config": json.loads(config_lib.to_json(config)),
          "dataset": pipeline.stats(exp.dataset), "dataset_name": exp.dataset.name,
          "pins": exp.pins, "pin_changes": pin_changes}
  end = tcfg.num_steps if stop_at_step is None else min(stop_at_step, tcfg.num_steps)
  tokens_per_step = tcfg.batch_size * config.data.seq_len
  profiler = _Profiler(tcfg.profile_steps, workdir)
  last: Dict[str, float] = {}

  def report(step, scalars):
    writer.write(step, scalars)
    if on_log is not None:
      on_log(step, dict(scalars))

  if start >= end:
    logging.info("%s is already at step %d (train.num_steps = %d): nothing to train; "
                 "raise --config.train.num_steps to continue", workdir, start,
                 tcfg.num_steps)
  else:
    # Compile ahead of time so that step times (and equal-compute comparisons) do not
    # include compilation; the compile time is logged and written once.
    t_c = time.time()
    train_step = train_step.lower(
        state, partition.to_global(sampler.batch(start), batch_sh), frozen).compile()
    compile_sec = time.time() - t_c
    _log0("compiled the train step in %.1f s", compile_sec)
    writer.write(start, {"compile_sec": compile_sec})

  def make_batch(s):
    # This host's rows of the global batch of step s, on the devices. Runs on the
    # prefetch thread (train.prefetch > 0), overlapping the steps in flight.
    with jax.profiler.TraceAnnotation("prefetch_batch", step=s):
      return partition.to_global(sampler.batch(s), batch_sh)

  train_time = 0.0          # seconds spent in train steps (this process, this run)
  last_good = ckpt.latest_good_step() if ckpt.all_steps() else None
  batches = prefetch_lib.Prefetcher(make_batch, start, max(start, end),
                                    depth=tcfg.get("prefetch", 2))
  with _StopSignals() as signals, batches:
    try:
      t0, s0 = time.time(), start
      step = start
      prev_m = None
      while step < end:
        profiler.at(step)
        batch = batches.get(step)
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
          state, m = train_step(state, batch, frozen)
        step += 1
        # Keep at most two steps in flight: the host runs one step ahead of the
        # devices, and a deep queue of dispatched collectives cannot starve XLA:CPU's
        # rendezvous (8 virtual devices on 2 cores deadlocked with ~100 queued steps).
        if prev_m is not None:
          loss, skipped = jax.device_get((prev_m["loss"], prev_m["skipped"]))
          health.step(float(loss), bool(skipped))
        prev_m = m
        at_end = step == end
        if at_end:      # the last step's own verdict before deciding anything
          loss, skipped = jax.device_get((m["loss"], m["skipped"]))
          health.step(float(loss), bool(skipped))
          prev_m = None
        if step % tcfg.log_every == 0 or at_end:
          m = jax.device_get(m)
          dt = time.time() - t0
          train_time += dt
          sps = (step - s0) / max(dt, 1e-9)
          last = {k: float(v) for k, v in m.items()}
          last.update({"steps_per_sec": sps, "tokens_per_sec": sps * tokens_per_step,
                       "train_time_sec": train_time})
          report(step, last)
          health.close_window()
          _log0("step %d/%d | loss %.4f | grad %.3f | %.2f steps/s | %.0f tok/s | "
                "skipped %d | ETA %s", step, tcfg.num_steps, last["loss"],
                last["grad_norm"], sps, sps * tokens_per_step, int(state.skipped),
                _fmt_eta((tcfg.num_steps - step) / max(sps, 1e-9)))
          if last["skipped"]:
            logging.warning("step %d skipped: non-finite loss or gradient", step)
          t0, s0 = time.time(), step
        t_pause = time.time()   # eval and checkpointing do not count as train time
        # A signal may reach the hosts of a pod at different steps: act on it only at
        # steps where all processes agree, so that they save the same step together.
        stop = signals.requested is not None
        if jax.process_count() > 1:
          stop = (step % tcfg.preemption_sync_every == 0 or at_end) and _any_process(
              stop)
        eval_now = None
        if step % tcfg.eval_every == 0 or step == tcfg.num_steps:
          params = state.ema_params if config.eval.use_ema else state.params
          ev = evaluate(eval_step, params, frozen, exp, batch_sh, step)
          if ev:
            ok = health.eval(ev["eval/nll_bound"])
            ev["eval/good"] = float(ok)
            if not ok:
              logging.warning("eval step %d: NLL bound %.4f is worse than %.2f x the "
                              "best %.4f: this checkpoint is not kept as good", step,
                              ev["eval/nll_bound"], health.factor, health.best_eval)
            report(step, ev)
            last.update(ev)
            eval_now = ev["eval/nll_bound"]
        if step % tcfg.checkpoint_every == 0 or at_end or stop:
          good = health.good
          signals.saving = True
          ckpt.save(step, state, dict(meta, step=step, good=good, **health.meta()),
                    good=good, metric=eval_now if good else None)
          signals.saving = False
          if good:
            last_good = step
          writer.flush()
        reason = health.stop_reason()
        if reason:
          ckpt.wait()
          where = (f"the last good checkpoint is step {last_good} in "
                   f"{fs.join(workdir, 'checkpoints')}" if last_good is not None
                   else "no good checkpoint was saved")
          raise TrainingError(f"stopped at step {step}: {reason}; {where} (a re-run "
                              "resumes from it: lower optim.lr or fix the data first)")
        t0 += time.time() - t_pause
        if stop:
          logging.warning("stopping at step %d after %s", step,
                          signals.requested or "a signal on another process")
          last["stopped_by"] = signals.requested or "peer"
          break
    finally:
      signals.saving = True       # an asynchronous save may still be committing
      profiler.stop()
      ckpt.close()
      writer.close()
  return last
