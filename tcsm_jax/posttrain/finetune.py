"""Fine-tuning runs: a frozen reference + a learned correction, through the trainer.

``build(config, workdir)`` returns a ``FinetuneExperiment`` that the ordinary training
loop trains, checkpoints and resumes (its parameters are the correction network's; the
reference is restored from ``finetune.ref_workdir`` each time and passed to the jitted
step as an argument, ``Experiment.frozen``), and that ``restore.load_run`` loads back
for sampling and evaluation: ``run.params`` is then ``{"correction", "reference"}`` and
``apply_fn`` returns reference logits + correction. Registered in
``training.experiment.BUILDERS`` for ``finetune.kind`` reward and preference.

**Pinned references** (``training.pins``). The run trains on its config's data; a
reference trained on other data (dataset, vocabulary, tokenizer) is refused in one
line. The reference's (and a classifier reward's) step and parameter fingerprint are
recorded in ``Experiment.pins``; a resume or a ``load_run`` after the reference was
retrained in place is refused unless ``train.allow_reference_change``.

**Parameterizations** (``finetune.parameterization``; issue 15, part 2). The fine-tuned
denoiser stands in a density ratio ``r_theta(y | x_t) = p_theta(y | x_t) / p_ref(y | x_t)``
to the frozen reference at every position:

* ``explicit`` (default): a separate network outputs the log-ratio ``g_theta`` and
  ``p_theta = p_ref exp(g_theta) / sum_y p_ref exp(g_theta)``, normalized over the
  position's neighbourhood (the posterior support). Its output head starts at zero, so
  training starts at the reference. Stabilizers: ``finetune.ratio_bound = B > 0`` bounds
  the head, ``g = B tanh(g_raw / B)`` (so ``|log r| <= 2B`` after normalization: a
  trust region around the reference); ``finetune.ratio_reg = lam > 0`` adds
  ``lam * Var_{y ~ p_ref(. | x_t)}[log r_theta(y | x_t)]`` per undetermined position
  (0 iff ``p_theta = p_ref`` there; invariant to the normalizer), divided by ``L``
  like the loss. The normalization itself costs nothing in the score form: the score
  form only sees ratios ``p_theta(y) / p_theta(x)``, in which it cancels, so an
  unnormalized explicit ratio has exactly the score-form loss and gradients of the
  normalized one; what can make it unstable is the size of ``g``, which the bound and
  the penalty address.
* ``implicit`` (the paper's): a full copy of the reference denoiser (the reference's
  own architecture; ``config.model`` is not used), initialized at the reference's
  weights and trained; ``r_theta = p_theta / p_ref`` is never formed except in the
  loss. The reference parameters are copied into the initial state (constants of the
  init computation: meant for models that fit on one device).
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from tcsm_jax import errors, fs, losses, models, objective, sampling
from tcsm_jax.data import pipeline
from tcsm_jax.models import gpt2
from tcsm_jax.posttrain import classifier as classifier_lib
from tcsm_jax.posttrain import hf_reward
from tcsm_jax.posttrain import reward as reward_lib
from tcsm_jax.training import checkpoint as ckpt_lib
from tcsm_jax.training import experiment as experiment_lib
from tcsm_jax.training import pins as pins_lib
from tcsm_jax.training import restore


@dataclasses.dataclass
class FinetuneExperiment(experiment_lib.Experiment):
  ref: Any = None              # the reference's Experiment
  ref_params: Any = None       # its parameters (also ``frozen``)
  reward_fn: Callable = None   # tokens [n, L] -> [n] (for reporting)
  deltas_fn: Callable = None   # x0 [b, L] -> [b, L, V] neighbour reward differences
  pairs: Any = None            # [n_pairs, 2, L] for preference fine-tuning

  def full_params(self, params, frozen):
    return {"correction": params, "reference": frozen}

  def init_params(self, key):
    if self.config.finetune.parameterization == "implicit":   # start at the reference
      return jax.tree.map(lambda a: jnp.array(a, copy=True), self.ref_params)
    return super().init_params(key)

  def corr_and_ref(self, params, ref_params, x_t, sigma, train: bool = False, key=None):
    """``(corr, ref)`` float32 logits ``[b, L, V]`` with ``ref + corr`` the fine-tuned
    model's: ``corr`` is the (bounded) explicit log-ratio head, or for ``implicit`` the
    fine-tuned denoiser minus the reference."""
    ft = self.config.finetune
    ref = jax.lax.stop_gradient(self.ref.apply_fn(ref_params, x_t, sigma))
    ref = ref.astype(jnp.float32)
    rngs = {"dropout": key} if (train and key is not None) else None
    out = self.model.apply({"params": params}, x_t, sigma, deterministic=not train,
                           rngs=rngs).astype(jnp.float32)
    if ft.parameterization == "implicit":
      return out - ref, ref
    return reward_lib.bounded_log_ratio(out, ft.ratio_bound), ref

  def apply_fn(self, params, x_t, sigma, train: bool = False, key=None):
    """The fine-tuned logits; ``params`` = ``{"correction", "reference"}``."""
    corr, ref = self.corr_and_ref(params["correction"], params["reference"], x_t, sigma,
                                  train, key)
    return ref + corr

  def train_tokens(self):
    if self.pairs is None:
      return self.dataset.train
    return self.pairs.reshape(-1)

  def train_chunk_len(self) -> int:
    return self.config.data.seq_len * (2 if self.pairs is not None else 1)

  def loss_fns(self):
    """``(train, eval)``: ``fn(params, frozen, x0, key, train)``, frozen = reference."""
    cfg, ft = self.config, self.config.finetune
    proc, sched = self.process, self.schedule
    length = cfg.data.seq_len
    # Validated by the config table (clean_conditionals needs process='absorbing').
    importance, reward_target = ft.importance_weights, ft.reward_target

    def split(key, x0):
      k_t, k_x, k_d = jax.random.split(key, 3)
      t = objective.sample_times(k_t, x0.shape[0], cfg.loss.t_min)
      sigma, dsigma = sched(t)
      return sigma, dsigma, k_x, k_d

    corr_and_ref = self.corr_and_ref
    reg = ft.ratio_reg

    def ratio_penalty(corr, ref, x_t, sigma):
      """``[b]``: ``sum_i Var_{p_ref(. | x_t)}[log r_theta]`` (``ratio_reg``)."""
      return reward_lib.log_ratio_variance(corr, ref, proc, x_t, sigma).sum(-1)

    def reward_loss(params, frozen, x0, key, train=True):
      sigma, dsigma, k_x, k_d = split(key, x0)
      x_t = proc.sample_forward(k_x, x0, sigma)
      corr, ref = corr_and_ref(params, frozen, x_t, sigma, train, k_d)
      deltas = jax.lax.stop_gradient(self.deltas_fn(x0))
      cond = None
      if reward_target == "clean_conditionals":  # L extra reference passes (MLM teacher)
        cond = reward_lib.tilted_clean_conditionals(self.ref.apply_fn, frozen,
                                                    proc.mask_id, x0, deltas, ft.beta)
      per = reward_lib.reward_loss(corr, ref, x0, x_t, sigma, proc, deltas, ft.beta,
                                   cfg.loss.form, cfg.loss.divergence,
                                   target_log_cond=cond)
      w = losses.time_weight(cfg.loss.weighting, sigma, dsigma)
      metrics = {}
      pen = 0.0
      if reg > 0:
        pen = ratio_penalty(corr, ref, x_t, sigma)
        metrics["ratio_var"] = jnp.mean(pen) / length
      if importance == "self_normalized":        # centres reweighted to p_ref e^{r/beta}
        iw = reward_lib.snis_weights(self.reward_fn(x0), ft.beta)
        w = w * iw
        # Effective sample size of the batch's weights (B = uniform; 1 = one sequence).
        metrics["snis_ess"] = reward_lib.effective_sample_size(iw)
      loss = jnp.mean(w * per.sum(-1) + reg * pen) / length
      return loss, dict(metrics, loss=loss)

    def preference_loss(params, frozen, x, key, train=True):
      chosen, rejected = x[:, :length], x[:, length:]
      sigma, _, k_x, k_d = split(key, chosen)
      xc = proc.sample_forward(k_x, chosen, sigma)
      xr = proc.sample_forward(k_x, rejected, sigma)      # same noise for the pair
      cc, rc = corr_and_ref(params, frozen, xc, sigma, train, k_d)
      cr, rr = corr_and_ref(params, frozen, xr, sigma, train, k_d)
      ratio_c = reward_lib.implicit_log_ratio(cc, rc, chosen, xc, sigma, proc)
      ratio_r = reward_lib.implicit_log_ratio(cr, rr, rejected, xr, sigma, proc)
      loss = jnp.mean(reward_lib.dpo_loss(ratio_c, ratio_r, ft.beta))
      metrics = {"pref_accuracy": jnp.mean(ratio_c > ratio_r)}
      if reg > 0:
        pen = 0.5 * (ratio_penalty(cc, rc, xc, sigma) + ratio_penalty(cr, rr, xr, sigma))
        metrics["ratio_var"] = jnp.mean(pen) / length
        loss = loss + reg * jnp.mean(pen) / length
      return loss, dict(metrics, loss=loss)

    def eval_fn(params, frozen, x0, key, train=False):
      apply = lambda p, x_t, s, tr, k: self.apply_fn(self.full_params(p, frozen), x_t, s,
                                                     tr, k)
      return objective.make_loss_fn(experiment_lib.elbo_loss_config(proc), proc, sched,
                                    apply)(params, x0, key, train)

    train = preference_loss if ft.kind == "preference" else reward_loss
    return train, eval_fn


def parse_token_weights(spec: str, name: str = "finetune.token_weights"):
  """``[(chars, weight)]`` of a token-reward spec ``'chars=weight,chars=weight'``; a
  ``ConfigError`` naming ``name`` for an item without ``=``, without characters, or with
  a weight that is not a finite number."""
  out = []
  for item in filter(None, spec.split(",")):
    chars, eq, val = item.partition("=")
    try:
      weight = float(val)
    except ValueError:
      weight = None
    if not eq or not chars or weight is None or not math.isfinite(weight):
      raise errors.ConfigError(
          f"{name}: {item!r} is not 'chars=weight' with a finite number as weight "
          f"(the value is {spec!r}; e.g. 'aeiou=1,xyz=-0.5')")
    out.append((chars, weight))
  if not out:
    raise errors.ConfigError(f"{name} is empty: give 'chars=weight,...' (e.g. 'aeiou=1')")
  return out


def _token_weights(spec: str, encode, vocab_size: int, decode=None) -> np.ndarray:
  w = np.zeros(vocab_size, np.float32)
  for chars, val in parse_token_weights(spec):
    for ch in chars:
      ids = np.asarray(encode(ch))
      if len(ids) != 1:
        raise errors.ConfigError(f"finetune.token_weights: {ch!r} is not a single token")
      back = None if decode is None else decode(ids)
      if back is not None and back != ch:     # e.g. [UNK] of a word-piece vocabulary
        raise errors.ConfigError(f"finetune.token_weights: {ch!r} is not a token of "
                                 f"this vocabulary (it encodes to {back!r})")
      w[int(ids[0])] = float(val)
  return w


def _reward(config, dataset, workdir: str):
  """``(reward_fn, deltas_fn, pin)``: ``make_reward`` plus the classifier's pin
  (``{}`` for a token reward)."""
  ft, v, length = config.finetune, dataset.vocab_size, config.data.seq_len
  if ft.reward == "token":
    if dataset.encode is None:
      raise errors.ConfigError("finetune.reward='token' needs a text dataset")
    w = jnp.asarray(_token_weights(ft.token_weights, dataset.encode, v, dataset.decode))
    return (lambda toks: jnp.sum(w[toks], -1),
            lambda x0: reward_lib.token_reward_deltas(w, x0), {})
  if ft.classifier_dir.startswith("hf:"):
    return _hf_reward(config, dataset)
  if v != 27 or (dataset.tokenizer is not None and dataset.tokenizer.kind != "char"):
    raise errors.ConfigError(
        f"finetune.reward='classifier' reads the 27-symbol text8 alphabet; the data "
        f"{dataset.name!r} have {v} tokens (use finetune.reward='token', or character data)")
  cdir = ft.classifier_dir or os.fspath(fs.join(workdir or ".", "classifier"))
  model, params, acc = classifier_lib.load_or_train(cdir, dataset, length,
                                                    ft.classifier_steps)
  if acc is not None:
    logging.info("trained the reward classifier (%s): held-out accuracy %.3f", cdir, acc)
  pin = {"classifier": {"dir": os.fspath(cdir), "step": 0, "fingerprint": pins_lib.digest(
      ckpt_lib.fingerprint(params)[0])}}
  soft = lambda onehot: model.apply({"params": params}, onehot)
  hard = lambda toks: soft(jax.nn.one_hot(toks, v))
  return hard, lambda x0: reward_lib.sequence_reward_deltas(hard, x0, v, ft.reward_mode,
                                                            soft), pin


def _hf_reward(config, dataset):
  """A Hugging Face GPT-2 classifier reward (``posttrain/hf_reward.py``): differentiable
  when it shares the data's tokenizer, else a retokenizing black box (exact only)."""
  ft, v = config.finetune, dataset.vocab_size
  pt = gpt2.load(ft.classifier_dir, dtype=config.model.dtype, classifier=True,
                 need_tokenizer=False, what="reward classifier")
  sha = getattr(getattr(dataset, "tokenizer", None), "sha256", None) or (
      getattr(dataset, "info", None) or {}).get("tokenizer_sha256")
  pin = {"classifier": {"dir": ft.classifier_dir, "directory": pt.directory, "step": None,
                        "fingerprint": gpt2.fingerprint(pt.directory)}}
  label = int(ft.classifier_label)
  if hf_reward.shares_tokenizer(pt, v, sha, getattr(dataset, "tokenizer", None)):
    hard, soft = hf_reward.shared_tokenizer_reward(pt, label)
    return hard, lambda x0: reward_lib.sequence_reward_deltas(hard, x0, v, ft.reward_mode,
                                                              soft), pin
  if ft.reward_mode != "exact":
    raise errors.ConfigError(
        f"the reward classifier {ft.classifier_dir} has another tokenizer than the data "
        f"({pt.config.vocab_size} tokens against {v}): it is a black box through "
        "retokenization, with exact neighbour differences only: set "
        "finetune.reward_mode='exact' (L V + 1 classifier calls per sequence)")
  hard = hf_reward.retokenized_reward(pt, dataset.decode, label)
  return hard, lambda x0: reward_lib.sequence_reward_deltas(hard, x0, v, "exact"), pin


