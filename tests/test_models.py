"""Transformer: shapes, dtypes, zero-init adaLN, scan over layers == loop, remat,
attention implementations, parameter tree, row independence (sampler cache)."""

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


def _random_params(model, *args, seed=0):
  """Random parameters of ``model`` without running its initializers: N(0, 0.1^2)
  entries, LayerNorm scales around 1."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args)["params"])
  rng = np.random.default_rng(seed)
  leaves, tree = jax.tree.flatten_with_path(shapes)
  return jax.tree.unflatten(tree, [
      jnp.asarray((str(path[-1].key) == "scale") + 0.1 * rng.standard_normal(s.shape),
                  jnp.float32) for path, s in leaves])


def test_shapes_dtypes_and_identity_at_init():
  x = jnp.asarray(np.random.default_rng(0).integers(0, 8, (2, 16)))
  for dtype in (jnp.float32, jnp.bfloat16):
    m = transformer.DiffusionTransformer(_cfg(dtype=dtype))
    p = jax.jit(m.init)(jax.random.PRNGKey(0), x, jnp.ones((2,)))["params"]  # eager: s
    out = jax.jit(m.apply)({"params": p}, x, jnp.ones((2,)))
    assert out.shape == (2, 16, 7) and out.dtype == dtype
    # adaLN-Zero + zero head: the untrained denoiser predicts uniform logits.
    np.testing.assert_array_equal(np.asarray(out, np.float32), 0.0)
    assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(p))
  with pytest.raises(ValueError, match="max_length"):
    m.apply({"params": p}, jnp.zeros((1, 20), jnp.int32), jnp.ones((1,)))
  with pytest.raises(ValueError, match="divisible"):
    _cfg(width=30)


def test_scan_over_layers_equals_the_loop_and_remat_is_transparent():
  x = jnp.asarray(np.random.default_rng(1).integers(0, 8, (2, 16)))
  sig = jnp.array([0.3, 2.0])
  loop = transformer.DiffusionTransformer(_cfg())
  p = _random_params(loop, x, sig, seed=1)
  want = loop.apply({"params": p}, x, sig)
  trunk = dict(p["trunk"])
  blocks = [trunk.pop(f"block_{i}") for i in range(3)]
  trunk["blocks"] = {"block": jax.tree.map(lambda *a: jnp.stack(a), *blocks)}
  scanned = transformer.DiffusionTransformer(_cfg(scan_layers=True))
  got = scanned.apply({"params": dict(p, trunk=trunk)}, x, sig)
  np.testing.assert_allclose(got, want, atol=2e-5)
  for model in (transformer.DiffusionTransformer(_cfg(remat=True)),
                transformer.DiffusionTransformer(_cfg(remat=True, scan_layers=True))):
    pp = p if not model.cfg.scan_layers else dict(p, trunk=trunk)
    np.testing.assert_allclose(model.apply({"params": pp}, x, sig), want, atol=2e-5)
    g = jax.grad(lambda q: model.apply({"params": q}, x, sig).sum())(pp)
    assert all(np.isfinite(np.asarray(l)).all() for l in jax.tree.leaves(g))


# --- attention implementations, rotary tables, parameter tree -------------------------

def _old_rotary(x, base):
  """The rotary embedding as it was before the tables moved to NumPy (per-call jnp)."""
  length, dim = x.shape[1], x.shape[-1]
  freqs = base ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
  ang = jnp.arange(length, dtype=jnp.float32)[:, None] * freqs[None]
  cos, sin = jnp.cos(ang)[None, :, None], jnp.sin(ang)[None, :, None]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).astype(x.dtype)


def _old_block_attention(monkeypatch):
  """Patches the Block's rotary + attention back to the previous code path: rotary on
  ``q`` and ``k`` separately, ``jax.nn.dot_product_attention`` with jax's default."""
  monkeypatch.setattr(transformer, "rotary", lambda qk, base: jnp.stack(
      [_old_rotary(qk[:, :, 0], base), _old_rotary(qk[:, :, 1], base)], 2))
  monkeypatch.setattr(transformer, "attention", lambda q, k, v, causal, impl:
                      jax.nn.dot_product_attention(q, k, v, is_causal=causal))


