"""The config schema (every key, with its default) and its validation.

``experiments/configs/base.py`` exposes ``default_config`` as ``get_config``; every other
config starts from it. ``validate`` fails on an unknown key, a value of the wrong type
or an out-of-range value, before anything runs.
"""

from __future__ import annotations

import ml_collections

_NUMBER = (int, float)


def default_config() -> ml_collections.ConfigDict:
  """Every configurable key with its default value (the schema)."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = "bundled"            # bundled | text8 | text_file | wordpiece | markov
  c.data.path = ""                   # text8.zip / text file / text corpus for wordpiece
  c.data.seq_len = 128
  # wordpiece (tfds + sentencepiece)
  c.data.tfds_name = ""              # e.g. "lm1b" or "openwebtext" (prepared locally)
  c.data.tfds_dir = ""
  c.data.text_key = "text"
  c.data.spm_vocab_size = 8192
  c.data.spm_model = ""              # existing .model file; trained into workdir if empty
  c.data.max_train_docs = 0          # 0 = all
  # markov (synthetic data with a known entropy rate)
  c.data.markov_vocab = 8
  c.data.markov_order = 1
  c.data.markov_tokens = 1_000_000
  c.data.markov_concentration = 0.3

  c.process = "absorbing"            # absorbing | uniform

  c.schedule = ml_collections.ConfigDict()
  c.schedule.name = "log_linear"     # log_linear | linear_alpha | cosine | geometric | linear
  c.schedule.eps = 1e-3
  c.schedule.sigma_min = 1e-4
  c.schedule.sigma_max = 20.0

  c.model = ml_collections.ConfigDict()
  c.model.arch = "diffusion"         # diffusion | causal (AR teacher / judge / baseline)
  c.model.size = "tiny"              # tiny | small | medium | gpt2_small | gpt2_medium
  c.model.dtype = "float32"          # float32 | bfloat16 (activations; params float32)
  c.model.num_layers = 0             # 0 = from size
  c.model.width = 0
  c.model.num_heads = 0
  c.model.mlp_ratio = 4
  c.model.cond_width = 128
  c.model.dropout = 0.0
  c.model.remat = False
  c.model.scan_layers = False        # lax.scan over layers: compile time flat in depth

  c.loss = ml_collections.ConfigDict()
  c.loss.kind = "tcsm"               # tcsm | masked_elbo | sedd
  c.loss.form = "score"              # score | distribution
  c.loss.divergence = "gkl"          # gkl | kl | lsif | itakura_saito
  c.loss.weighting = "masked_elbo"   # constant | dsigma | masked_elbo
  c.loss.t_min = 1e-5
  c.loss.stratified = True
  c.loss.teacher_weight = 0.0        # 0 = data target only; 1 = teacher only

  c.teacher = ml_collections.ConfigDict()
  c.teacher.kind = "none"            # none | ar | mlm | markov: parametric clean-space
                                     # target (markov: the exact law of markov data)
  c.teacher.workdir = ""             # the teacher's training workdir
  c.teacher.mode = "taylor"          # ar: exact | top_k | taylor
  c.teacher.top_k = 8

  c.finetune = ml_collections.ConfigDict()
  c.finetune.kind = "none"           # none | reward | preference
  c.finetune.ref_workdir = ""        # the frozen reference diffusion model's workdir
  c.finetune.beta = 1.0              # target p_ref exp(r / beta)
  c.finetune.reward = "classifier"   # classifier | token
  c.finetune.reward_mode = "taylor"  # neighbour reward differences: exact | taylor
  c.finetune.classifier_dir = ""     # default: <workdir>/classifier (trained if absent)
  c.finetune.classifier_steps = 300
  c.finetune.token_weights = "aeiou=1"  # token reward: "chars=weight,chars=weight"
  c.finetune.num_pairs = 256         # preference pairs generated from the reference
  c.finetune.pair_sample_steps = 64

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 3e-4
  c.optim.warmup_steps = 100
  c.optim.lr_schedule = "cosine"     # cosine | constant | linear
  c.optim.min_lr_ratio = 0.1
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.0
  c.optim.grad_clip = 1.0

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 32            # global, over all hosts and devices
  c.train.num_steps = 1000
  c.train.accum_steps = 1
  c.train.ema_decay = 0.999
  c.train.log_every = 50
  c.train.eval_every = 500
  c.train.eval_batches = 8
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 3
  c.train.async_checkpoint = True
  # Multi-process runs: every this many steps the processes agree on whether any of
  # them received SIGTERM, so that all checkpoint and stop at the same step.
  c.train.preemption_sync_every = 10

  c.mesh = ml_collections.ConfigDict()
  c.mesh.fsdp = 1                    # devices per parameter shard group

  c.eval = ml_collections.ConfigDict()
  c.eval.num_batches = 0             # 0 = the whole validation split
  c.eval.batch_size = 32
  c.eval.num_t = 8                   # Monte Carlo time samples per sequence
  c.eval.use_ema = True
  return c



def _check(cfg, schema, path):
  for key in cfg.keys():
    full = f"{path}{key}"
    if key not in schema:
      raise ValueError(f"unknown config key {full!r}; known keys here: "
                       f"{sorted(schema.keys())}")
    val, ref = cfg[key], schema[key]
    if isinstance(ref, ml_collections.ConfigDict):
      if not isinstance(val, ml_collections.ConfigDict):
        raise ValueError(f"config key {full!r} must be a section, got {type(val).__name__}")
      _check(val, ref, full + ".")
    elif isinstance(ref, bool):
      if not isinstance(val, bool):
        raise ValueError(f"config key {full!r} must be a bool, got {val!r}")
    elif isinstance(ref, _NUMBER):
      if isinstance(val, bool) or not isinstance(val, _NUMBER):
        raise ValueError(f"config key {full!r} must be a number, got {val!r}")
      if isinstance(ref, int) and not isinstance(val, int):
        raise ValueError(f"config key {full!r} must be an integer, got {val!r}")
    elif isinstance(ref, str) and not isinstance(val, str):
      raise ValueError(f"config key {full!r} must be a string, got {val!r}")


def validate(config: ml_collections.ConfigDict, schema=None) -> None:
  """Raises ValueError naming the first unknown key, wrong type or bad value."""
  if schema is None:
    schema = default_config()
  _check(config, schema, "")
  t = config.train
  for key in ("batch_size", "num_steps", "log_every", "eval_every", "checkpoint_every",
              "accum_steps", "keep_checkpoints", "preemption_sync_every"):
    if t[key] < 1:
      raise ValueError(f"config key 'train.{key}' must be >= 1, got {t[key]}")
  if t.batch_size % t.accum_steps:
    raise ValueError(f"train.batch_size {t.batch_size} must be divisible by "
                     f"train.accum_steps {t.accum_steps}")
  if not 0.0 <= t.ema_decay < 1.0:
    raise ValueError(f"train.ema_decay must lie in [0, 1), got {t.ema_decay}")
  if config.data.seq_len < 1:
    raise ValueError(f"data.seq_len must be >= 1, got {config.data.seq_len}")
  if config.process not in ("absorbing", "uniform"):
    raise ValueError(f"process must be 'absorbing' or 'uniform', got {config.process!r}")
  if config.model.arch not in ("diffusion", "causal"):
    raise ValueError(f"model.arch must be 'diffusion' or 'causal', got {config.model.arch!r}")
  if config.teacher.kind not in ("none", "ar", "mlm", "markov"):
    raise ValueError(f"teacher.kind must be none, ar, mlm or markov, got "
                     f"{config.teacher.kind!r}")
  if config.teacher.kind == "markov" and config.data.name != "markov":
    raise ValueError("teacher.kind='markov' (the exact law of the data) needs "
                     "data.name='markov'")
  tw = config.loss.teacher_weight
  if not 0.0 <= tw <= 1.0:
    raise ValueError(f"loss.teacher_weight must lie in [0, 1], got {tw}")
  if tw > 0 and config.teacher.kind == "none":
    raise ValueError("loss.teacher_weight > 0 needs teacher.kind = 'ar', 'mlm' or "
                     "'markov'")
  ft = config.finetune
  if ft.kind not in ("none", "reward", "preference"):
    raise ValueError(f"finetune.kind must be none, reward or preference, got {ft.kind!r}")
  if ft.kind != "none":
    if not ft.ref_workdir:
      raise ValueError("finetune.ref_workdir must name the reference model's workdir")
    if ft.beta <= 0:
      raise ValueError(f"finetune.beta must be > 0, got {ft.beta}")
    if ft.reward not in ("classifier", "token"):
      raise ValueError(f"finetune.reward must be classifier or token, got {ft.reward!r}")
    if ft.reward_mode not in ("exact", "taylor"):
      raise ValueError(f"finetune.reward_mode must be exact or taylor, got "
                       f"{ft.reward_mode!r}")
  if config.optim.lr <= 0:
    raise ValueError(f"optim.lr must be > 0, got {config.optim.lr}")
