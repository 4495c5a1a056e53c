"""bf16 inference: the network in bfloat16 (float32 parameters, exact float32 draws)
samples the same law as float32 on a small model."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

import tcsm_jax as tj
from experiments import common
from tcsm_jax import sampling
from tests.helpers import small_dataset, tiny_config


def _models():
  ds = small_dataset()
  cfg = tiny_config(**{"data.seq_len": 16})
  f32 = tj.build(cfg, ds)
  bf16 = tj.build(common.with_model_dtype(cfg, "bfloat16"), ds)
  assert bf16.config.model.dtype == "bfloat16" and cfg.model.dtype == "float32"
  params = jax.jit(f32.init_params)(jax.random.PRNGKey(0))
  # Random non-trivial weights (the output head starts at zero).
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  params = jax.tree.unflatten(tree, [p + 0.15 * jax.random.normal(k, p.shape, p.dtype)
                                     for p, k in zip(leaves, keys)])
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  return ds, f32, bf16, params


def test_bf16_network_gives_the_float32_denoiser():
  ds, f32, bf16, params = _models()
  x_t = jnp.full((4, 16), f32.process.mask_id).at[:, ::3].set(5)
  sig = jnp.full((4,), 1.0)
  l16 = jax.jit(bf16.apply_fn)(params, x_t, sig)
  assert l16.dtype == jnp.bfloat16
  p32 = jax.nn.softmax(jax.jit(f32.apply_fn)(params, x_t, sig).astype(jnp.float32), -1)
  p16 = jax.nn.softmax(l16.astype(jnp.float32), -1)
  assert float(jnp.abs(p32 - p16).max()) < 0.03
  assert float(p32.max()) > 0.2                     # peaked: the comparison can fail


def test_bf16_network_samples_the_float32_law():
  ds, f32, bf16, params = _models()
  n, length = 2048, 16
  hists = []
  for exp in (f32, bf16):
    x, _ = sampling.jit_sampler(exp.apply_fn, exp.process, exp.schedule, (n, length),
                                steps=16)(params, jax.random.PRNGKey(2))
    hists.append(np.stack([np.bincount(c, minlength=ds.vocab_size)
                           for c in np.asarray(x).T]))          # [length, V]
  a, b = hists
  v = ds.vocab_size
  assert 0.5 * np.abs(a.sum(0) / a.sum() - 1.0 / v).sum() > 0.1   # a law, not noise
  keep = (a + b) > 0
  chi2 = stats.chi2_contingency(np.stack([a[keep], b[keep]]))
  assert chi2.pvalue > 1e-3, chi2
