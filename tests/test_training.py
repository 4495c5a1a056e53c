"""Training: sharded step == single-device step, NaN guard, accumulation, loss falls,
exact resume (stop/restart and SIGTERM), checkpoint corruption, fail-fast configs."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tcsm_jax import objective
from tcsm_jax import errors
from tcsm_jax.training import checkpoint as ckpt_lib
from tcsm_jax.training import config as config_lib
from tcsm_jax.training import metrics as metrics_lib
from tcsm_jax.training import optim, partition, state as state_lib, step as step_lib
from tcsm_jax.training import trainer

from helpers import small_dataset, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_steps(exp, config, mesh, n_steps, min_shard_size=2 ** 14):
  optimizer, sched = optim.make_optimizer(config.optim, config.train.num_steps)
  loss_fn = objective.make_loss_fn(config.loss, exp.process, exp.schedule, exp.apply_fn)

  def create(key):
    return state_lib.create(exp.init_params(key), optimizer, jax.random.PRNGKey(7))

  abstract = jax.eval_shape(create, jax.random.PRNGKey(0))
  sh = partition.state_shardings(abstract, mesh, min_shard_size)
  bsh = partition.batch_sharding(mesh)
  state = jax.jit(create, out_shardings=sh)(jax.random.PRNGKey(0))
  step = jax.jit(step_lib.make_train_step(loss_fn, optimizer, sched, 0.99),
                 in_shardings=(sh, bsh), out_shardings=(sh, partition.replicated(mesh)))
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(n_steps):
    batch = rng.integers(0, 27, (config.train.batch_size, config.data.seq_len))
    state, m = step(state, partition.to_global(batch.astype(np.int32), bsh))
    losses.append(float(m["loss"]))
  return losses, jax.device_get(state.params), state


def test_eight_device_step_equals_single_device_step():
  assert jax.device_count() == 8, "conftest sets 8 host devices"
  config = tiny_config()
  exp = trainer.build(config, small_dataset())
  one = partition.make_mesh(1, jax.devices()[:1])
  dp8 = partition.make_mesh(1)
  fsdp = partition.make_mesh(2)
  l1, p1, _ = _run_steps(exp, config, one, 3)
  l8, p8, s8 = _run_steps(exp, config, dp8, 3)
  lf, pf, sf = _run_steps(exp, config, fsdp, 3, min_shard_size=64)
  np.testing.assert_allclose(l8, l1, rtol=2e-5)
  np.testing.assert_allclose(lf, l1, rtol=2e-5)
  for a, b, c in zip(jax.tree.leaves(p1), jax.tree.leaves(p8),
                     jax.tree.leaves(pf)):
    np.testing.assert_allclose(b, a, atol=2e-6, rtol=1e-4)
    np.testing.assert_allclose(c, a, atol=2e-6, rtol=1e-4)
  # FSDP really shards the parameters: some leaf lives on only a part of the mesh.
  specs = [x.sharding.spec for x in jax.tree.leaves(sf.params)]
  assert any("fsdp" in tuple(s) for s in specs)


def test_nan_guard_skips_bad_step():
  params = {"w": jnp.ones((3,))}
  opt = optax.adam(0.1)

  def loss_fn(p, x, key, train):
    loss = jnp.sum(p["w"] ** 2) * jnp.mean(x)
    loss = jnp.where(jnp.any(x < 0), jnp.nan, loss)
    return loss, {"loss": loss}

  step = jax.jit(step_lib.make_train_step(loss_fn, opt, lambda s: 0.1, 0.9))
  st = state_lib.create(params, opt, jax.random.PRNGKey(0))
  st1, m1 = step(st, jnp.ones((4, 2)))
  assert m1["skipped"] == 0 and not np.allclose(st1.params["w"], 1.0)
  st2, m2 = step(st1, -jnp.ones((4, 2)))
  assert m2["skipped"] == 1 and int(st2.skipped) == 1 and int(st2.step) == 2
  np.testing.assert_array_equal(st2.params["w"], st1.params["w"])
  np.testing.assert_array_equal(st2.ema_params["w"], st1.ema_params["w"])
  for a, b in zip(jax.tree.leaves(st2.opt_state),
                  jax.tree.leaves(st1.opt_state)):
    np.testing.assert_array_equal(a, b)


def test_gradient_accumulation_equals_full_batch():
  params = {"w": jnp.arange(3.0)}
  opt = optax.sgd(0.1)

  def loss_fn(p, x, key, train):
    loss = jnp.mean((x @ p["w"] - 1.0) ** 2)
    return loss, {"loss": loss}

  x = jax.random.normal(jax.random.PRNGKey(1), (8, 3))
  st = state_lib.create(params, opt, jax.random.PRNGKey(0))
  full, mf = jax.jit(step_lib.make_train_step(loss_fn, opt, lambda s: 0.1, 0.9))(st, x)
  acc, ma = jax.jit(step_lib.make_train_step(loss_fn, opt, lambda s: 0.1, 0.9, 4))(st, x)
  np.testing.assert_allclose(acc.params["w"], full.params["w"], rtol=1e-6)
  np.testing.assert_allclose(ma["loss"], mf["loss"], rtol=1e-6)


def _losses(workdir):
  rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_exact_resume_after_stop(tmp_path):
  config = tiny_config(**{"train.num_steps": 8})
  ds = small_dataset()
  straight = str(tmp_path / "straight")
  trainer.train_and_evaluate(config, straight, experiment=trainer.build(config, ds))
  split = str(tmp_path / "split")
  trainer.train_and_evaluate(config, split, stop_at_step=4,
                             experiment=trainer.build(config, ds))
  assert ckpt_lib.Checkpointer(os.path.join(split, "checkpoints")).latest_step() == 4
  trainer.train_and_evaluate(config, split, experiment=trainer.build(config, ds))
  a, b = _losses(straight), _losses(split)
  assert sorted(a) == sorted(b) == list(range(1, 9))
  for s in a:
    assert a[s] == b[s], (s, a[s], b[s])   # bitwise identical


def test_sigterm_checkpoints_and_resumes_exactly(tmp_path):
  workdir = str(tmp_path / "run")
  args = [sys.executable, "-m", "experiments.train",
          "--config=experiments/configs/kjv_tiny.py", f"--workdir={workdir}",
          "--config.data.seq_len=32", "--config.model.num_layers=1",
          "--config.model.width=32", "--config.model.num_heads=2",
          "--config.train.batch_size=8", "--config.train.num_steps=100000",
          "--config.train.log_every=1", "--config.train.eval_every=100000",
          "--config.train.checkpoint_every=100000",
          # A constant LR makes the run independent of num_steps, so the interrupted
          # run can be compared with a straight run of a different length.
          "--config.optim.lr_schedule=constant"]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 120
  while time.time() < deadline:
    if os.path.exists(metrics) and len(open(metrics).readlines()) >= 5:
      break
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 143, out.decode()[-3000:]
  assert b"SIGTERM" in out
  stopped = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints")).latest_step()
  logged = _losses(workdir)
  assert stopped == max(logged) >= 5
  # Resume for three more steps and compare with an uninterrupted run.
  target = stopped + 3
  resume = [a if "num_steps" not in a else f"--config.train.num_steps={target}"
            for a in args]
  straight = [a.replace(workdir, workdir + "_straight") for a in resume]
  for cmd in (resume, straight):
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
  a, b = _losses(workdir), _losses(workdir + "_straight")
  assert sorted(a) == sorted(b) == list(range(1, target + 1))
  for s in b:
    assert a[s] == b[s], (s, a[s], b[s])   # bitwise identical across the SIGTERM


def test_loss_falls_on_bundled_corpus(tmp_path):
  config = tiny_config(**{"train.num_steps": 250, "train.log_every": 50,
                          "train.eval_every": 250, "train.eval_batches": 4,
                          "train.batch_size": 32, "data.seq_len": 64,
                          "model.width": 64, "model.num_heads": 4,
                          "model.num_layers": 2, "optim.lr": 2e-3,
                          "train.ema_decay": 0.9})
  ds = small_dataset(200_000, 20_000)
  exp = trainer.build(config, ds)
  out = trainer.train_and_evaluate(config, str(tmp_path), experiment=exp)
  # The untrained model's bound is log(27) = 3.30 nats (uniform over 27 symbols).
  assert out["eval/nll_bound"] < 2.95, out
  rows = metrics_lib.read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
  assert os.path.isdir(os.path.join(tmp_path, "tensorboard"))
  assert json.load(open(os.path.join(tmp_path, "config.json")))["model"]["width"] == 64
  assert any("eval/nll_bound" in r for r in rows)


def test_corrupt_checkpoint_falls_back_then_fails_clearly(tmp_path):
  d = str(tmp_path / "ck")
  ck = ckpt_lib.Checkpointer(d, async_save=False)
  state = {"w": jnp.arange(4.0)}
  ck.save(1, state, {"step": 1})
  ck.save(2, {"w": jnp.arange(4.0) * 2}, {"step": 2})
  ck.close()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  # Corrupt the newest step: overwrite every file of its state with garbage.
  for root, _, files in os.walk(os.path.join(d, "2", "state")):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"garbage")
  ck = ckpt_lib.Checkpointer(d)
  restored, meta, step = ck.restore(abstract)
  assert step == 1 and meta["step"] == 1
  np.testing.assert_array_equal(restored["w"], np.arange(4.0))
  for root, _, files in os.walk(os.path.join(d, "1", "state")):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"garbage")
  with pytest.raises(ckpt_lib.CheckpointError, match="could be restored"):
    ck.restore(abstract)
  with pytest.raises(ckpt_lib.CheckpointError, match="no checkpoint"):
    ckpt_lib.Checkpointer(str(tmp_path / "empty")).restore(abstract)


@pytest.mark.parametrize("key,value,match", [
    ("train.bogus", 1, "unknown config key 'train.bogus'"),
    ("train.batch_size", "32", "must be a number"),
    ("train.num_steps", 2.5, "must be an integer"),
    ("model.remat", 1, "must be a bool"),
    ("process", "gaussian", "not one of"),
    ("train.accum_steps", 3, "divisible"),
])
def test_bad_configs_fail_fast(key, value, match):
  # A config file may build its ConfigDict from plain dicts with any types.
  d = tiny_config().to_dict()
  node = d
  parts = key.split(".")
  for p in parts[:-1]:
    node = node[p]
  node[parts[-1]] = value
  import ml_collections
  with pytest.raises(ValueError, match=match):
    config_lib.validate(ml_collections.ConfigDict(d))


def test_bad_semantic_configs_fail_before_training(tmp_path):
  for key, value, match in [("loss.kind", "mle", "'loss.kind' = 'mle' is not one of"),
                            ("loss.divergence", "tv", "'loss.divergence' = 'tv'"),
                            ("model.size", "huge", "'model.size' = 'huge'"),
                            ("schedule.name", "sigmoid", "'schedule.name' = 'sigmoid'"),
                            ("model.num_heads", 3, "divisible by model.num_heads"),
                            ("optim.lr", -1.0, "'optim.lr' must be > 0"),
                            ("loss.teacher_weight", 1.5, r"in \[0, 1\]"),
                            ("train.profile_steps", "5", "first,last")]:
    with pytest.raises(ValueError, match=match):
      trainer.build(tiny_config(**{key: value}), small_dataset(2000, 2000))
  with pytest.raises(ValueError, match="needs process='absorbing'"):
    trainer.build(tiny_config(**{"process": "uniform", "loss.kind": "masked_elbo"}),
                  small_dataset(2000, 2000))
  with pytest.raises((FileNotFoundError, errors.DataError), match="does not exist"):
    trainer.build(tiny_config(**{"data.name": "text8", "data.path": "/nonexistent.zip"}))


def test_batch_not_divisible_by_devices_fails_before_training(tmp_path):
  assert jax.device_count() == 8
  cfg = tiny_config(**{"train.batch_size": 12})
  with pytest.raises(ValueError, match="'train.batch_size' = 12 must be a multiple of "
                                       "the 8 devices"):
    trainer.train_and_evaluate(cfg, str(tmp_path), experiment=trainer.build(
        cfg, small_dataset(2000, 2000)))
  assert not os.listdir(tmp_path)          # nothing written


@pytest.mark.parametrize("name", ["kjv_tiny", "kjv_judge", "kjv_reward",
                                  "kjv_preference", "text8", "owt", "lm1b"])
def test_every_shipped_config_validates_and_says_what_it_reproduces(name):
  import importlib
  mod = importlib.import_module(f"experiments.configs.{name}")
  c = mod.get_config()
  if c.data.name in ("text8", "prepared", "text_file"):
    c.data.path = "/data/x"        # the one key a user must give
  if c.finetune.kind != "none":
    c.finetune.ref_workdir = "/runs/ref"
  config_lib.validate(c)
  if name in ("text8", "owt", "lm1b"):
    doc = mod.__doc__
    assert "Reproduces" in doc and "prepare_data" in doc and "Cost of one step" in doc
    assert c.train.batch_size == 512 and c.train.ema_decay == 0.9999
