"""The config schema (every key, with its default) and its one validation table.

``experiments/configs/base.py`` exposes ``default_config`` as ``get_config``; every other
config starts from it. ``validate`` is the one check every binary and every library
entry point runs before anything is written: unknown keys, wrong types, the allowed
choices (``CHOICES``), numeric ranges (``RANGES``) and cross-field rules (``RULES``).
It raises ``errors.ConfigError`` naming the key. Library functions below this layer
(schedules, losses, models) trust a validated config.

``resume_changes`` classifies the differences between a workdir's saved config and a
new one: keys that change what the saved state means refuse a resume
(``train.allow_config_change`` overrides), the rest are logged.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Tuple

import ml_collections

from tcsm_jax import divergences, errors, losses, objective, schedules
from tcsm_jax.models import transformer
from tcsm_jax.training import optim

_NUMBER = (int, float)


def default_config() -> ml_collections.ConfigDict:
  """Every configurable key with its default value (the schema)."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = "bundled"            # bundled | text8 | text_file | wordpiece | markov
                                     # | prepared (experiments.prepare_data output)
  c.data.path = ""                   # text8.zip / text file / text corpus for wordpiece
  c.data.seq_len = 128
  c.data.layout = "packed"           # packed: documents joined by EOS | padded: one
                                     # document per row, padding out of loss and NLL
  c.data.verify = "once"             # prepared shards: sha256 once | always | size
  c.data.max_dropped_fraction = 0.2  # text_file: more cleaned away is an error
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
                                     # | dit (MDLM/SEDD/DUO's DiT: models/dit.py)
  c.model.size = "tiny"              # tiny | small | medium | gpt2_small | gpt2_medium
                                     # | 1b | 7b (planning sizes: scale_plan)
  c.model.dtype = "float32"          # float32 | bfloat16 (activations; params float32)
  c.model.num_layers = 0             # 0 = from size
  c.model.width = 0
  c.model.num_heads = 0
  c.model.mlp_ratio = 4
  c.model.cond_width = 128
  c.model.dropout = 0.0
  c.model.remat = False
  c.model.remat_policy = "nothing_saveable"  # with remat: nothing_saveable |
                                     # dots_with_no_batch_dims_saveable | dots_saveable |
                                     # everything_saveable (jax.checkpoint_policies)
  c.model.scan_layers = False        # lax.scan over layers: compile time flat in depth
  c.model.time_conditioning = True   # dit: condition on sigma_bar (False: on 0, MDLM-OWT)
  c.model.attention_impl = "auto"    # auto | xla | cudnn (GPU, bfloat16) | einsum |
                                     # splash (TPU; seq_len % 128 == 0);
                                     # auto = cuDNN on GPU in bf16, splash on TPU,
                                     # XLA's otherwise, head-major einsum on CPU

  c.loss = ml_collections.ConfigDict()
  c.loss.kind = "tcsm"               # tcsm | masked_elbo | sedd
  c.loss.form = "score"              # score | distribution
  c.loss.divergence = "gkl"          # gkl | kl | lsif | itakura_saito
  c.loss.weighting = "masked_elbo"   # constant | dsigma | masked_elbo
  c.loss.t_min = 1e-5
  c.loss.stratified = True
  c.loss.teacher_weight = 0.0        # 0 = data target only; 1 = teacher only
  c.loss.hamming = 1                 # score-form neighbourhood: 1 | 2 (pair blocks,
                                     # small V and L; tcsm_jax/hamming.py)
  c.loss.hamming_pairs = 0           # hamming 2: pairs per step, 0 = all L(L-1)/2
  c.loss.chunk_size = 0              # > 0: the loss over [b, L, V] logits in chunks of
                                     # this many positions (memory at large V; same
                                     # values and gradients); 0 = all at once
  c.loss.tile_vocab = False          # with chunk_size > 0: the output layer too runs
                                     # per chunk (no [b, L, V] logits at all)

  c.teacher = ml_collections.ConfigDict()
  c.teacher.kind = "none"            # none | ar | mlm | markov: parametric clean-space
                                     # target (markov: the exact law of markov data)
  c.teacher.workdir = ""             # the teacher's training workdir, or hf:DIR (a
                                     # Hugging Face GPT-2; teacher.kind = ar)
  c.teacher.mode = "taylor"          # ar: exact | top_k | top_k_tail | taylor
  c.teacher.top_k = 8
  c.teacher.tail_samples = 4         # top_k_tail: sampled tail tokens per position

  c.finetune = ml_collections.ConfigDict()
  c.finetune.kind = "none"           # none | reward | preference | self_distill
  c.finetune.ref_workdir = ""        # the frozen reference diffusion model's workdir
  c.finetune.beta = 1.0              # target p_ref exp(r / beta)
  c.finetune.reward = "classifier"   # classifier | token
  c.finetune.reward_mode = "taylor"  # neighbour reward differences: exact | taylor
  c.finetune.classifier_dir = ""     # default: <workdir>/classifier (trained if absent);
                                     # hf:DIR = a Hugging Face GPT-2 sequence classifier
  c.finetune.classifier_label = 1    # hf classifier: reward = log p(label | x)
  c.finetune.classifier_steps = 300
  c.finetune.token_weights = "aeiou=1"  # token reward: "chars=weight,chars=weight"
  c.finetune.num_pairs = 256         # preference pairs generated from the reference
  c.finetune.pair_sample_steps = 64
  c.finetune.importance_weights = "none"  # reward: none | self_normalized (B softmax r/beta)
  c.finetune.reward_target = "tilted_denoiser"  # reward: tilted_denoiser | clean_conditionals
                                     # (reference as MLM teacher, L extra passes; absorbing)
  c.finetune.parameterization = "explicit"  # explicit (log-ratio head over the reference)
                                     # | implicit (a trained copy of the reference)
  c.finetune.ratio_bound = 0.0       # explicit: |head| <= B via B tanh(g / B); 0 = none
  c.finetune.ratio_reg = 0.0         # lam * Var_{p_ref}[log r] per position; 0 = none
  c.finetune.distill_steps = 128     # self_distill: the student's sampling steps M
  c.finetune.distill_k = 2           # self_distill: teacher steps per student step

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
  # Safety (nothing lost, nothing silent): a checkpoint is "good" when its loss and
  # parameters are finite, the last steps were not all skipped, and its eval NLL bound
  # is within divergence_factor of the best so far. Keep-N rotation never deletes the
  # newest good or the best checkpoint.
  c.train.max_consecutive_skipped = 100   # stop (exit 2) after this many skipped steps
  c.train.divergence_factor = 1.5         # eval > factor * best eval: not good
  c.train.max_bad_evals = 3               # stop after this many consecutive bad evals
  c.train.allow_config_change = False     # resume despite changed model/data/loss keys
  c.train.allow_reference_change = False  # resume/load although a borrowed reference,
                                          # teacher or classifier changed (recorded)
  c.train.init_from = ""                  # a workdir whose parameters start this run
                                          # (a converted MDLM/SEDD/DUO, or any run of
                                          # the same model.*); pinned as "init"
  c.train.profile_steps = ""              # "a,b": jax.profiler trace of steps [a, b)
  c.train.prefetch = 2                    # batches cut and put on the devices ahead of
                                          # the step by a background thread (0 = off)
  c.train.tensorboard = True

  c.mesh = ml_collections.ConfigDict()
  c.mesh.fsdp = 1                    # devices per parameter shard group
  c.mesh.fsdp_min_bytes = 4 * 2 ** 20  # arrays smaller than this stay replicated

  c.eval = ml_collections.ConfigDict()
  c.eval.num_batches = 0             # 0 = the whole validation split
  c.eval.batch_size = 32
  c.eval.num_t = 8                   # Monte Carlo time samples per sequence
  c.eval.use_ema = True

  # How samples are drawn (summaries, studies; experiments.sample flags override).
  c.sampling = ml_collections.ConfigDict()
  c.sampling.sampler = "analytic"    # tcsm_jax.sampling.SAMPLERS
  c.sampling.steps = 128
  c.sampling.draw = "exact"          # exact | gumbel32 (float32 Gumbel-max, older numbers)
  c.sampling.start = "mask"          # mask | prior (older versions' start state)
  c.sampling.temperature = 1.0
  c.sampling.top_p = 1.0
  c.sampling.remask_schedule = "cap"  # remdm: cap | rescale | loop
  c.sampling.remask_eta = 0.0
  c.sampling.remask_t_on = 0.55
  c.sampling.remask_t_off = 0.05
  c.sampling.remask_alpha_on = 0.9   # loop: alpha held from t_on to t_off (ReMDM's)
  c.sampling.events_per_call = 1     # first_hitting: 1 = exact
  c.sampling.unmask_per_call = 1     # confidence: tokens revealed per network call
  c.sampling.eb_gamma = 0.1          # entropy_bound: summed-entropy budget (nats)
  c.sampling.confidence_tau = 0.9    # confidence_threshold: reveal where max p > tau
  return c



