"""Fine-tuning runs: a frozen reference + a learned correction, through the trainer.

``build(config, workdir)`` returns a ``FinetuneExperiment`` that the ordinary training
loop trains, checkpoints and resumes (its parameters are the correction network's; the
reference is restored from ``finetune.ref_workdir`` each time), and that
``restore.load_run`` loads back for sampling and evaluation: its ``apply_fn`` already
returns reference logits + correction.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from tcsm_jax import losses, models, objective, sampling
from tcsm_jax.posttrain import classifier as classifier_lib
from tcsm_jax.posttrain import reward as reward_lib
from tcsm_jax.training import trainer


@dataclasses.dataclass
class FinetuneExperiment(trainer.Experiment):
  ref: trainer.Experiment
  ref_params: Any
  reward_fn: Callable          # tokens [n, L] -> [n] (for reporting)
  deltas_fn: Callable          # x0 [b, L] -> [b, L, V] neighbour reward differences
  pairs: Any = None            # [n_pairs, 2, L] for preference fine-tuning

  def apply_fn(self, params, x_t, sigma, train: bool = False, key=None):
    ref = jax.lax.stop_gradient(self.ref.apply_fn(self.ref_params, x_t, sigma))
    rngs = {"dropout": key} if (train and key is not None) else None
    corr = self.model.apply({"params": params}, x_t, sigma, deterministic=not train,
                            rngs=rngs)
    return ref.astype(jnp.float32) + corr.astype(jnp.float32)

  def train_tokens(self):
    if self.pairs is None:
      return self.dataset.train
    return self.pairs.reshape(-1)

  def train_chunk_len(self) -> int:
    return self.config.data.seq_len * (2 if self.pairs is not None else 1)

  def loss_fns(self, target_fn=None):
    cfg, ft = self.config, self.config.finetune
    proc, sched = self.process, self.schedule
    length = cfg.data.seq_len

    def split(key, x0):
      k_t, k_x, k_d = jax.random.split(key, 3)
      t = objective.sample_times(k_t, x0.shape[0], cfg.loss.t_min)
      sigma, dsigma = sched(t)
      return sigma, dsigma, k_x, k_d

    def corr_and_ref(params, x_t, sigma, train, key):
      ref = jax.lax.stop_gradient(self.ref.apply_fn(self.ref_params, x_t, sigma))
      rngs = {"dropout": key} if train else None
      corr = self.model.apply({"params": params}, x_t, sigma, deterministic=not train,
                              rngs=rngs)
      return corr.astype(jnp.float32), ref.astype(jnp.float32)

    def reward_loss(params, x0, key, train=True):
      sigma, dsigma, k_x, k_d = split(key, x0)
      x_t = proc.sample_forward(k_x, x0, sigma)
      corr, ref = corr_and_ref(params, x_t, sigma, train, k_d)
      deltas = jax.lax.stop_gradient(self.deltas_fn(x0))
      per = reward_lib.reward_loss(corr, ref, x0, x_t, sigma, proc, deltas, ft.beta,
                                   cfg.loss.form, cfg.loss.divergence)
      w = losses.time_weight(cfg.loss.weighting, sigma, dsigma)
      loss = jnp.mean(w * per.sum(-1)) / length
      return loss, {"loss": loss}

    def preference_loss(params, x, key, train=True):
      chosen, rejected = x[:, :length], x[:, length:]
      sigma, _, k_x, k_d = split(key, chosen)
      xc = proc.sample_forward(k_x, chosen, sigma)
      xr = proc.sample_forward(k_x, rejected, sigma)      # same noise for the pair
      cc, rc = corr_and_ref(params, xc, sigma, train, k_d)
      cr, rr = corr_and_ref(params, xr, sigma, train, k_d)
      ratio_c = reward_lib.implicit_log_ratio(cc, rc, chosen, xc, sigma, proc)
      ratio_r = reward_lib.implicit_log_ratio(cr, rr, rejected, xr, sigma, proc)
      loss = jnp.mean(reward_lib.dpo_loss(ratio_c, ratio_r, ft.beta))
      return loss, {"loss": loss, "pref_accuracy": jnp.mean(ratio_c > ratio_r)}

    ev = objective.make_loss_fn(trainer.elbo_loss_config(proc), proc, sched, self.apply_fn)
    train = preference_loss if ft.kind == "preference" else reward_loss
    return train, ev


def _token_weights(spec: str, encode, vocab_size: int) -> np.ndarray:
  w = np.zeros(vocab_size, np.float32)
  for item in filter(None, spec.split(",")):
    chars, _, val = item.partition("=")
    for ch in chars:
      ids = np.asarray(encode(ch))
      if len(ids) != 1:
        raise ValueError(f"finetune.token_weights: {ch!r} is not a single token")
      w[int(ids[0])] = float(val)
  return w


def make_reward(config, dataset, workdir: str):
  """``(reward_fn tokens -> [n], deltas_fn x0 -> [b, L, V])`` from ``config.finetune``."""
  ft, v, length = config.finetune, dataset.vocab_size, config.data.seq_len
  if ft.reward == "token":
    if dataset.encode is None:
      raise ValueError("the token reward needs a text dataset")
    w = jnp.asarray(_token_weights(ft.token_weights, dataset.encode, v))
    return (lambda toks: jnp.sum(w[toks], -1),
            lambda x0: reward_lib.token_reward_deltas(w, x0))
  cdir = ft.classifier_dir or os.path.join(workdir or ".", "classifier")
  model, params, acc = classifier_lib.load_or_train(cdir, dataset, length,
                                                    ft.classifier_steps)
  if acc is not None:
    logging.info("trained the reward classifier (%s): held-out accuracy %.3f", cdir, acc)
  soft = lambda onehot: model.apply({"params": params}, onehot)
  hard = lambda toks: soft(jax.nn.one_hot(toks, v))
  return hard, lambda x0: reward_lib.sequence_reward_deltas(hard, x0, v, ft.reward_mode,
                                                            soft)


def _preference_pairs(config, ref, ref_params, reward_fn, workdir):
  path = os.path.join(workdir or ".", "preferences.npz")
  if os.path.exists(path):
    return np.load(path)["pairs"]
  ft, length = config.finetune, config.data.seq_len
  n, b = 2 * ft.num_pairs, 64
  fn = sampling.jit_sampler(ref.apply_fn, ref.process, ref.schedule, (b, length),
                            steps=ft.pair_sample_steps)
  samples = np.concatenate([np.asarray(fn(ref_params,
                                          jax.random.PRNGKey(config.seed + i))[0])
                            for i in range(0, n, b)])[:n]
  rewards = np.asarray(jax.jit(reward_fn)(jnp.asarray(samples)))
  pairs = reward_lib.make_preference_pairs(samples, rewards, config.seed)
  os.makedirs(workdir or ".", exist_ok=True)
  reward_lib.save_pairs(path, pairs, {"generator": "reference samples ranked by reward",
                                      "reward": ft.reward, "num_samples": n})
  return pairs


def build(config, workdir: str = "", dataset=None) -> FinetuneExperiment:
  """The fine-tuning experiment of ``config.finetune`` (reference restored)."""
  from tcsm_jax.training import restore
  ft = config.finetune
  ref_run = restore.load_run(ft.ref_workdir, dataset=dataset)
  ref = ref_run.experiment
  if ref.causal:
    raise ValueError(f"finetune.ref_workdir {ft.ref_workdir} holds a causal model")
  if ref_run.config.data.seq_len != config.data.seq_len:
    raise ValueError("fine-tuning must keep the reference's data.seq_len "
                     f"({ref_run.config.data.seq_len})")
  if ref_run.config.process != config.process:
    raise ValueError("fine-tuning must keep the reference's process")
  ds = ref.dataset if dataset is None else dataset
  corr = models.build_denoiser(config, ds.vocab_size, ref.process.num_states)
  reward_fn, deltas_fn = make_reward(config, ds, workdir)
  pairs = None
  if ft.kind == "preference":
    pairs = _preference_pairs(config, ref, ref_run.params, reward_fn, workdir)
  return FinetuneExperiment(config, ds, ref.process, ref.schedule, corr, ref,
                            ref_run.params, reward_fn, deltas_fn, pairs)
