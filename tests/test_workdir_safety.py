"""Nothing lost, nothing silent: resume checks, config history, divergence, topology,
bucket workdirs (issues 10 and 11)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from tcsm_jax import errors, fs, likelihood, sampling
from tcsm_jax.training import checkpoint as ckpt_lib
from tcsm_jax.training import config as config_lib
from tcsm_jax.training import metrics as metrics_lib
from tcsm_jax.training import partition, restore, trainer
from tcsm_jax.training import workdir as workdir_lib

from fake_bucket import fake_gcs, leaked_local_dirs
from helpers import small_dataset, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ds():
  return small_dataset(6000, 2000)


def _train(cfg, wd, ds, **kw):
  return trainer.train_and_evaluate(cfg, str(wd), experiment=trainer.build(cfg, ds), **kw)


def _tree_equal(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_resume_with_changed_model_refuses_and_leaves_config_untouched(tmp_path, ds):
  cfg = tiny_config(**{"train.num_steps": 2})
  _train(cfg, tmp_path, ds)
  before = (tmp_path / "config.json").read_bytes()
  for key, val in [("model.width", 64), ("seed", 3), ("optim.lr", 1e3),
                   ("loss.form", "score"), ("data.name", "markov")]:
    bad = tiny_config(**{"train.num_steps": 4, key: val})
    with pytest.raises(errors.ConfigError, match=key.replace(".", r"\.")) as e:
      trainer.train_and_evaluate(bad, str(tmp_path))
    assert "refusing to resume" in str(e.value) and "\n" not in str(e.value)
  assert (tmp_path / "config.json").read_bytes() == before
  # Harmless changes resume, and every start leaves its config in the history.
  ok = tiny_config(**{"train.num_steps": 4, "train.log_every": 2, "eval.num_t": 4})
  _train(ok, tmp_path, ds)
  assert workdir_lib.config_history(str(tmp_path)) == [0, 2]
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["train"]["num_steps"] == 4
  assert json.loads((tmp_path / "config.0.json").read_text())["train"]["num_steps"] == 2


def test_resume_changes_classify_keys():
  a = tiny_config()
  b = tiny_config(**{"train.num_steps": 99, "mesh.fsdp": 2, "model.width": 64,
                     "data.seq_len": 64, "eval.num_t": 2})
  refused, allowed = config_lib.resume_changes(a, b)
  assert [r.split(":")[0] for r in refused] == ["data.seq_len", "model.width"]
  assert [r.split(":")[0] for r in allowed] == ["eval.num_t", "mesh.fsdp",
                                                "train.num_steps"]


def test_diverging_resume_stops_and_keeps_the_good_checkpoint(tmp_path, ds):
  """The issue's reproduction: resume a healthy run with a mistyped lr=1e3."""
  cfg = tiny_config(**{"train.num_steps": 6, "train.checkpoint_every": 2,
                       "train.eval_every": 2, "train.keep_checkpoints": 1,
                       "optim.lr": 3e-3})
  _train(cfg, tmp_path, ds)
  good = restore.load_run(str(tmp_path), dataset=ds).params
  bad = tiny_config(**{"train.num_steps": 200, "train.checkpoint_every": 2,
                       "train.eval_every": 2, "train.keep_checkpoints": 1,
                       "optim.lr": 1e3, "train.allow_config_change": True,
                       "train.max_bad_evals": 3, "train.max_consecutive_skipped": 10})
  with pytest.raises(trainer.TrainingError, match="last good checkpoint is step 6"):
    _train(bad, tmp_path, ds)
  ck = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"))
  assert 6 in ck.all_steps() and ck.latest_good_step() == 6
  again = restore.load_run(str(tmp_path), dataset=ds)
  assert again.step == 6 and _tree_equal(again.params, good)


def test_consecutive_skipped_steps_stop_the_run(tmp_path, ds):
  cfg = tiny_config(**{"train.num_steps": 4, "train.checkpoint_every": 2})
  _train(cfg, tmp_path, ds)
  nan = tiny_config(**{"train.num_steps": 100, "train.checkpoint_every": 2,
                       "optim.lr": float("inf"), "train.allow_config_change": True,
                       "train.max_consecutive_skipped": 5})
  with pytest.raises(errors.ConfigError, match="optim.lr"):
    config_lib.validate(nan)          # inf lr is refused up front ...
  # ... so make every step non-finite through the data instead: a NaN loss.
  exp = trainer.build(cfg, ds)
  train_fn, eval_fn = exp.loss_fns()
  nan_exp = trainer.Experiment(exp.config, exp.dataset, exp.process, exp.schedule,
                               exp.model)
  nan_exp.loss_fns = lambda: (
      lambda p, f, x, k, t=True: (lambda l, m: (l * np.nan, dict(m, loss=l * np.nan)))(
          *train_fn(p, f, x, k, t)), eval_fn)
  more = tiny_config(**{"train.num_steps": 100, "train.checkpoint_every": 2,
                        "train.max_consecutive_skipped": 5})
  with pytest.raises(trainer.TrainingError, match="5 consecutive steps were skipped.*"
                                                  "last good checkpoint is step 4"):
    trainer.train_and_evaluate(more, str(tmp_path), experiment=nan_exp)
  assert ckpt_lib.Checkpointer(str(tmp_path / "checkpoints")).latest_good_step() == 4