# ---------------------------------------------------------------------------------------
# The validation table.

_FINETUNE_KINDS = ("none", "reward", "preference", "self_distill")
_TEACHER_KINDS = ("none", "ar", "mlm", "markov")

CHOICES: Dict[str, Tuple[str, ...]] = {
    "data.name": ("bundled", "text8", "text_file", "wordpiece", "markov", "prepared"),
    "data.layout": ("packed", "padded"),
    "data.verify": ("once", "always", "size"),
    "process": ("absorbing", "uniform"),
    "schedule.name": tuple(sorted(schedules._REGISTRY)),  # pylint: disable=protected-access
    "model.arch": ("diffusion", "causal", "dit"),
    "model.size": tuple(transformer.SIZES),
    "model.dtype": ("float32", "bfloat16"),
    "model.attention_impl": transformer.ATTENTION_IMPLS,
    "model.remat_policy": transformer.REMAT_POLICIES,
    "loss.kind": objective.KINDS,
    "loss.form": losses.FORMS,
    "loss.divergence": ("gkl", "kl", "lsif", "itakura_saito"),
    "loss.weighting": losses.WEIGHTINGS,
    "teacher.kind": _TEACHER_KINDS,
    "teacher.mode": ("exact", "top_k", "top_k_tail", "taylor"),
    "finetune.kind": _FINETUNE_KINDS,
    "finetune.reward": ("classifier", "token"),
    "finetune.reward_mode": ("exact", "taylor"),
    "finetune.importance_weights": ("none", "self_normalized"),
    "finetune.reward_target": ("tilted_denoiser", "clean_conditionals"),
    "finetune.parameterization": ("explicit", "implicit"),
    "optim.lr_schedule": optim.SCHEDULES,
    "sampling.sampler": ("euler", "analytic", "ancestral", "remdm", "first_hitting",
                         "confidence", "entropy_bound", "confidence_threshold"),
    "sampling.draw": ("exact", "gumbel32"),
    "sampling.start": ("mask", "prior"),
    "sampling.remask_schedule": ("cap", "rescale", "loop"),
}

