r"""Reward fine-tuning for several beta: reward up, fidelity down (table, CSV, PNG).

  python -m experiments.reward_sweep --config=experiments/configs/kjv_reward.py \
      --outdir=DIR --config.finetune.ref_workdir=REF --judge=JDIR|hf:DIR \
      [--gen_ppl_convention=auto|project|mdlm|duo|remdm|sedd] \
      [--betas=1.0,0.3,0.1] [--num_samples=64]

For the reference and each beta: mean reward of samples, their NLL bound under the
*reference* model (nats/token), generative perplexity under the judge and unigram
entropy. The reward rises as beta falls while fidelity degrades.
"""

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from absl import flags
from ml_collections import config_flags

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments import cli, common  # noqa: E402
from tcsm_jax import errors, fs, likelihood, quality, sampling  # noqa: E402
from tcsm_jax.training import log_setup, trainer  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Fine-tuning config.")
_OUT = flags.DEFINE_string("outdir", None, "Output directory.")
_BETAS = flags.DEFINE_list("betas", ["1.0", "0.3", "0.1"], "Betas (> 0).")
_JUDGE, _CONV = common.define_judge_flags(" (--judge_workdir: alias).")
_NUM = flags.DEFINE_integer("num_samples", 64, "Samples per model (>= 1).")
_STEPS = flags.DEFINE_integer("sample_steps", 64, "Sampling steps (>= 1).")
flags.mark_flags_as_required(["config", "outdir"])


def evaluate(exp, params, ref, ref_params, reward_fn, judge, length):
  x, _ = sampling.jit_sampler(exp.apply_fn, exp.process, exp.schedule,
                              (_NUM.value, length), steps=_STEPS.value)(
                                  params, jax.random.PRNGKey(0))
  x = np.asarray(x)
  rew = float(np.mean(np.asarray(jax.jit(reward_fn)(jnp.asarray(x)))))
  nll = jax.jit(lambda p, k, xx: likelihood.nll_bound(
      k, lambda xt, s: ref.apply_fn(p, xt, s), xx, ref.process, ref.schedule,
      num_t=16)["bound"])(ref_params, jax.random.PRNGKey(1), jnp.asarray(x))
  if judge is not None:
    judge = judge.bind(decode=exp.dataset.decode,
                       model_tokenizer_sha=common.model_tokenizer_sha(exp.dataset))
  q = quality.report(x, judge)
  return dict(reward=rew, ref_nll_per_token=float(np.mean(nll)) / length,
              gen_perplexity=q.get("gen_perplexity", float("nan")),
              unigram_entropy=q["unigram_entropy"],
              example=exp.dataset.decode(x[0]))


def parse_betas(values):
  """``--betas`` as positive floats (``FlagError`` naming a bad one)."""
  out = []
  for v in values:
    try:
      b = float(v)
    except ValueError:
      raise errors.FlagError(f"--betas: {v!r} is not a number") from None
    common.check_flag(b > 0, f"--betas must all be > 0, got {v}")
    out.append(b)
  common.check_flag(bool(out), "--betas is empty")
  return out


def main(_):
  common.at_least("num_samples", _NUM.value, 1)
  common.at_least("sample_steps", _STEPS.value, 1)
  betas = parse_betas(_BETAS.value)
  outdir = _OUT.value
  shared = str(fs.join(outdir, "classifier"))
  configs = []
  for beta in betas:
    cfg = _CONFIG.value.copy_and_resolve_references()
    cfg.finetune.beta = beta
    cfg.finetune.classifier_dir = shared
    common.validate_config(cfg)
    configs.append((beta, cfg))
  common.require_output_dir(outdir, "outdir")
  common.require_run_dir(_CONFIG.value.finetune.ref_workdir,
                         "config.finetune.ref_workdir")
  common.check_judge_spec(_JUDGE.value)
  log_setup.quiet_libraries()
  fs.makedirs(outdir)
  judge = common.load_judge(_JUDGE.value, None, _CONV.value)
  rows = []
  ref_row = None
  for beta, cfg in configs:
    wd = str(fs.makedirs(fs.join(outdir, f"beta_{beta:g}")))
    trainer.train_and_evaluate(cfg, wd)
    run = common.load_run(wd)
    exp = run.experiment
    length = cfg.data.seq_len
    if ref_row is None:
      ref_row = dict(model="reference", beta=float("inf"),
                     **evaluate(exp.ref, exp.ref_params, exp.ref, exp.ref_params,
                                exp.reward_fn, judge, length))
      rows.append(ref_row)
    rows.append(dict(model=f"beta={beta:g}", beta=beta,
                     **evaluate(exp, run.params, exp.ref, exp.ref_params, exp.reward_fn,
                                judge, length)))
  keys = ["model", "beta", "reward", "ref_nll_per_token", "gen_perplexity",
          "unigram_entropy"]
  common.write_csv(fs.join(outdir, "reward_sweep.csv"), rows, keys + ["example"])
  common.write_json(fs.join(outdir, "reward_sweep.json"), rows)
  head = (f"{'model':<12}{'reward':>9}{'ref NLL/tok':>13}{'gen PPL':>10}{'entropy':>9}")
  print(head)
  print("-" * len(head))
  for r in rows:
    print(f"{r['model']:<12}{r['reward']:>9.3f}{r['ref_nll_per_token']:>13.4f}"
          f"{r['gen_perplexity']:>10.3f}{r['unigram_entropy']:>9.3f}")
  fig, ax = plt.subplots(1, 2, figsize=(10, 4))
  ax[0].plot([r["ref_nll_per_token"] for r in rows], [r["reward"] for r in rows], "o-")
  for r in rows:
    ax[0].annotate(r["model"], (r["ref_nll_per_token"], r["reward"]))
  ax[0].set_xlabel("NLL under the reference (nats/token)")
  ax[0].set_ylabel("mean reward of samples")
  ax[1].plot([r["gen_perplexity"] for r in rows], [r["reward"] for r in rows], "o-")
  for r in rows:
    ax[1].annotate(r["model"], (r["gen_perplexity"], r["reward"]))
  ax[1].set_xlabel("generative perplexity (judge)")
  for a in ax:
    a.grid(alpha=0.3)
  fig.suptitle("Reward fine-tuning with TCSM: reward vs fidelity across beta")
  fig.tight_layout()
  common.save_figure(fig, fs.join(outdir, "reward_sweep.png"))
  plt.close(fig)


if __name__ == "__main__":
  cli.run(main)