@pytest.mark.parametrize("causal", [False, True])
def test_attention_impls_equal_previous_attention(causal, monkeypatch):
  x = jnp.asarray(np.random.default_rng(2).integers(0, 7, (3, 16)))
  sig = jnp.array([0.1, 1.0, 4.0])
  if causal:
    make = lambda **kw: transformer.CausalTransformer(_cfg(causal=True, num_layers=2, **kw))
    args = (x,)
  else:
    make = lambda **kw: transformer.DiffusionTransformer(_cfg(num_layers=2, **kw))
    args = (x, sig)
  p = _random_params(make(), *args, seed=3)
  run = lambda model, *a: jax.jit(lambda q, *b: model.apply({"params": q}, *b))(p, *a)
  got = {impl: run(make(attention_impl=impl), *args) for impl in ("auto", "xla", "einsum")}
  with monkeypatch.context() as m:
    _old_block_attention(m)
    want = run(make(), *args)
  assert float(jnp.abs(want).max()) > 0.1           # the check is not vacuous
  for impl, out in got.items():
    np.testing.assert_allclose(out, want, atol=2e-5, rtol=1e-5, err_msg=impl)
  if causal:     # position i never sees i + 1 ...: changing the last token moves only it
    x2 = x.at[:, -1].set((x[:, -1] + 1) % 7)
    for impl in ("auto", "xla", "einsum"):
      out2 = run(make(attention_impl=impl), x2)
      np.testing.assert_allclose(out2[:, :-1], got[impl][:, :-1], atol=1e-6)


def test_attention_function_matches_jax_and_rejects_cudnn_off_gpu():
  ks = jax.random.split(jax.random.PRNGKey(0), 3)
  q, k, v = (jax.random.normal(kk, (2, 12, 3, 8)) for kk in ks)
  for causal in (False, True):
    want = jax.nn.dot_product_attention(q, k, v, is_causal=causal)
    for impl in ("auto", "xla", "einsum"):
      np.testing.assert_allclose(transformer.attention(q, k, v, causal=causal, impl=impl),
                                 want, atol=1e-6, err_msg=impl)
  # bfloat16 activations: same function to bfloat16 rounding.
  qb, kb, vb = (a.astype(jnp.bfloat16) for a in (q, k, v))
  np.testing.assert_allclose(
      np.asarray(transformer.attention(qb, kb, vb, causal=True, impl="einsum"), np.float32),
      np.asarray(jax.nn.dot_product_attention(qb, kb, vb, is_causal=True), np.float32),
      atol=2e-2)
  if jax.default_backend() != "gpu":
    with pytest.raises(ValueError, match="cudnn.*needs a GPU"):
      transformer.attention(qb, kb, vb, causal=False, impl="cudnn")
  else:          # auto (cuDNN for bf16 on GPU) and cudnn equal XLA to bf16 rounding
    for causal in (False, True):
      want = np.asarray(transformer.attention(qb, kb, vb, causal=causal, impl="xla"),
                        np.float32)
      for impl in ("auto", "cudnn"):
        got = np.asarray(transformer.attention(qb, kb, vb, causal=causal, impl=impl),
                         np.float32)
        np.testing.assert_allclose(got, want, atol=2e-2, err_msg=impl)
  with pytest.raises(ValueError, match="bfloat16"):
    _cfg(attention_impl="cudnn")                      # float32 activations
  with pytest.raises(ValueError, match="attention_impl"):
    _cfg(attention_impl="flash")
  # The rotary tables equal the per-call computation they replaced.
  x = jax.random.normal(ks[0], (2, 40, 3, 16))
  np.testing.assert_allclose(transformer.rotary(x, 1e4), _old_rotary(x, 1e4), atol=2e-6)


# Parameter names and shapes of _cfg(num_layers=2, cond_width=16) as of the checkpoints
# written before the attention change: checkpoints must keep restoring.
_BLOCK = {"attn_out/bias": (32,), "attn_out/kernel": (32, 32), "mlp_in/bias": (128,),
          "mlp_in/kernel": (32, 128), "mlp_out/bias": (32,), "mlp_out/kernel": (128, 32),
          "qkv/kernel": (32, 96)}
