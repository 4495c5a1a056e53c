r"""Evaluates the NLL bound of a trained diffusion model (or the NLL of a causal one).

  python -m experiments.evaluate --workdir=DIR [--config=...] [--num_t=8]
      [--num_batches=0] [--split=validation]

Prints a table and writes ``DIR/eval_report.json``: nats and bits per token with the
standard error, perplexity, the prior term, step and data.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from experiments import cli, common
from tcsm_jax import likelihood
from tcsm_jax.data import pipeline
from tcsm_jax.training import log_setup, partition

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config (default: the "
                                          "workdir's config.json).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir.")
_NUM_T = flags.DEFINE_integer("num_t", None, "Time samples per sequence.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", None, "Batches (0 = whole split).")
_SPLIT = flags.DEFINE_enum("split", "validation", ["validation", "train"], "Split.")
_RAW = flags.DEFINE_bool("raw_params", False, "Use raw params instead of EMA.")
flags.mark_flag_as_required("workdir")


def main(_):
  log_setup.quiet_libraries()
  run = common.load_or_exit(_WORKDIR.value, _CONFIG.value, use_ema=not _RAW.value)
  cfg, exp = run.config, run.experiment
  num_t = _NUM_T.value or cfg.eval.num_t
  num_batches = cfg.eval.num_batches if _NUM_BATCHES.value is None else _NUM_BATCHES.value
  tokens = exp.dataset.validation if _SPLIT.value == "validation" else exp.dataset.train
  batches = pipeline.eval_batches(tokens, cfg.data.seq_len, cfg.eval.batch_size,
                                  num_batches or None)
  key = jax.random.PRNGKey(cfg.seed + 2)
  if exp.causal:
    from tcsm_jax.models.transformer import ar_log_likelihood
    fn = jax.jit(lambda p, x: ar_log_likelihood(exp.model, p, x))
    ll = np.concatenate([np.asarray(fn(run.params, jnp.asarray(b))) for b in batches])
    rep = likelihood.summarize(-ll, np.zeros_like(ll), cfg.data.seq_len)
    kind = "exact NLL (causal model)"
  else:
    # Data parallel over every local device: params replicated, batches split.
    mesh = partition.make_mesh(1, jax.local_devices())
    partition.check_batch_size(cfg.eval.batch_size, mesh, "eval.batch_size")
    params = jax.device_put(run.params, partition.replicated(mesh))
    rep = likelihood.evaluate(key, exp.apply_fn, batches, exp.process, exp.schedule, num_t,
                              batch_sharding=partition.batch_sharding(mesh), params=params)
    kind = f"NLL upper bound (ELBO, {num_t} time samples/sequence)"
  out = dict(rep.as_dict(), step=run.step, split=_SPLIT.value, dataset=exp.dataset.name,
             kind=kind, process=cfg.process, loss=dict(cfg.loss))
  path = os.path.join(_WORKDIR.value, "eval_report.json")
  with open(path, "w") as f:
    json.dump(out, f, indent=2)
  rows = [("workdir", _WORKDIR.value), ("step", run.step), ("data", exp.dataset.name),
          ("metric", kind), ("sequences", rep.num_sequences),
          ("nats/token", f"{rep.nats_per_token:.4f} +- {rep.stderr:.4f}"),
          ("bits/token", f"{rep.bits_per_token:.4f}"),
          ("perplexity", f"{rep.perplexity:.3f}"),
          ("prior nats/token", f"{rep.prior_per_token:.5f}"), ("report", path)]
  width = max(len(k) for k, _ in rows)
  print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
  logging.info("wrote %s", path)


if __name__ == "__main__":
  cli.run(main)
