"""Splash attention (the Pallas TPU kernel, ``model.attention_impl=splash``).

On the CPU the kernel runs in Pallas interpret mode (the same kernel code, forward and
the dq/dkv backward kernels, interpreted): compared here with XLA's attention, values and
gradients. What the CPU cannot show, that the TPU program holds the Mosaic kernels, is
the slow test at the end: it compiles for a described TPU slice when libtpu is installed.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tcsm_jax.models import transformer
from tcsm_jax.training import config as config_lib, partition


def _qkv(b, t, n, d, seed=0, dtype=jnp.float32):
  ks = jax.random.split(jax.random.PRNGKey(seed), 3)
  return tuple(jax.random.normal(k, (b, t, n, d)).astype(dtype) for k in ks)


@pytest.mark.parametrize("causal,d", [(False, 32), (True, 32), (True, 128)])
def test_splash_equals_xla_attention_values_and_gradients(causal, d):
  q, k, v = _qkv(1, 384, 2, d)        # 3 x 3 tiles of 128
  cot = jax.random.normal(jax.random.PRNGKey(9), q.shape)
  xla = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal,
                                                     implementation="xla")
  spl = lambda q, k, v: transformer.attention(q, k, v, causal=causal, impl="splash")
  np.testing.assert_allclose(jax.jit(spl)(q, k, v), xla(q, k, v), atol=2e-6)
  grad = lambda f: jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) * cot), (0, 1, 2)))(q, k, v)
  for got, want, name in zip(grad(spl), grad(xla), "qkv"):
    assert float(jnp.abs(want).max()) > 0.1
    np.testing.assert_allclose(got, want, atol=2e-5, err_msg=f"d{name}")


def test_splash_under_a_mesh_runs_per_device_and_equals_xla():
  """Under the trainer's context mesh the kernel runs in shard_map over the batch axes."""
  mesh = partition.make_mesh(2, devices=jax.devices()[:8])
  q, k, v = _qkv(8, 128, 2, 16, seed=1)
  sh = partition.batch_sharding(mesh)

  def f(q, k, v):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return transformer.attention(q, k, v, causal=False, impl="splash")

  lowered = jax.jit(f, in_shardings=(sh,) * 3, out_shardings=sh).lower(q, k, v)
  assert "shard_map" in lowered.as_text() or "sdy.manual_computation" in lowered.as_text()
  got = lowered.compile()(*(jax.device_put(a, sh) for a in (q, k, v)))
  np.testing.assert_allclose(got, jax.nn.dot_product_attention(q, k, v), atol=2e-6)


def test_unsupported_lengths_are_one_clear_error():
  q, k, v = _qkv(1, 100, 2, 16)
  with pytest.raises(ValueError, match="multiple of 128.*got 100"):
    transformer.attention(q, k, v, causal=True, impl="splash")
  assert transformer.splash_unsupported(256) is None


def test_config_rejects_splash_at_an_untiled_length():
  cfg = config_lib.default_config()
  cfg.model.attention_impl = "splash"
  cfg.data.seq_len = 100
  with pytest.raises(Exception, match="splash.*multiple of 128"):
    config_lib.validate(cfg)
  cfg.data.seq_len = 256
  config_lib.validate(cfg)


def _tpu_topology(name):
  pytest.importorskip("libtpu", reason="libtpu is not installed (pip install -e .[tpu]): "
                      "the TPU compiler is needed to compile for a TPU slice")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  return topologies.get_topology_desc(platform="tpu", topology_name=name)


@pytest.mark.parametrize("d", [64, 128])
def test_tpu_program_holds_the_splash_kernels(d):
  """Compiled for a v5e chip: the forward and the two backward Mosaic kernels."""
  dev = _tpu_topology("v5e:2x2").devices[0]
  a = jax.ShapeDtypeStruct((2, 512, 4, d), jnp.bfloat16,
                           sharding=jax.sharding.SingleDeviceSharding(dev))
  f = lambda q, k, v: jnp.sum(transformer.attention(q, k, v, causal=True,
                                                    impl="splash").astype(jnp.float32))
  text = jax.jit(jax.grad(f, (0, 1, 2))).lower(a, a, a).compile().as_text()
  assert text.count("tpu_custom_call") == 3, text.count("tpu_custom_call")


def test_auto_picks_splash_on_tpu_where_the_length_allows(monkeypatch):
  q, k, v = _qkv(1, 128, 2, 16)
  monkeypatch.setattr(transformer.jax, "default_backend", lambda: "tpu")
  auto = lambda t: str(jax.make_jaxpr(lambda q, k, v: transformer.attention(
      q, k, v, causal=True, impl="auto"))(q[:, :t], k[:, :t], v[:, :t]))
  assert "pallas_call" in auto(128)
  assert "pallas_call" not in auto(100)         # an untiled length: XLA's attention