def make_reward(config, dataset, workdir: str):
  """``(reward_fn tokens -> [n], deltas_fn x0 -> [b, L, V])`` from ``config.finetune``."""
  return _reward(config, dataset, workdir)[:2]


def _preference_pairs(config, ref, ref_params, reward_fn, workdir):
  path = fs.join(workdir or ".", "preferences.npz")
  if fs.exists(path):
    with fs.open_file(path, "rb") as f:
      return np.load(io.BytesIO(f.read()))["pairs"]
  ft, length = config.finetune, config.data.seq_len
  n, b = 2 * ft.num_pairs, 64
  fn = sampling.jit_sampler(ref.apply_fn, ref.process, ref.schedule, (b, length),
                            steps=ft.pair_sample_steps)
  samples = np.concatenate([np.asarray(fn(ref_params,
                                          jax.random.PRNGKey(config.seed + i))[0])
                            for i in range(0, n, b)])[:n]
  rewards = np.asarray(jax.jit(reward_fn)(jnp.asarray(samples)))
  pairs = reward_lib.make_preference_pairs(samples, rewards, config.seed)
  if not len(pairs):
    raise errors.ConfigError(
        f"finetune.kind='preference': all {n // 2} pairs of reference samples tie under "
        f"finetune.reward={ft.reward!r} (no preference to learn); use a reward that "
        "separates the reference's samples")
  reward_lib.save_pairs(path, pairs, {"generator": "reference samples ranked by reward",
                                      "reward": ft.reward, "num_samples": n})
  return pairs


