"""Rewards from Hugging Face GPT-2 sequence classifiers (``finetune.classifier_dir =
'hf:DIR'``, a ``GPT2ForSequenceClassification`` directory; ``models/gpt2.py``).

The reward of a sequence is the classifier's log-probability of class
``finetune.classifier_label``, ``log softmax(logits)[label]`` (with one label, a
regression head, the score itself), read at the rightmost token that is not the
classifier's ``pad_token_id`` (HF's pooling).

* **Shared tokenizer** (``shared_tokenizer_reward``): the diffusion model's tokens are
  the classifier's (same vocabulary size and, where both are known, the same
  ``tokenizer.json``). The reward is differentiable in the one-hot input (the
  embedding lookup becomes a weighted sum; pooling is read off the one-hot's argmax),
  so neighbour differences are first order (``finetune.reward_mode = 'taylor'``: one
  forward and backward pass per batch) or exact (``'exact'``: ``L V + 1`` classifier
  evaluations per sequence), and sampling-time guidance
  (``experiments.sample --guide=classifier --guide_classifier_dir=hf:DIR``) works.
* **Any other tokenizer** (``retokenized_reward``): a black box. Each sequence is
  decoded with the model's tokenizer, encoded with the classifier's, truncated to its
  ``n_positions`` and padded with its pad token (EOS when it has none), then scored on
  the host (``jax.pure_callback``). Only exact neighbour differences exist: for a batch
  of ``b`` sequences of length ``L`` over ``V`` tokens, ``targets.ar_exact`` calls the
  reward on ``b (L V + 1)`` sequences, i.e. ``L V + 1`` decodes, retokenizations and
  classifier forward passes per sequence, per training step.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from tcsm_jax import errors
from tcsm_jax.models import gpt2


def _label_log_prob(logits, label: int):
  logits = logits.astype(jnp.float32)
  if logits.shape[-1] == 1:
    return logits[..., 0]
  return jax.nn.log_softmax(logits, -1)[..., label]


def check_label(pt: gpt2.Pretrained, label: int) -> None:
  n = pt.config.num_labels
  if n > 1 and not 0 <= label < n:
    raise errors.ConfigError(f"finetune.classifier_label {label} is not a class of the "
                             f"classifier {pt.directory} ({n} labels)")


def shares_tokenizer(pt: gpt2.Pretrained, vocab_size: int,
                     tokenizer_sha: Optional[str], data_tokenizer=None) -> bool:
  """Whether the model's tokens are the classifier's (size, and tokenizer where known:
  ``gpt2.same_tokenizer``)."""
  if vocab_size != pt.config.vocab_size:
    return False
  return gpt2.same_tokenizer(pt.tokenizer, data_tokenizer, tokenizer_sha) is not False


def shared_tokenizer_reward(pt: gpt2.Pretrained, label: int = 1
                            ) -> Tuple[Callable, Callable]:
  """``(reward(tokens [n, L]) -> [n], soft_reward(onehot [n, L, V]) -> [n])``."""
  check_label(pt, label)
  model, params = pt.model, pt.params

  def hard(tokens):
    return _label_log_prob(model.apply({"params": params}, tokens), label)

  def soft(onehot):
    tokens = jnp.argmax(jax.lax.stop_gradient(onehot), -1)     # pooling position
    return _label_log_prob(model.apply({"params": params}, tokens, soft_tokens=onehot),
                           label)

  return hard, soft


def retokenized_reward(pt: gpt2.Pretrained, decode: Callable, label: int = 1,
                       batch_size: int = 64) -> Callable:
  """A black-box ``reward(tokens [n, L]) -> [n]`` (jittable through
  ``jax.pure_callback``): decode with the model's ``decode``, encode with the
  classifier's tokenizer, truncate to ``n_positions``, pad, classify (module
  docstring)."""
  check_label(pt, label)
  if pt.tokenizer is None:
    raise errors.ConfigError(f"the classifier {pt.directory} has no tokenizer.json: it "
                             "cannot read another tokenizer's text")
  ctx = pt.config.n_positions
  pad = pt.config.pad_token_id
  pad = pt.eos_id if pad is None else pad
  model, params = pt.model, pt.params
  fwd = jax.jit(lambda x: _label_log_prob(model.apply({"params": params}, x), label))

  def host(tokens):
    texts = decode(np.asarray(tokens))
    rows = [r[:ctx] for r in pt.tokenizer.encode_batch(list(texts))]
    width = max(1, max(len(r) for r in rows))
    width = min(ctx, -(-width // 16) * 16)                   # few compiled shapes
    x = np.full((len(rows), width), pad, np.int32)
    for i, r in enumerate(rows):
      x[i, :len(r)] = r
    out = []
    for i in range(0, len(x), batch_size):
      chunk = x[i:i + batch_size]
      n = len(chunk)
      if n < batch_size:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, 0)])
      out.append(np.asarray(fwd(chunk))[:n])
    return np.concatenate(out).astype(np.float32)

  def reward(tokens):
    return jax.pure_callback(host, jax.ShapeDtypeStruct(tokens.shape[:1], jnp.float32),
                             tokens)

  return reward
