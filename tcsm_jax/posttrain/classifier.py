"""A small differentiable text classifier trained by the project, used as a reward.

The labelled split: the bundled KJV corpus's Old Testament (label 0) and New
Testament (label 1) -- the boundary is Matthew 1:1. The classifier is a 1-D convolution
over one-hot tokens, ReLU, mean pooling and a linear read-out; it accepts soft
(one-hot) inputs, so the reward's neighbour differences can be taken exactly (by
enumeration) or to first order (one gradient), like the AR teacher's.
"""

from __future__ import annotations

from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tcsm_jax import fs
from tcsm_jax.data import pipeline
from tcsm_jax.training import checkpoint as ckpt_lib

NT_MARKER = "the book of the generation of jesus christ the son of david"


class ConvClassifier(nn.Module):
  """``onehot [b, L, V] -> logit [b]`` (log-odds of label 1)."""

  features: int = 64
  width: int = 7

  @nn.compact
  def __call__(self, onehot):
    h = nn.Conv(self.features, (self.width,), padding="SAME")(onehot.astype(jnp.float32))
    h = nn.relu(h).mean(1)
    return nn.Dense(1)(h)[:, 0]


def testament_labels() -> Tuple[np.ndarray, int]:
  """``(train tokens, offset of the New Testament)`` of the bundled corpus."""
  ds = pipeline.load_bundled()
  text = ds.decode(ds.train)
  cut = text.find(NT_MARKER)
  if cut < 0:
    raise ValueError("the New Testament marker is missing from the bundled corpus")
  return ds.train, cut


def labelled_chunks(tokens, cut, seq_len, n, seed):
  """``n`` balanced chunks ``[n, seq_len]`` and labels ``[n]`` (0 = OT, 1 = NT)."""
  rng = np.random.default_rng(seed)
  lab = rng.integers(0, 2, n)
  lo = np.where(lab == 0, 0, cut)
  hi = np.where(lab == 0, cut - seq_len, len(tokens) - seq_len)
  starts = (lo + rng.random(n) * (hi - lo)).astype(np.int64)
  return tokens[starts[:, None] + np.arange(seq_len)].astype(np.int32), lab


def train(ds: pipeline.TokenDataset, seq_len: int, steps: int = 300, batch: int = 64,
          seed: int = 0, lr: float = 3e-3):
  """Trains the classifier on the bundled corpus's labelled split (27-symbol text).

  Returns ``(module, params, held-out accuracy)``.
  """
  if ds.vocab_size != 27:
    raise ValueError("the testament classifier reads the 27-symbol text8 alphabet; "
                     f"this dataset has {ds.vocab_size} tokens")
  tokens, cut = testament_labels()
  model = ConvClassifier()
  v = ds.vocab_size
  params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, seq_len, v)))["params"]
  opt = optax.adam(lr)
  opt_state = opt.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss_fn(p):
      logit = model.apply({"params": p}, jax.nn.one_hot(x, v))
      return optax.sigmoid_binary_cross_entropy(logit, y).mean()
    loss, g = jax.value_and_grad(loss_fn)(params)
    upd, opt_state = opt.update(g, opt_state, params)
    return optax.apply_updates(params, upd), opt_state, loss

  for s in range(steps):
    x, y = labelled_chunks(tokens, cut, seq_len, batch, seed * 100_003 + s)
    params, opt_state, _ = step(params, opt_state, jnp.asarray(x), jnp.asarray(y, jnp.float32))
  x, y = labelled_chunks(tokens, cut, seq_len, 1024, seed + 999_983)
  logit = model.apply({"params": params}, jax.nn.one_hot(jnp.asarray(x), v))
  acc = float(((np.asarray(logit) > 0) == y).mean())
  return model, params, acc


def save(directory: str, params) -> None:
  ck = ckpt_lib.Checkpointer(directory, async_save=False)
  ck.save(0, params, {"kind": "conv_classifier"})
  ck.close()


def load(directory: str, seq_len: int, vocab_size: int):
  model = ConvClassifier()
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               jnp.zeros((1, seq_len, vocab_size)))["params"])
  # The restore target names this host's first device: a classifier saved on another
  # topology (a CPU with 8 devices, a GPU) restores here (orbax refuses it otherwise).
  one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = ckpt_lib.abstract_like(abstract, jax.tree.map(lambda _: one, abstract))
  params, _, _ = ckpt_lib.Checkpointer(directory).restore(target)
  return model, params


def load_or_train(directory: str, ds, seq_len: int, steps: int = 300):
  """Loads the classifier saved in ``directory`` or trains and saves one."""
  if fs.isdir(directory) and fs.listdir(directory):
    model, params = load(directory, seq_len, ds.vocab_size)
    return model, params, None
  model, params, acc = train(ds, seq_len, steps)
  save(directory, params)
  return model, params, acc