# key: (low, high, low_inclusive, high_inclusive); None = unbounded.
RANGES: Dict[str, Tuple[Any, Any, bool, bool]] = {
    "data.seq_len": (1, None, True, False),
    "data.max_dropped_fraction": (0, 1, True, True),
    "data.spm_vocab_size": (2, None, True, False),
    "data.max_train_docs": (0, None, True, False),
    "data.markov_vocab": (2, None, True, False),
    "data.markov_order": (1, None, True, False),
    "data.markov_tokens": (1, None, True, False),
    "data.markov_concentration": (0, None, False, False),
    "schedule.eps": (0, 1, False, False),
    "schedule.sigma_min": (0, None, False, False),
    "schedule.sigma_max": (0, None, False, False),
    "model.num_layers": (0, None, True, False),
    "model.width": (0, None, True, False),
    "model.num_heads": (0, None, True, False),
    "model.mlp_ratio": (1, None, True, False),
    "model.cond_width": (1, None, True, False),
    "model.dropout": (0, 1, True, False),
    "loss.t_min": (0, 1, True, False),
    "loss.teacher_weight": (0, 1, True, True),
    "loss.hamming": (1, 2, True, True),
    "loss.hamming_pairs": (0, None, True, False),
    "loss.chunk_size": (0, None, True, False),
    "teacher.top_k": (1, None, True, False),
    "teacher.tail_samples": (1, None, True, False),
    "finetune.beta": (0, None, False, False),
    "finetune.classifier_steps": (1, None, True, False),
    "finetune.classifier_label": (0, None, True, False),
    "finetune.num_pairs": (1, None, True, False),
    "finetune.pair_sample_steps": (1, None, True, False),
    "finetune.ratio_bound": (0, None, True, False),
    "finetune.ratio_reg": (0, None, True, False),
    "finetune.distill_steps": (1, None, True, False),
    "finetune.distill_k": (1, None, True, False),
    "optim.lr": (0, None, False, False),
    "optim.warmup_steps": (0, None, True, False),
    "optim.min_lr_ratio": (0, 1, True, True),
    "optim.b1": (0, 1, True, False),
    "optim.b2": (0, 1, True, False),
    "optim.eps": (0, None, False, False),
    "optim.weight_decay": (0, None, True, False),
    "optim.grad_clip": (0, None, True, False),
    "train.batch_size": (1, None, True, False),
    "train.num_steps": (1, None, True, False),
    "train.accum_steps": (1, None, True, False),
    "train.ema_decay": (0, 1, True, False),
    "train.log_every": (1, None, True, False),
    "train.eval_every": (1, None, True, False),
    "train.eval_batches": (0, None, True, False),
    "train.checkpoint_every": (1, None, True, False),
    "train.keep_checkpoints": (1, None, True, False),
    "train.preemption_sync_every": (1, None, True, False),
    "train.max_consecutive_skipped": (1, None, True, False),
    "train.divergence_factor": (1, None, False, False),
    "train.max_bad_evals": (1, None, True, False),
    "train.prefetch": (0, None, True, False),
    "mesh.fsdp": (1, None, True, False),
    "mesh.fsdp_min_bytes": (0, None, True, False),
    "eval.num_batches": (0, None, True, False),
    "eval.batch_size": (1, None, True, False),
    "eval.num_t": (1, None, True, False),
    "sampling.steps": (1, None, True, False),
    "sampling.temperature": (0, None, False, False),
    "sampling.top_p": (0, 1, False, True),
    "sampling.remask_eta": (0, 1, True, True),
    "sampling.remask_t_on": (0, 1, False, False),
    "sampling.remask_t_off": (0, 1, False, False),
    "sampling.remask_alpha_on": (0, 1, False, False),
    "sampling.events_per_call": (1, None, True, False),
    "sampling.unmask_per_call": (1, None, True, False),
    "sampling.eb_gamma": (0, None, True, False),
    "sampling.confidence_tau": (0, 1, False, True),
}


