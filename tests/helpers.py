"""Small configs and datasets shared by the training tests."""

import numpy as np

from experiments.configs import kjv_tiny
from tcsm_jax.data import pipeline


def tiny_config(**overrides):
  c = kjv_tiny.get_config()
  c.data.seq_len = 32
  c.model.num_layers = 1
  c.model.width = 32
  c.model.num_heads = 2
  c.model.cond_width = 32
  c.train.batch_size = 16
  c.train.num_steps = 10
  c.train.log_every = 1
  c.train.eval_every = 1000
  c.train.eval_batches = 1
  c.train.checkpoint_every = 1000
  c.train.async_checkpoint = False
  c.optim.warmup_steps = 2
  for k, v in overrides.items():
    node = c
    parts = k.split(".")
    for p in parts[:-1]:
      node = node[p]
    node[parts[-1]] = v
  return c


def small_dataset(n_train=20000, n_val=4000, seed=0):
  """A slice of the bundled corpus (fast to load repeatedly)."""
  ds = pipeline.load_bundled()
  return pipeline.TokenDataset(ds.train[:n_train], ds.validation[:n_val], ds.vocab_size,
                               ds.decode, "kjv-slice", pipeline.encode_text)


def newest_report(samples_dir, prefix: str) -> dict:
  """The JSON report ``experiments.sample`` wrote last under ``samples_dir`` whose name
  starts with ``prefix`` (reports are named ``<sampler>_<steps>steps_<hash>.json``, the
  hash of every setting that changes the samples)."""
  import json as json_lib
  import os as os_lib
  names = [n for n in os_lib.listdir(samples_dir)
           if n.startswith(prefix) and n.endswith(".json")]
  assert names, f"no {prefix}*.json report in {samples_dir}"
  path = max((os_lib.path.join(samples_dir, n) for n in names), key=os_lib.path.getmtime)
  with open(path) as f:
    return json_lib.load(f)


def tiny_train_cmd(workdir, data, steps: int, *extra: str):
  """``python -m experiments.train`` on the prepared set ``data``: a 1-layer, width-32
  kjv_tiny model, ``steps`` steps of batch 8, no summary samples; ``extra`` flags last."""
  import sys as sys_lib
  return [sys_lib.executable, "-m", "experiments.train",
          "--config=experiments/configs/kjv_tiny.py", f"--workdir={workdir}",
          "--summary_samples=0", "--config.data.name=prepared",
          f"--config.data.path={data}", "--config.data.seq_len=32",
          "--config.model.num_layers=1", "--config.model.width=32",
          "--config.model.num_heads=2", "--config.model.cond_width=32",
          "--config.train.batch_size=8", f"--config.train.num_steps={steps}", *extra]