def test_workdir_that_is_a_file_is_refused(tmp_path, ds):
  f = tmp_path / "file"
  f.write_text("x")
  with pytest.raises(errors.WorkdirError, match="is a file"):
    trainer.train_and_evaluate(tiny_config(), str(f))


def test_checkpoint_from_eight_devices_restores_on_one_and_fsdp(tmp_path, ds):
  assert jax.device_count() == 8
  cfg = tiny_config(**{"train.num_steps": 2, "mesh.fsdp": 2, "mesh.fsdp_min_bytes": 0})
  _train(cfg, tmp_path, ds)
  ref = restore.load_run(str(tmp_path), dataset=ds)
  one = restore.load_run(str(tmp_path), dataset=ds,
                         mesh=partition.make_mesh(1, jax.devices()[:1]))
  assert _tree_equal(ref.params, one.params)
  leaf = jax.tree.leaves(one.params)[0]
  assert len(leaf.sharding.device_set) == 1
  four = restore.load_run(str(tmp_path), dataset=ds,
                          mesh=partition.make_mesh(4, jax.devices()[:4]))
  assert _tree_equal(ref.params, four.params)
  # ... and evaluates and samples on that one device, as experiments.evaluate / sample
  # do (their binaries on such a workdir: the slow 1 -> 8 -> 1 test).
  exp, length = one.experiment, cfg.data.seq_len
  batch = np.asarray(ds.validation[:2 * length]).reshape(2, length)
  rep = likelihood.evaluate(jax.random.PRNGKey(0), exp.apply_fn, [batch], exp.process,
                            exp.schedule, 2, params=one.params)
  assert np.isfinite(rep.nats_per_token) and rep.nats_per_token > 0
  x, _ = sampling.jit_sampler(exp.apply_fn, exp.process, exp.schedule, (2, length),
                              steps=4)(one.params, jax.random.PRNGKey(1))
  x = np.asarray(x)
  assert x.shape == (2, length) and x.min() >= 0 and x.max() < exp.process.vocab_size


def _env(devices):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env.pop("TCSM_COORDINATOR", None)
  return env


SMALL = ["--config=experiments/configs/kjv_tiny.py", "--config.data.seq_len=32",
         "--config.model.num_layers=1", "--config.model.width=32",
         "--config.model.num_heads=2", "--config.model.cond_width=32",
         "--config.train.batch_size=8", "--config.train.log_every=1",
         "--config.train.eval_every=1000", "--config.train.eval_batches=1",
         "--config.train.checkpoint_every=1000", "--config.eval.batch_size=8",
         "--config.eval.num_batches=1"]


