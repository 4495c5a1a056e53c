"""What a config builds: data, process, schedule, model and loss functions.

``build(config, dataset=None, workdir='')`` validates the config and returns an
``Experiment`` (no arrays of the run itself). Two tables let higher layers plug in
without this layer importing them (dependencies point one way, down):

* ``BUILDERS[finetune.kind]``: builds the experiment of a fine-tuning run
  (``tcsm_jax.posttrain.finetune`` registers ``reward`` and ``preference``).
* ``TEACHERS[teacher.kind]``: loads a parametric target
  (``tcsm_jax.posttrain.distill`` registers ``ar``, ``mlm`` and ``markov``).

Models borrowed from other workdirs (a teacher, a fine-tuning reference) are pinned in
``Experiment.pins`` (``pins.py``).

Importing ``tcsm_jax`` imports ``tcsm_jax.posttrain``, so the tables are always full.

Frozen parameters (a teacher's, a fine-tuning reference's) live in
``Experiment.frozen`` and are passed to the jitted steps as *arguments*, sharded like
the student's, never closed over (closed-over arrays become constants baked into the
executable: slow compiles, a second copy in memory).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections

from tcsm_jax import errors, models, objective, processes, schedules, targets
from tcsm_jax.data import pipeline
from tcsm_jax.models import transformer
from tcsm_jax.training import config as config_lib
from tcsm_jax.training import optim, state as state_lib

# finetune.kind -> builder(config, workdir, dataset) -> Experiment
BUILDERS: Dict[str, Callable] = {}
# teacher.kind -> loader(config, dataset) -> (target_fn(frozen, x0), frozen params, pins)
TEACHERS: Dict[str, Callable] = {}


def register_builder(kind: str, fn: Callable) -> None:
  BUILDERS[kind] = fn


def register_teacher(kind: str, fn: Callable) -> None:
  TEACHERS[kind] = fn


@dataclasses.dataclass
class Experiment:
  """Everything built from a config and a dataset (no arrays of the run itself).

  Attributes:
    frozen: parameters that are not trained but enter the loss (a teacher's); passed
      to the jitted step as an argument. ``None`` when there are none.
    target_fn: ``(frozen, x0 [b, L]) -> [b, L, V]`` clean-space target
      log-conditionals (the teacher), or ``None``.
    pins: ``{role: record}`` of the models borrowed from other workdirs (``pins.py``).
  """

  config: ml_collections.ConfigDict
  dataset: pipeline.TokenDataset
  process: processes.Process
  schedule: schedules.Schedule
  model: Any             # DiffusionTransformer or CausalTransformer
  frozen: Any = None
  target_fn: Optional[Callable] = None
  pins: Dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def causal(self) -> bool:
    return self.config.model.arch == "causal"

  def apply_fn(self, params, x_t, sigma, train: bool = False, key=None,
               hidden: bool = False):
    """Denoiser logits ``[b, l, V]`` (diffusion models) from ``full_params``; with
    ``hidden``, ``objective.Hidden(states [b, l, D], head)`` (vocabulary tiling)."""
    rngs = {"dropout": key} if (train and key is not None) else None
    if hidden:
      states = self.model.apply({"params": params}, x_t, sigma, deterministic=not train,
                                rngs=rngs, return_hidden=True)
      return objective.Hidden(states, transformer.head_fn(self.model.cfg, params))
    return self.model.apply({"params": params}, x_t, sigma, deterministic=not train,
                            rngs=rngs)

  def full_params(self, params, frozen):
    """What ``apply_fn`` takes, from the trained ``params`` and the ``frozen`` ones."""
    del frozen
    return params

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

  def loss_fns(self) -> Tuple[Callable, Callable]:
    """``(train, eval)``: ``fn(params, frozen, x0, key, train) -> (loss, metrics)``.

    Eval is the NLL (bound) in nats/token: the masked ELBO / SEDD bound of a
    diffusion model, the exact NLL of a causal one.
    """
    pad_id = getattr(self.dataset, "pad_id", None)
    if self.causal:
      fn = ar_loss_fn(self.model, pad_id)
      wrapped = lambda p, frozen, x0, key, train=True: fn(p, x0, key, train)
      return wrapped, wrapped
    cfg, proc, sched = self.config, self.process, self.schedule

    def train_fn(params, frozen, x0, key, train=True):
      tfn = None
      if self.target_fn is not None:
        tfn = lambda x, key=None, **kw: targets.call_target(   # kw: pairs (hamming 2)
            functools.partial(self.target_fn, frozen, **kw), x, key)
      tile = bool(cfg.loss.get("tile_vocab", False))
      apply = lambda p, x_t, s, tr, k: self.apply_fn(self.full_params(p, frozen), x_t, s,
                                                     tr, k, hidden=tile)
      return objective.make_loss_fn(cfg.loss, proc, sched, apply, target_fn=tfn,
                                    pad_id=pad_id)(params, x0, key, train)

    def eval_fn(params, frozen, x0, key, train=False):
      apply = lambda p, x_t, s, tr, k: self.apply_fn(self.full_params(p, frozen), x_t, s,
                                                     tr, k)
      return objective.make_loss_fn(elbo_loss_config(proc), proc, sched, apply,
                                    pad_id=pad_id)(params, x0, key, train)

    return train_fn, eval_fn


def ar_loss_fn(model, pad_id: Optional[int] = None):
  """Next-token cross-entropy (nats/token) of a causal model, first token after BOS.

  ``x0 [b, L]``; positions holding ``pad_id`` are left out (per real token).
  """

  def loss_fn(params, x0, key, train: bool = True):
    bos = jnp.full(x0.shape[:1] + (1,), model.cfg.vocab_size, x0.dtype)
    inp = jnp.concatenate([bos, x0[:, :-1]], 1)
    rngs = {"dropout": key} if train else None
    logits = model.apply({"params": params}, inp, deterministic=not train, rngs=rngs)
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    nll = -jnp.take_along_axis(lp, x0[..., None], -1)[..., 0]
    if pad_id is None:
      loss = jnp.mean(nll)
    else:
      real = (x0 != pad_id).astype(jnp.float32)
      loss = jnp.sum(nll * real) / jnp.maximum(jnp.sum(real), 1.0)
    return loss, {"loss": loss}

  return loss_fn


def elbo_loss_config(process: processes.Process) -> ml_collections.ConfigDict:
  """The NLL-bound objective of a process: masked ELBO (absorbing) or SEDD (uniform)."""
  return ml_collections.ConfigDict(dict(
      kind="masked_elbo" if process.mask_id is not None else "sedd", form="score",
      divergence="gkl", weighting="constant", t_min=1e-5, stratified=True,
      teacher_weight=0.0))


_SCHEDULE_ARGS = {"log_linear": ("eps",), "linear_alpha": ("eps",), "cosine": ("eps",),
                  "geometric": ("sigma_min", "sigma_max"), "linear": ("sigma_max",)}


def schedule_from_config(cfg: ml_collections.ConfigDict) -> schedules.Schedule:
  """The noise schedule of a validated ``config.schedule``."""
  return schedules.get(cfg.name, **{k: cfg[k] for k in _SCHEDULE_ARGS[cfg.name]})


def build(config: ml_collections.ConfigDict,
          dataset: Optional[pipeline.TokenDataset] = None,
          workdir: str = "") -> Experiment:
  """Validates ``config`` and builds the experiment (loads data unless given).

  Raises:
    errors.ConfigError: a bad config, or a fine-tuning/teacher kind whose module is
      not imported (import ``tcsm_jax``).
  """
  config_lib.validate(config)
  if config.finetune.kind != "none":
    if config.finetune.kind not in BUILDERS:
      raise errors.ConfigError(f"finetune.kind={config.finetune.kind!r} has no builder; "
                               "import tcsm_jax (which registers tcsm_jax.posttrain)")
    return BUILDERS[config.finetune.kind](config, workdir, dataset)
  dataset = pipeline.load(config, workdir) if dataset is None else dataset
  proc = processes.get(config.process, dataset.vocab_size)
  sched = schedule_from_config(config.schedule)
  if config.model.arch == "causal":
    model = models.build_causal(config, dataset.vocab_size)
  else:
    model = models.build_denoiser(config, dataset.vocab_size, proc.num_states)
  exp = Experiment(config, dataset, proc, sched, model)
  if config.teacher.kind != "none" and config.loss.teacher_weight > 0:
    exp.target_fn, exp.frozen, exp.pins = load_teacher(config, dataset)
  return exp


def load_teacher(config: ml_collections.ConfigDict, dataset: pipeline.TokenDataset):
  """``(target_fn(frozen, x0), frozen, pins)`` of ``config.teacher`` (``TEACHERS``
  table), checked against the student's ``dataset``."""
  kind = config.teacher.kind
  if kind not in TEACHERS:
    raise errors.ConfigError(f"teacher.kind={kind!r} has no loader; import tcsm_jax "
                             "(which registers tcsm_jax.posttrain)")
  return TEACHERS[kind](config, dataset)


def state_factory(exp: Experiment):
  """``(create(key) -> TrainState, optimizer, lr_schedule)`` for an experiment."""
  optimizer, lr_sched = optim.make_optimizer(exp.config.optim, exp.config.train.num_steps)

  def create(key):
    k_init, k_run = jax.random.split(key)
    return state_lib.create(exp.init_params(k_init), optimizer, k_run)

  return create, optimizer, lr_sched