_DIFFUSION_TREE = {
    "cond_in/bias": (16,), "cond_in/kernel": (256, 16), "cond_out/bias": (16,),
    "cond_out/kernel": (16, 16), "trunk/adaln_final/bias": (64,),
    "trunk/adaln_final/kernel": (16, 64), "trunk/embed/embedding": (8, 32),
    "trunk/head/bias": (7,), "trunk/head/kernel": (32, 7),
    **{f"trunk/block_{i}/{k}": s for i in range(2)
       for k, s in dict(_BLOCK, **{"adaln/bias": (192,), "adaln/kernel": (16, 192)}).items()}}
_CAUSAL_TREE = {
    "trunk/embed/embedding": (8, 32), "trunk/head/bias": (7,), "trunk/head/kernel": (32, 7),
    "trunk/ln_final/scale": (32,),
    **{f"trunk/block_{i}/{k}": s for i in range(2)
       for k, s in dict(_BLOCK, **{"ln_attn/scale": (32,), "ln_mlp/scale": (32,)}).items()}}


def _tree(params):
  return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree.flatten_with_path(params)[0]}


def test_parameter_trees_unchanged_for_every_attention_impl():
  x = jnp.zeros((2, 16), jnp.int32)
  for impl in ("auto", "xla", "einsum"):
    cfg = _cfg(num_layers=2, cond_width=16, attention_impl=impl)
    d = jax.eval_shape(lambda: transformer.DiffusionTransformer(cfg).init(
        jax.random.PRNGKey(0), x, jnp.ones((2,)))["params"])
    c = jax.eval_shape(lambda: transformer.CausalTransformer(
        dataclasses.replace(cfg, causal=True)).init(jax.random.PRNGKey(0), x)["params"])
    assert _tree(d) == _DIFFUSION_TREE, impl
    assert _tree(c) == _CAUSAL_TREE, impl


def test_config_key_attention_impl_with_fallback():
  import ml_collections
  mc = ml_collections.ConfigDict(dict(size="tiny", dtype="float32"))
  assert transformer.config_from(mc, 7, 8, 16).attention_impl == "auto"   # key absent
  mc.attention_impl = "einsum"
  assert transformer.config_from(mc, 7, 8, 16).attention_impl == "einsum"
  mc.attention_impl = ""                                                    # "" = auto
  assert transformer.config_from(mc, 7, 8, 16).attention_impl == "auto"
  mc.attention_impl = "cudnn"
  with pytest.raises(ValueError, match="bfloat16"):
    transformer.config_from(mc, 7, 8, 16)


# --- the per-sequence sampler cache relies on rows not interacting ---------------------