def test_train_on_one_device_resume_on_eight_with_fsdp_then_evaluate_and_sample_on_one(
    tmp_path):
  wd = str(tmp_path / "run")
  r = subprocess.run([sys.executable, "-m", "experiments.train", f"--workdir={wd}",
                      "--summary_samples=0"] + SMALL + ["--config.train.num_steps=2"],
                     cwd=REPO, env=_env(1), capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  # Resume in this process (8 devices) with parameters sharded FSDP-style over 4.
  cfg = workdir_lib.load_config(wd)
  cfg.train.num_steps = 4
  cfg.mesh.fsdp = 4
  cfg.mesh.fsdp_min_bytes = 0
  out = trainer.train_and_evaluate(cfg, wd)
  assert np.isfinite(out["loss"])
  rows = metrics_lib.read_jsonl(os.path.join(wd, "metrics.jsonl"))
  assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
  # Written on 8 devices with FSDP: evaluate and sample on a 1-device host.
  for cmd in (["experiments.evaluate", "--num_batches=1", "--num_t=2"],
              ["experiments.sample", "--num_samples=2", "--steps=4", "--batch_size=2"]):
    r = subprocess.run([sys.executable, "-m", cmd[0], f"--workdir={wd}"] + cmd[1:],
                       cwd=REPO, env=_env(1), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, (cmd, r.stderr[-2000:])
    assert "Topology" not in r.stderr


class _LocalCheckpoints(ckpt_lib.Checkpointer):
  """Checkpoints of a fake-bucket workdir in a local folder (see the test below)."""

  root = None

  def __init__(self, directory, **kw):
    fs.makedirs(directory)      # as orbax does (through epath) in the real bucket
    local = os.path.join(self.root, os.fspath(directory).replace("gs://", ""))
    super().__init__(local, **kw)


def test_bucket_workdir_goes_through_the_path_abstraction(tmp_path, ds, monkeypatch):
  """A gs:// workdir: config.json (and its history), metrics.jsonl and TensorBoard
  events go to the (in-memory) bucket, nothing to a local 'gs:' folder. Orbax writes
  array data through tensorstore's own gcs driver, which needs network: its
  checkpoints are redirected to a local folder here."""
  _LocalCheckpoints.root = str(tmp_path / "ck")
  monkeypatch.setattr(ckpt_lib, "Checkpointer", _LocalCheckpoints)
  monkeypatch.chdir(tmp_path)
  cfg = tiny_config(**{"train.num_steps": 2})
  with fake_gcs() as mem:
    _train(cfg, "gs://bucket/run", ds)
    assert fs.exists("gs://bucket/run/config.json")
    assert workdir_lib.config_history("gs://bucket/run") == [0]
    rows = metrics_lib.read_jsonl("gs://bucket/run/metrics.jsonl")
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert any(n.startswith("events.out.tfevents")
               for n in fs.listdir("gs://bucket/run/tensorboard"))
    run = restore.load_run("gs://bucket/run", dataset=ds)
    assert run.step == 2
    assert "/bucket/run/config.json" in mem.store
  assert not leaked_local_dirs(str(tmp_path))
  assert os.listdir(tmp_path / "ck" / "bucket" / "run" / "checkpoints")


def test_padded_prepared_data_trains_and_samples_without_the_shards(tmp_path):
  """data.layout=padded end to end: pad rows are out of the loss, the workdir keeps a
  tokenizer copy, and load_run samples on a machine without the data."""
  from tcsm_jax import sampling
  from tcsm_jax.data import prepared, sources, tokenizer
  docs = tmp_path / "docs.txt"
  docs.write_text("\n\n".join(f"and god said let there be light number {i}"
                              for i in range(700)))
  data = str(tmp_path / "prep")
  prepared.prepare(data, sources.documents_source(str(docs), "text"),
                   tokenizer.CharTokenizer(), layout="padded", seq_len=64,
                   progress=False)
  cfg = tiny_config(**{"data.name": "prepared", "data.path": data,
                       "data.layout": "padded", "data.seq_len": 64,
                       "train.num_steps": 2, "train.eval_every": 2})
  wd = str(tmp_path / "run")
  out = trainer.train_and_evaluate(cfg, wd)
  assert np.isfinite(out["loss"]) and np.isfinite(out["eval/nll_bound"])
  assert fs.exists(fs.join(wd, "tokenizer", "manifest.json"))
  os.rename(data, data + ".moved")            # another machine: no shards
  run = restore.load_run(wd)
  assert len(run.experiment.dataset.train) == 0 and run.experiment.dataset.pad_id
  exp = run.experiment
  x, _ = sampling.jit_sampler(exp.apply_fn, exp.process, exp.schedule, (2, 64),
                              steps=4)(run.params, jax.random.PRNGKey(0))
  assert all(isinstance(t, str) for t in exp.dataset.decode(np.asarray(x)))


def test_ctrl_c_checkpoints_and_exits_quietly(tmp_path):
  import signal
  import time
  wd = str(tmp_path / "run")
  proc = subprocess.Popen(
      [sys.executable, "-m", "experiments.train", f"--workdir={wd}"] + SMALL +
      ["--config.train.num_steps=100000"], cwd=REPO, env=_env(1),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 240
    while time.time() < deadline:
      p = os.path.join(wd, "metrics.jsonl")    # step lines (the first is compile_sec)
      if os.path.exists(p) and sum('"loss"' in l for l in open(p)) >= 3:
        break
      assert proc.poll() is None, proc.stderr.read()[-2000:]
      time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 130, err[-2000:]
  assert "Traceback" not in err and "interrupted" in err
  steps = ckpt_lib.Checkpointer(os.path.join(wd, "checkpoints")).all_steps()
  assert len(steps) == 1 and steps[0] >= 3


def test_profile_steps_write_a_trace_into_the_workdir(tmp_path, ds):
  cfg = tiny_config(**{"train.num_steps": 3, "train.profile_steps": "1,2"})
  _train(cfg, tmp_path, ds)
  traces = [os.path.join(r, f) for r, _, fs_ in os.walk(tmp_path / "profile") for f in fs_]
  assert any(t.endswith(".xplane.pb") for t in traces), traces


def test_one_heavy_tailed_step_does_not_mark_a_healthy_window_bad():
  """A converging run's window with one spike (a batch near t = 0) stays good; a window
  whose steps mostly blew up does not; a non-finite median does not."""
  h = trainer.Health(max_skipped=10, factor=1.5, max_bad_evals=3)
  for loss in (1.0, 0.9, 1.1, 0.95):
    h.step(loss, False)
  h.close_window()
  assert h.window_ok and h.best_loss == pytest.approx(0.975)
  for loss in (0.5, 0.45, 40.0, 0.48):           # mean 10.4, median 0.49
    h.step(loss, False)
  h.close_window()
  assert h.window_ok and h.good and h.best_loss == pytest.approx(0.49)
  for loss in (0.5, 3.0, 5.0, 9.0):              # most steps bad: median 4.0 > 0.735
    h.step(loss, False)
  h.close_window()
  assert not h.window_ok and not h.good
  for loss in (float("nan"), float("inf"), 0.4):
    h.step(loss, False)
  h.close_window()
  assert not h.window_ok
