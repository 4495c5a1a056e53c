r"""Trains several variants of a config and compares their NLL-bound curves.

  python -m experiments.compare_targets --config=experiments/configs/kjv_tiny.py \
      --outdir=DIR --variants="data:loss.teacher_weight=0" \
      --variants="teacher:teacher.kind=ar,teacher.workdir=JDIR,loss.teacher_weight=0.5" \
      [--judge=JDIR|hf:DIR] [--gen_ppl_convention=auto] [--config.train.num_steps=300 ...]

Each variant trains in ``DIR/<name>`` (re-running resumes) with the base config plus
its overrides. Writes ``DIR/curves.csv`` (variant, step, train seconds, NLL bound) and
``DIR/curves.png`` (NLL bound against steps and against training time: equal steps
and equal compute), and, with a judge, ``DIR/summary.json`` with the final NLL bound,
generative perplexity and entropy of samples for each variant.
"""

import json
import re

import jax
import matplotlib
import numpy as np
from absl import flags
from ml_collections import config_flags

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments import cli, common  # noqa: E402
from tcsm_jax import errors, fs, quality, sampling  # noqa: E402
from tcsm_jax.training import log_setup, trainer  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Base config.")
_OUT = flags.DEFINE_string("outdir", None, "Output directory.")
_VARIANTS = flags.DEFINE_multi_string("variants", [], "name:key=value,key=value")
_JUDGE, _CONV = common.define_judge_flags(" (--judge_workdir: alias).")
_SAMPLES = flags.DEFINE_integer("num_samples", 32, "Samples per variant for quality "
                                "(>= 1).")
_STEPS = flags.DEFINE_integer("sample_steps", 128, "Sampling steps (>= 1).")
flags.mark_flags_as_required(["config", "outdir"])


def parse_variant(spec: str):
  """``'name:key=value,key=value'`` -> ``(name, {key: value})`` (``FlagError``)."""
  name, sep, rest = spec.partition(":")
  name = name.strip()
  if not sep or not re.fullmatch(r"[A-Za-z0-9._-]+", name) or name in (".", ".."):
    raise errors.FlagError(f"--variants {spec!r}: write name:key=value,key=value with a "
                           "name of letters, digits, '.', '_', '-'")
  overrides = {}
  for item in filter(None, (i.strip() for i in rest.split(","))):
    key, eq, val = item.partition("=")
    if not eq or not key.strip():
      raise errors.FlagError(f"--variants {spec!r}: {item!r} is not key=value")
    overrides[key.strip()] = val.strip()
  return name, overrides


def apply_overrides(cfg, overrides, variant: str = ""):
  """A copy of ``cfg`` with string ``overrides`` converted to each key's type
  (``ConfigError`` naming the variant and key)."""
  cfg = cfg.copy_and_resolve_references()
  where = f"--variants {variant!r}: " if variant else ""
  for key, val in overrides.items():
    node = cfg
    parts = key.split(".")
    try:
      for p in parts[:-1]:
        node = node[p]
      old = node[parts[-1]]
    except (KeyError, AttributeError, TypeError):
      raise errors.ConfigError(f"{where}unknown config key {key!r}; "
                               "tcsm_jax/training/config.py lists every key") from None
    try:
      if isinstance(old, bool):
        if val.lower() not in ("true", "false", "1", "0"):
          raise ValueError(val)
        new = val.lower() in ("true", "1")
      elif old is None:
        new = val
      else:
        new = type(old)(val)
    except (TypeError, ValueError):
      raise errors.ConfigError(f"{where}config key {key!r} must be of type "
                               f"{type(old).__name__}, got {val!r}") from None
    node[parts[-1]] = new
  return cfg


def main(_):
  common.at_least("num_samples", _SAMPLES.value, 1)
  common.at_least("sample_steps", _STEPS.value, 1)
  common.check_flag(bool(_VARIANTS.value), "--variants: give at least one "
                    "name:key=value,... (e.g. --variants=data:)")
  variants = [parse_variant(v) for v in _VARIANTS.value]
  names = [n for n, _ in variants]
  dup = sorted({n for n in names if names.count(n) > 1})
  common.check_flag(not dup, f"--variants: names used twice: {dup}")
  # Every variant's config is validated before the first one trains.
  configs = {name: apply_overrides(_CONFIG.value, ov, name) for name, ov in variants}
  for cfg in configs.values():
    common.validate_config(cfg)
  outdir = _OUT.value
  common.require_output_dir(outdir, "outdir")
  common.check_judge_spec(_JUDGE.value)
  log_setup.quiet_libraries()
  fs.makedirs(outdir)
  rows, summary = [], {}
  judge = common.load_judge(_JUDGE.value, None, _CONV.value)
  for name, overrides in variants:
    cfg = configs[name]
    wd = str(fs.join(outdir, name))
    last = trainer.train_and_evaluate(cfg, wd)
    times = {}
    for r in common.read_jsonl(fs.join(wd, "metrics.jsonl")):
      if "train_time_sec" in r:
        times[r["step"]] = r["train_time_sec"]
      if "eval/nll_bound" in r:
        t = times.get(r["step"], float("nan"))
        rows.append(dict(variant=name, step=r["step"], train_time_sec=t,
                         nll_bound=r["eval/nll_bound"]))
    info = {"overrides": overrides, "final_nll_bound": last.get("eval/nll_bound")}
    if judge is not None:
      run = common.load_run(wd)
      exp = run.experiment
      x, _ = sampling.jit_sampler(exp.apply_fn, exp.process, exp.schedule,
                                  (_SAMPLES.value, cfg.data.seq_len),
                                  steps=_STEPS.value)(run.params, jax.random.PRNGKey(0))
      info.update(quality.report(np.asarray(x), judge.bind(
          decode=exp.dataset.decode,
          model_tokenizer_sha=common.model_tokenizer_sha(exp.dataset))))
      info["example"] = exp.dataset.decode(np.asarray(x)[0])
    summary[name] = info
  common.write_csv(fs.join(outdir, "curves.csv"), rows,
                   ["variant", "step", "train_time_sec", "nll_bound"])
  base = _CONFIG.value
  floor = None
  if base.data.name == "markov":      # known answer: the exact entropy per token
    from tcsm_jax.data import synthetic
    chain = synthetic.chain_from_config(base.data)
    floor = chain.chunk_entropy(base.data.seq_len) / base.data.seq_len
    summary["exact_entropy_per_token"] = floor
  common.write_json(fs.join(outdir, "summary.json"), summary)
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
  common.save_figure(fig, fs.join(outdir, "curves.png"))
  plt.close(fig)
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  cli.run(main)