def test_rows_are_independent_and_the_row_cache_is_exact():
  from tcsm_jax import processes, sampling, schedules
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.integers(0, 8, (6, 16)))
  sig = jnp.asarray(rng.uniform(0.1, 3.0, 6), jnp.float32)
  model = transformer.DiffusionTransformer(_cfg(num_layers=1))
  p = _random_params(model, x, sig, seed=5)
  apply = jax.jit(lambda xx, ss: model.apply({"params": p}, xx, ss))
  full = apply(x, sig)
  rows = jnp.array([4, 1, 2])
  np.testing.assert_allclose(apply(x[rows], sig[rows]), full[rows], atol=1e-5)
  # The bucketed refresh recomputes the changed rows (gathered) and keeps the others.
  w = jnp.asarray(rng.normal(size=(8, 7)), jnp.float32)
  den = lambda xx, ss: w[xx] + jnp.cumsum(w[xx], axis=1) * ss[:, None, None]  # row-wise
  want = den(x, sig)
  stale = jnp.array([False, True, False, False, True, False])
  old = jnp.full(want.shape, -7.0)
  for buckets in [(2, 6), (0, 3, 6)]:
    new, m = sampling._cached_model_log_probs(den, x, sig, old, stale, buckets)
    assert int(m) == [b for b in buckets if b >= 2][0]
    np.testing.assert_allclose(new[np.array([1, 4])], want[np.array([1, 4])], atol=1e-6)
    assert int((np.asarray(new) == -7.0).all(axis=(1, 2)).sum()) == 6 - int(m)
  _, m = sampling._cached_model_log_probs(den, x, sig, old, jnp.zeros(6, bool), (0, 2, 6))
  assert int(m) == 0
  # A row-wise denoiser that ignores sigma: the cached ancestral sampler draws exactly
  # what the analytic one draws, with fewer rows through the network.
  proc, sched = processes.Absorbing(7), schedules.get("log_linear")
  den1 = lambda xx, ss: den(xx, jnp.ones_like(ss))
  out = {}
  key = jax.random.key(6, impl="unsafe_rbg")         # compiles in a third of threefry's time
  for name, kw in [("analytic", {}), ("ancestral", dict(cache_buckets=(0, 2, 4, 6)))]:
    out[name] = jax.jit(lambda k: sampling.sample(k, den1, proc, sched, (6, 16), steps=40,
                                                  sampler=name, **kw))(key)
  np.testing.assert_array_equal(out["ancestral"][0], out["analytic"][0])
  assert int(out["analytic"][1]["nfe_rows"]) == 6 * 41
  assert int(out["ancestral"][1]["nfe_rows"]) < 6 * 41 * 0.8
  with pytest.raises(ValueError, match="cache_buckets"):
    sampling.sample(jax.random.PRNGKey(6), den1, proc, sched, (6, 16), steps=4,
                    sampler="ancestral", cache_buckets=(4, 2, 6))
  # Buckets: kept where the binomial number of changed sequences makes them pay.
  buckets = sampling.ancestral_cache_buckets
  assert buckets(sched, (16, 128), 256) == (4, 8, 16)       # ~39% of rows change a step
  assert buckets(sched, (16, 256), 64) == (16,)             # ~98%: the cache steps aside
  assert buckets(sched, (1, 2), 200) == (0, 1)
  # A long prompt leaves 8 free positions: ~12% of rows change a step.
  assert buckets(sched, (16, 256), 64, free_positions=np.full(16, 8)) == (0, 1, 2, 4, 16)


def test_mfu_flop_count_and_peaks():
  from experiments.benchmarks import mfu
  cfg = _cfg(num_layers=2, cond_width=16)
  p = jax.eval_shape(lambda: transformer.DiffusionTransformer(cfg).init(
      jax.random.PRNGKey(0), jnp.zeros((2, 16), jnp.int32), jnp.ones((2,)))["params"])
  # Per block: qkv 32x96, attn_out 32x32 + 32, mlp_in 32x128 + 128, mlp_out 128x32 + 32;
  # head 32x7 + 7. Not counted: embedding lookup, noise conditioning (per sequence).
  per_block = 32 * 96 + 32 * 32 + 32 + 32 * 128 + 128 + 128 * 32 + 32
  assert mfu.matmul_params(p) == 2 * per_block + 32 * 7 + 7
  assert mfu.train_flops_per_token(1000, 2, 32, 16) == 6 * 1000 + 12 * 2 * 32 * 16
  assert mfu.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
  assert mfu.peak_flops("NVIDIA H100 80GB HBM3", "float32") == 494.5e12        # TF32
  assert mfu.peak_flops("NVIDIA H100 80GB HBM3", "float32", "highest") == 66.9e12
  assert mfu.peak_flops("NVIDIA H100 PCIe", "bfloat16") == 756e12
  assert mfu.peak_flops("NVIDIA H200", "bfloat16") == 989e12
  assert mfu.peak_flops("NVIDIA A100-SXM4-80GB", "bfloat16") == 312e12
  assert mfu.peak_flops("TPU v4", "bfloat16") == 275e12
  assert mfu.peak_flops("TPU v5 lite", "float32") == 197e12
  assert mfu.peak_flops("TPU v5", "bfloat16") == 459e12
  assert mfu.peak_flops("TPU v5p", "bfloat16") == 459e12
  assert mfu.peak_flops("cpu", "float32") is None


def test_remat_policy_and_planning_sizes():
  from tcsm_jax.models import transformer  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="remat_policy"):
    transformer.TransformerConfig(vocab_size=5, num_input_states=6, remat=True,
                                  remat_policy="everything")
  assert transformer.SIZES["1b"] == (16, 2048, 16)
  assert transformer.SIZES["7b"] == (32, 4096, 32)
  x = jnp.ones((4, 3))
  assert transformer.constrain_batch(x) is x          # no context mesh: identity
