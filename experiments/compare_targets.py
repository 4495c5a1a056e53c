r"""Trains several variants of a config and compares their NLL-bound curves.

  python -m experiments.compare_targets --config=experiments/configs/kjv_tiny.py \
      --outdir=DIR --variants="data:loss.teacher_weight=0" \
      --variants="teacher:teacher.kind=ar,teacher.workdir=JDIR,loss.teacher_weight=0.5" \
      [--judge_workdir=JDIR] [--config.train.num_steps=300 ...]

Each variant trains in ``DIR/<name>`` (re-running resumes) with the base config plus
its overrides. Writes ``DIR/curves.csv`` (variant, step, train seconds, NLL bound) and
``DIR/curves.png`` (NLL bound against steps and against training time: equal steps
and equal compute), and, with a judge, ``DIR/summary.json`` with the final NLL bound,
generative perplexity and entropy of samples for each variant.
"""

import csv
import json
import os

import jax
import matplotlib
import numpy as np
from absl import flags
from ml_collections import config_flags

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments import cli, common  # noqa: E402
from tcsm_jax import quality, sampling  # noqa: E402
from tcsm_jax.training import log_setup, metrics as metrics_lib, trainer  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Base config.")
_OUT = flags.DEFINE_string("outdir", None, "Output directory.")
_VARIANTS = flags.DEFINE_multi_string("variants", [], "name:key=value,key=value")
_JUDGE = flags.DEFINE_string("judge_workdir", "", "Causal judge for sample quality.")
_SAMPLES = flags.DEFINE_integer("num_samples", 32, "Samples per variant for quality.")
_STEPS = flags.DEFINE_integer("sample_steps", 128, "Sampling steps.")
flags.mark_flags_as_required(["config", "outdir"])


def _parse(spec):
  name, _, rest = spec.partition(":")
  overrides = {}
  for item in filter(None, rest.split(",")):
    key, _, val = item.partition("=")
    overrides[key.strip()] = val.strip()
  return name, overrides


def _apply(cfg, overrides):
  cfg = cfg.copy_and_resolve_references()
  for key, val in overrides.items():
    node = cfg
    parts = key.split(".")
    for p in parts[:-1]:
      node = node[p]
    old = node[parts[-1]]
    node[parts[-1]] = (val.lower() == "true") if isinstance(old, bool) else type(old)(val)
  return cfg


def main(_):
  log_setup.quiet_libraries()
  os.makedirs(_OUT.value, exist_ok=True)
  rows, summary = [], {}
  judge = None
  if _JUDGE.value:
    jr = common.load_or_exit(_JUDGE.value)
    judge = (jr.experiment.model, jr.params)
  for spec in _VARIANTS.value:
    name, overrides = _parse(spec)
    cfg = _apply(_CONFIG.value, overrides)
    wd = os.path.join(_OUT.value, name)
    last = trainer.train_and_evaluate(cfg, wd)
    times = {}
    for r in metrics_lib.read_jsonl(os.path.join(wd, "metrics.jsonl")):
      if "train_time_sec" in r:
        times[r["step"]] = r["train_time_sec"]
      if "eval/nll_bound" in r:
        t = times.get(r["step"], float("nan"))
        rows.append(dict(variant=name, step=r["step"], train_time_sec=t,
                         nll_bound=r["eval/nll_bound"]))
    info = {"overrides": overrides, "final_nll_bound": last.get("eval/nll_bound")}
    if judge is not None:
      run = common.load_or_exit(wd)
      exp = run.experiment
      x, _ = sampling.jit_sampler(exp.apply_fn, exp.process, exp.schedule,
                                  (_SAMPLES.value, cfg.data.seq_len),
                                  steps=_STEPS.value)(run.params, jax.random.PRNGKey(0))
      info.update(quality.report(np.asarray(x), judge))
      info["example"] = exp.dataset.decode(np.asarray(x)[0])
    summary[name] = info
  with open(os.path.join(_OUT.value, "curves.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=["variant", "step", "train_time_sec", "nll_bound"])
    w.writeheader()
    w.writerows(rows)
  base = _CONFIG.value
  floor = None
  if base.data.name == "markov":      # known answer: the exact entropy per token
    from tcsm_jax.data import synthetic
    chain = synthetic.chain_from_config(base.data)
    floor = chain.chunk_entropy(base.data.seq_len) / base.data.seq_len
    summary["exact_entropy_per_token"] = floor
  with open(os.path.join(_OUT.value, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for name in [n for n in summary if n != "exact_entropy_per_token"]:
    pts = [r for r in rows if r["variant"] == name]
    axes[0].plot([r["step"] for r in pts], [r["nll_bound"] for r in pts], "o-", label=name)
    axes[1].plot([r["train_time_sec"] for r in pts], [r["nll_bound"] for r in pts], "o-",
                 label=name)
  axes[0].set_xlabel("training steps (equal steps)")
  axes[1].set_xlabel("training time, s (equal compute)")
  for ax in axes:
    if floor is not None:
      ax.axhline(floor, color="k", ls="--", lw=1, label="exact entropy")
    ax.set_ylabel("validation NLL bound (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle("TCSM: data target vs parametric targets")
  fig.tight_layout()
  fig.savefig(os.path.join(_OUT.value, "curves.png"), dpi=120)
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  cli.run(main)
