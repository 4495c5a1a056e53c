"""Transformer: shapes, dtypes, zero-init adaLN, scan over layers == loop, remat."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tcsm_jax.models import transformer


def _cfg(**kw):
  base = dict(vocab_size=7, num_input_states=8, max_length=16, num_layers=3, width=32,
              num_heads=4, cond_width=32)
  base.update(kw)
  return transformer.TransformerConfig(**base)


def _perturb(params, key):
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree_util.tree_unflatten(
      tree, [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


def test_shapes_dtypes_and_identity_at_init():
  x = jnp.asarray(np.random.default_rng(0).integers(0, 8, (2, 16)))
  for dtype in (jnp.float32, jnp.bfloat16):
    m = transformer.DiffusionTransformer(_cfg(dtype=dtype))
    p = m.init(jax.random.PRNGKey(0), x, jnp.ones((2,)))["params"]
    out = m.apply({"params": p}, x, jnp.ones((2,)))
    assert out.shape == (2, 16, 7) and out.dtype == dtype
    # adaLN-Zero + zero head: the untrained denoiser predicts uniform logits.
    np.testing.assert_array_equal(np.asarray(out, np.float32), 0.0)
    assert all(l.dtype == jnp.float32 for l in jax.tree_util.tree_leaves(p))
  with pytest.raises(ValueError, match="max_length"):
    m.apply({"params": p}, jnp.zeros((1, 20), jnp.int32), jnp.ones((1,)))
  with pytest.raises(ValueError, match="divisible"):
    _cfg(width=30)


def test_scan_over_layers_equals_the_loop_and_remat_is_transparent():
  x = jnp.asarray(np.random.default_rng(1).integers(0, 8, (2, 16)))
  sig = jnp.array([0.3, 2.0])
  loop = transformer.DiffusionTransformer(_cfg())
  p = _perturb(loop.init(jax.random.PRNGKey(0), x, sig)["params"], jax.random.PRNGKey(1))
  want = loop.apply({"params": p}, x, sig)
  trunk = dict(p["trunk"])
  blocks = [trunk.pop(f"block_{i}") for i in range(3)]
  trunk["blocks"] = {"block": jax.tree_util.tree_map(lambda *a: jnp.stack(a), *blocks)}
  scanned = transformer.DiffusionTransformer(_cfg(scan_layers=True))
  got = scanned.apply({"params": dict(p, trunk=trunk)}, x, sig)
  np.testing.assert_allclose(got, want, atol=2e-5)
  for model in (transformer.DiffusionTransformer(_cfg(remat=True)),
                transformer.DiffusionTransformer(_cfg(remat=True, scan_layers=True))):
    pp = p if not model.cfg.scan_layers else dict(p, trunk=trunk)
    np.testing.assert_allclose(model.apply({"params": pp}, x, sig), want, atol=2e-5)
    g = jax.grad(lambda q: model.apply({"params": q}, x, sig).sum())(pp)
    assert all(np.isfinite(np.asarray(l)).all() for l in jax.tree_util.tree_leaves(g))