def _model_dims(c):
  layers, width, heads = transformer.SIZES[c.model.size]
  return (c.model.num_layers or layers, c.model.width or width, c.model.num_heads or heads)


def _profile_ok(spec: str) -> bool:
  if not spec:
    return True
  parts = spec.split(",")
  try:
    a, b = (int(p) for p in parts)
  except ValueError:
    return False
  return 0 <= a < b


# (rule holds for config c, message when it does not). Rules see a config whose keys,
# types, choices and ranges are already valid.
RULES: List[Tuple[Callable[[Any], bool], Callable[[Any], str]]] = [
    (lambda c: c.sampling.remask_t_off < c.sampling.remask_t_on,
     lambda c: f"sampling.remask_t_off {c.sampling.remask_t_off} must be below "
               f"sampling.remask_t_on {c.sampling.remask_t_on}"),
    (lambda c: not (c.sampling.sampler in ("ancestral", "remdm", "first_hitting",
                                           "confidence", "entropy_bound",
                                           "confidence_threshold")
                    and c.process != "absorbing"),
     lambda c: f"sampling.sampler={c.sampling.sampler!r} needs process='absorbing'"),
    (lambda c: c.train.batch_size % c.train.accum_steps == 0,
     lambda c: f"train.batch_size {c.train.batch_size} must be divisible by "
               f"train.accum_steps {c.train.accum_steps}"),
    (lambda c: not (c.loss.kind == "masked_elbo" and c.process != "absorbing"),
     lambda c: "loss.kind='masked_elbo' needs process='absorbing'"),
    (lambda c: not (c.teacher.kind == "markov" and c.data.name != "markov"),
     lambda c: "teacher.kind='markov' (the exact law of the data) needs "
               "data.name='markov'"),
    (lambda c: not (c.loss.teacher_weight > 0 and c.teacher.kind == "none"),
     lambda c: "loss.teacher_weight > 0 needs teacher.kind = 'ar', 'mlm' or 'markov'"),
    (lambda c: not (c.loss.teacher_weight > 0 and c.teacher.kind in ("ar", "mlm")
                    and not c.teacher.workdir),
     lambda c: f"teacher.kind={c.teacher.kind!r} needs teacher.workdir (a trained run)"),
    (lambda c: not (c.teacher.workdir.startswith("hf:") and c.teacher.kind != "ar"),
     lambda c: f"teacher.workdir={c.teacher.workdir!r} (a Hugging Face GPT-2) is an AR "
               f"teacher: set teacher.kind='ar' (got {c.teacher.kind!r})"),
    (lambda c: not (c.loss.hamming == 2 and (c.loss.kind, c.loss.form) != ("tcsm", "score")),
     lambda c: "loss.hamming=2 is the score form's pair neighbourhood: it needs "
               f"loss.kind='tcsm' and loss.form='score', got {c.loss.kind!r}/"
               f"{c.loss.form!r}"),
    (lambda c: not (c.loss.hamming == 2 and c.loss.teacher_weight > 0
                    and not (c.teacher.kind == "markov" or (c.teacher.kind == "ar"
                                                           and c.teacher.mode == "exact"))),
     lambda c: "loss.hamming=2 with a teacher needs its pair ratios: teacher.kind="
               f"'markov', or 'ar' with teacher.mode='exact' (got {c.teacher.kind!r})"),
    (lambda c: not (c.loss.hamming == 2 and (c.finetune.kind != "none"
                                             or c.model.arch == "causal")),
     lambda c: "loss.hamming=2 is a pre-training objective of a diffusion model; "
               f"finetune.kind={c.finetune.kind!r} / model.arch={c.model.arch!r} would "
               "ignore it"),
    (lambda c: not (c.loss.hamming == 2 and c.data.layout == "padded"),
     lambda c: "loss.hamming=2 needs data.layout='packed' (pairs over pad positions "
               "are not defined)"),
    (lambda c: not (c.loss.get("tile_vocab", False) and c.loss.chunk_size <= 0),
     lambda c: "loss.tile_vocab runs the output layer per loss chunk: it needs "
               "loss.chunk_size > 0"),
    (lambda c: not (c.loss.get("tile_vocab", False) and (
        c.model.arch == "causal" or c.finetune.kind != "none")),
     lambda c: "loss.tile_vocab applies to diffusion pre-training (model.arch="
               "'diffusion', finetune.kind='none')"),
    (lambda c: not (c.loss.hamming == 2 and c.loss.chunk_size > 0),
     lambda c: "loss.chunk_size applies to the 1-Hamming losses; loss.hamming=2 needs "
               "loss.chunk_size=0"),
    (lambda c: not (c.loss.hamming == 2 and c.data.seq_len < 2),
     lambda c: f"loss.hamming=2 needs data.seq_len >= 2, got {c.data.seq_len}"),
    (lambda c: not (c.finetune.reward_target == "clean_conditionals"
                    and c.process != "absorbing"),
     lambda c: "finetune.reward_target='clean_conditionals' needs process='absorbing' "
               f"(the reference is read as a masked-LM teacher), got {c.process!r}"),
    (lambda c: not (c.finetune.parameterization == "implicit"
                    and c.finetune.ratio_bound > 0),
     lambda c: "finetune.ratio_bound bounds the explicit log-ratio head; "
               "finetune.parameterization='implicit' has none"),
    (lambda c: not (c.finetune.kind == "self_distill" and c.process != "absorbing"),
     lambda c: "finetune.kind='self_distill' needs process='absorbing' (the uniform "
               "process: see tcsm_jax/posttrain/self_distill.py)"),
    (lambda c: not (c.finetune.kind != "none" and c.train.init_from),
     lambda c: "train.init_from starts a run from another run's parameters; a "
               "fine-tuning run starts from finetune.ref_workdir: leave "
               "train.init_from empty"),
    (lambda c: not (c.finetune.kind != "none" and not c.finetune.ref_workdir),
     lambda c: "finetune.ref_workdir must name the reference model's workdir"),
    (lambda c: not (c.data.name in ("text8", "text_file", "prepared") and not c.data.path),
     lambda c: f"data.name={c.data.name!r} needs data.path"),
    (lambda c: not (c.data.name == "wordpiece" and not (c.data.tfds_name or c.data.path)),
     lambda c: "data.name='wordpiece' needs data.tfds_name or data.path"),
    (lambda c: not (c.schedule.name == "geometric"
                    and not c.schedule.sigma_min < c.schedule.sigma_max),
     lambda c: "schedule.name='geometric' needs schedule.sigma_min < schedule.sigma_max"),
    (lambda c: _model_dims(c)[1] % _model_dims(c)[2] == 0,
     lambda c: f"model width {_model_dims(c)[1]} must be divisible by model.num_heads "
               f"{_model_dims(c)[2]}"),
    (lambda c: (_model_dims(c)[1] // _model_dims(c)[2]) % 2 == 0,
     lambda c: f"model head dimension {_model_dims(c)[1] // _model_dims(c)[2]} "
               "(width / num_heads) must be even (rotary embeddings)"),
    (lambda c: not (c.model.arch == "dit" and c.model.scan_layers),
     lambda c: "model.arch='dit' has no scanned form: set model.scan_layers=false"),
    (lambda c: not (c.model.attention_impl == "cudnn" and c.model.dtype != "bfloat16"),
     lambda c: "model.attention_impl='cudnn' needs model.dtype='bfloat16' (cuDNN flash "
               "attention has no float32 kernel)"),
    (lambda c: not (c.model.attention_impl == "splash"
                    and transformer.splash_unsupported(c.data.seq_len)),
     lambda c: transformer.splash_unsupported(c.data.seq_len)),
    (lambda c: _profile_ok(c.train.profile_steps),
     lambda c: f"train.profile_steps must be 'first,last' with 0 <= first < last, got "
               f"{c.train.profile_steps!r}"),
]


def _check(cfg, schema, path):
  for key in cfg.keys():
    full = f"{path}{key}"
    if key not in schema:
      raise errors.ConfigError(f"unknown config key {full!r}; known keys here: "
                               f"{sorted(schema.keys())}")
    val, ref = cfg[key], schema[key]
    if isinstance(ref, ml_collections.ConfigDict):
      if not isinstance(val, ml_collections.ConfigDict):
        raise errors.ConfigError(f"config key {full!r} must be a section, got "
                                 f"{type(val).__name__}")
      _check(val, ref, full + ".")
    elif isinstance(ref, bool):
      if not isinstance(val, bool):
        raise errors.ConfigError(f"config key {full!r} must be a bool, got {val!r}")
    elif isinstance(ref, _NUMBER):
      if isinstance(val, bool) or not isinstance(val, _NUMBER):
        raise errors.ConfigError(f"config key {full!r} must be a number, got {val!r}")
      if isinstance(ref, int) and not isinstance(val, int):
        raise errors.ConfigError(f"config key {full!r} must be an integer, got {val!r}")
    elif isinstance(ref, str) and not isinstance(val, str):
      raise errors.ConfigError(f"config key {full!r} must be a string, got {val!r}")


def _get(cfg, dotted: str):
  node = cfg
  for part in dotted.split("."):
    node = node[part]
  return node


def _in_range(val, lo, hi, lo_inc, hi_inc) -> bool:
  if val != val or val in (float("inf"), float("-inf")):   # NaN, inf
    return False
  if lo is not None and (val < lo or (val == lo and not lo_inc)):
    return False
  if hi is not None and (val > hi or (val == hi and not hi_inc)):
    return False
  return True


def _describe(lo, hi, lo_inc, hi_inc) -> str:
  if hi is None:
    return f"{'>=' if lo_inc else '>'} {lo}"
  return f"in {'[' if lo_inc else '('}{lo}, {hi}{']' if hi_inc else ')'}"


def validate(config: ml_collections.ConfigDict, schema=None) -> None:
  """Raises ``errors.ConfigError`` naming the first bad key, type, choice or rule.

  Keys missing from ``config`` (configs written before a key existed) are not errors;
  ``complete`` fills them with defaults.
  """
  if schema is None:
    schema = default_config()
  _check(config, schema, "")
  for key, allowed in CHOICES.items():
    try:
      val = _get(config, key)
    except (KeyError, AttributeError):
      continue
    if val not in allowed:
      raise errors.ConfigError(f"config key {key!r} = {val!r} is not one of "
                               f"{list(allowed)}")
  for key, (lo, hi, lo_inc, hi_inc) in RANGES.items():
    try:
      val = _get(config, key)
    except (KeyError, AttributeError):
      continue
    if not _in_range(val, lo, hi, lo_inc, hi_inc):
      raise errors.ConfigError(f"config key {key!r} must be "
                               f"{_describe(lo, hi, lo_inc, hi_inc)}, got {val!r}")
  full = complete(config)
  for ok, message in RULES:
    if not ok(full):
      raise errors.ConfigError(message(full))


def complete(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of ``config`` with keys it lacks set to their defaults (schema order)."""
  return from_dict(config.to_dict())


def from_dict(saved: Dict[str, Any]) -> ml_collections.ConfigDict:
  """The default config updated with ``saved`` (e.g. a workdir's config.json).

  Keys the schema does not know raise ``ConfigError``; integers given for float keys
  are converted. Keys added to the schema after the run was saved take defaults.
  """
  cfg = default_config()
  _update(cfg, saved, "")
  return cfg


def _update(cfg, saved, path):
  for k, v in saved.items():
    if k not in cfg:
      raise errors.ConfigError(f"unknown config key {path + k!r}")
    if isinstance(cfg[k], ml_collections.ConfigDict):
      if not isinstance(v, dict):
        raise errors.ConfigError(f"config key {path + k!r} must be a section")
      _update(cfg[k], v, path + k + ".")
    elif isinstance(cfg[k], float) and isinstance(v, int) and not isinstance(v, bool):
      cfg[k] = float(v)
    else:
      try:
        cfg[k] = v
      except TypeError as e:
        raise errors.ConfigError(f"config key {path + k!r}: {e}") from None


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True)


# ---------------------------------------------------------------------------------------
# Resuming with a changed config.

# Keys whose change leaves the saved state meaningful: cadence, length, eval, topology,
# performance knobs. Everything else (model, process, schedule, data, seed, loss,
# teacher, fine-tuning, optimizer) changes what the checkpoint means.
HARMLESS_PREFIXES = (
    "train.num_steps", "train.log_every", "train.eval_every", "train.eval_batches",
    "train.checkpoint_every", "train.keep_checkpoints", "train.async_checkpoint",
    "train.preemption_sync_every", "train.max_consecutive_skipped",
    "train.divergence_factor", "train.max_bad_evals", "train.allow_config_change",
    "train.allow_reference_change", "train.prefetch",
    "train.profile_steps", "train.tensorboard", "mesh.", "eval.", "sampling.", "model.remat",
    "model.dtype", "model.attention_impl", "data.tfds_dir", "loss.chunk_size",
    "loss.tile_vocab")


def flatten(d, prefix=""):
  """``{"a.b": value}`` of a nested dict (``config.to_dict()``)."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, prefix + k + "."))
    else:
      out[prefix + k] = v
  return out


def resume_changes(saved: ml_collections.ConfigDict, new: ml_collections.ConfigDict
                   ) -> Tuple[List[str], List[str]]:
  """``(refused, allowed)`` lists of ``"key: old -> new"`` between two configs."""
  a = flatten(complete(saved).to_dict())
  b = flatten(complete(new).to_dict())
  refused, allowed = [], []
  for key in sorted(set(a) | set(b)):
    if a.get(key) == b.get(key):
      continue
    line = f"{key}: {a.get(key)!r} -> {b.get(key)!r}"
    (allowed if key.startswith(HARMLESS_PREFIXES) else refused).append(line)
  return refused, allowed
