"""Vocabulary tiling (``loss.tile_vocab``): the output layer runs per loss chunk, so the
``[batch, L, V]`` logits never exist; the loss and its gradients (every parameter, the
head's included) equal the plain loss's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tcsm_jax import objective, processes, schedules
from tcsm_jax.models import transformer
from tcsm_jax.training import config as config_lib


def _loss_cfg(kind, chunk, tile):
  c = config_lib.default_config().loss
  c.kind, c.chunk_size, c.tile_vocab = kind, chunk, tile
  return c


def test_tiled_loss_equals_plain_loss():
  """The cheap default: absorbing process, TCSM score form (every kind on both
  processes: the slow test below)."""
  _check_tiled_equals_plain("absorbing", ["tcsm"], variants=("tiled",))


def test_tiled_loss_equals_plain_loss_every_kind_and_process():
  for process in ("absorbing", "uniform"):
    _check_tiled_equals_plain(process, ["tcsm", "sedd"] + (
        ["masked_elbo"] if process == "absorbing" else []))


def _check_tiled_equals_plain(process, kinds, variants=("chunked", "tiled", "tiled_one")):
  v, b, length = 13, 3, 8
  proc = processes.get(process, v)
  cfg = transformer.TransformerConfig(vocab_size=v, num_input_states=proc.num_states,
                                      max_length=length, num_layers=1, width=32,
                                      num_heads=2)
  model = transformer.DiffusionTransformer(cfg)
  x0 = jnp.asarray(np.random.default_rng(0).integers(0, v, (b, length)), jnp.int32)
  params = model.init(jax.random.PRNGKey(0), x0, jnp.ones((b,)))["params"]
  # a non-zero head (it starts at zero: adaLN-Zero) so its gradient path is exercised
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(
      jax.random.PRNGKey(p.size), p.shape), params)
  plain = lambda p, x, s, tr, k: model.apply({"params": p}, x, s)
  tiled = lambda p, x, s, tr, k: objective.Hidden(
      model.apply({"params": p}, x, s, return_hidden=True), transformer.head_fn(cfg, p))
  sched = schedules.get("log_linear")

  def all_losses(p):
    out = {}
    for kind in kinds:
      for name, chunk, apply in (("plain", 0, plain), ("chunked", 6, plain),
                                 ("tiled", 6, tiled), ("tiled_one", 0, tiled)):
        if name != "plain" and name not in variants:
          continue
        fn = objective.make_loss_fn(_loss_cfg(kind, chunk, name.startswith("tiled")),
                                    proc, sched, apply)
        out[(kind, name)] = jax.value_and_grad(
            lambda q: fn(q, x0, jax.random.PRNGKey(3), True)[0])(p)
    return out

  got = jax.jit(all_losses)(params)
  for kind in kinds:
    pv, pg = got[(kind, "plain")]
    assert np.isfinite(float(pv)) and float(pv) > 0
    assert float(jnp.abs(pg["trunk"]["head"]["kernel"]).max()) > 1e-3
    for name in variants:
      val, grad = got[(kind, name)]
      np.testing.assert_allclose(val, pv, rtol=1e-6, atol=1e-6, err_msg=f"{kind} {name}")
      for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(grad),
                              jax.tree.leaves(pg)):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6,
                                   err_msg=f"{kind} {name} {jax.tree_util.keystr(path)}")


def test_tiled_loss_has_no_full_logits_in_the_program():
  """Lowered with tiling, no ``[b * L, V]`` or ``[b, L, V]`` float array is produced
  (the head's output is ``[chunk, V]``)."""
  v, b, length = 1009, 3, 16       # V prime, b * L = 48 != width: no accidental match
  proc = processes.get("absorbing", v)
  cfg = transformer.TransformerConfig(vocab_size=v, num_input_states=proc.num_states,
                                      max_length=length, num_layers=1, width=32,
                                      num_heads=2)
  model = transformer.DiffusionTransformer(cfg)
  x0 = jnp.zeros((b, length), jnp.int32)
  params = model.init(jax.random.PRNGKey(0), x0, jnp.ones((b,)))["params"]
  tiled = lambda p, x, s, tr, k: objective.Hidden(
      model.apply({"params": p}, x, s, return_hidden=True), transformer.head_fn(cfg, p))
  plain = lambda p, x, s, tr, k: model.apply({"params": p}, x, s)

  def text(apply, tile):
    fn = objective.make_loss_fn(_loss_cfg("tcsm", 8, tile), proc,
                                schedules.get("log_linear"), apply)
    g = jax.grad(lambda p: fn(p, x0, jax.random.PRNGKey(1), True)[0])
    return jax.jit(g).lower(params).compile().as_text()

  full = (f"f32[{b},{length},{v}]", f"f32[{b * length},{v}]")
  assert any(s in text(plain, False) for s in full)   # the check can fail
  tiled_text = text(tiled, True)
  assert not any(s in tiled_text for s in full)
  assert f"f32[8,{v}]" in tiled_text


def test_config_tile_vocab_needs_chunks():
  cfg = config_lib.default_config()
  cfg.loss.tile_vocab = True
  with pytest.raises(Exception, match="tile_vocab.*chunk_size > 0"):
    config_lib.validate(cfg)
  cfg.loss.chunk_size = 64
  config_lib.validate(cfg)


def test_train_binary_refuses_tiling_without_chunks_in_one_line(tmp_path):
  import os, subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.train",
       "--config=experiments/configs/kjv_tiny.py", f"--workdir={tmp_path / 'run'}",
       "--config.loss.tile_vocab=true", "--config.model.attention_impl=splash",
       "--config.data.seq_len=100"],
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), env=env,
      capture_output=True, text=True, timeout=120)
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert len(lines) == 1 and "Traceback" not in proc.stderr
  assert "loss.tile_vocab" in lines[0] and "chunk_size > 0" in lines[0]
  assert not (tmp_path / "run").exists()