def load_reference(config, workdir: str = "", dataset=None):
  """``(dataset, run)``: the config's data (``dataset`` when given) and the frozen run
  at ``finetune.ref_workdir``, refused in one line when it was trained on other data."""
  ref_workdir = config.finetune.ref_workdir
  ds = pipeline.load(config, workdir) if dataset is None else dataset
  pins_lib.require_same_data("reference", ref_workdir, restore.trained_on(ref_workdir), ds)
  return ds, restore.load_run(ref_workdir, dataset=ds)


def build(config, workdir: str = "", dataset=None) -> FinetuneExperiment:
  """The fine-tuning experiment of ``config.finetune`` (reference restored and pinned).

  Raises:
    errors.ConfigError: the reference was trained on other data than the config's
      (``dataset``, default loaded from ``config.data``), or is not a diffusion model
      of the config's process and length.
  """
  ft = config.finetune
  ds, ref_run = load_reference(config, workdir, dataset)
  ref = ref_run.experiment
  if ref.causal:
    raise errors.ConfigError(f"finetune.ref_workdir {ft.ref_workdir} holds a causal model")
  if ref_run.config.data.seq_len != config.data.seq_len:
    raise errors.ConfigError("fine-tuning must keep the reference's data.seq_len "
                             f"({ref_run.config.data.seq_len})")
  if ref_run.config.process != config.process:
    raise errors.ConfigError("fine-tuning must keep the reference's process "
                             f"({ref_run.config.process!r})")
  if ft.parameterization == "implicit":            # a copy of the reference network
    corr = ref.model
  else:
    corr = models.build_denoiser(config, ds.vocab_size, ref.process.num_states)
  reward_fn, deltas_fn, pins = _reward(config, ds, workdir)
  pairs = None
  if ft.kind == "preference":
    pairs = _preference_pairs(config, ref, ref_run.params, reward_fn, workdir)
  return FinetuneExperiment(config, ds, ref.process, ref.schedule, corr,
                            frozen=ref_run.params, ref=ref, ref_params=ref_run.params,
                            pins=dict(pins, reference=ref_run.pin()),
                            reward_fn=reward_fn, deltas_fn=deltas_fn, pairs=pairs)


experiment_lib.register_builder("reward", build)
experiment_lib.register_builder("preference", build)
