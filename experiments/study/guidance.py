"""Study ``guidance`` (issue 20, part 5): reward guidance at sampling time against reward
fine-tuning, both aiming at ``p_ref exp(r / beta)``: the fine-tuned model at ``beta``
and the frozen reference sampled with every step tilted by ``gamma = 1 / beta`` times
the classifier reward's first-order neighbour differences (``posttrain/guidance.py``),
same seeds, same reference, judge and classifier as the reward study."""

from __future__ import annotations

import numpy as np

from experiments.study import report, reward, stats
from experiments.study.context import Context
from tcsm_jax import fs
from tcsm_jax.posttrain import finetune as finetune_lib
from tcsm_jax.posttrain import guidance

NAME = "guidance"
TITLE = "Study: reward guidance at sampling time vs reward fine-tuning"
CLAIM = ("(issue 20, part 5) Tilting each sampling step of the frozen reference by "
         "gamma = 1 / beta times the reward's neighbour differences steers samples "
         "toward the reward without fine-tuning; how does it compare with TCSM reward "
         "fine-tuning at beta on the reward-vs-fidelity plane?")

BETAS = reward.BETAS
KEYS = ["reward", "ref_nll", "gen_ppl", "entropy", "win_rate"]


def variants(ctx: Context, ref_dir: str):
  v = reward.variants(ctx, ref_dir)
  return {k: v[k] for k in v if k.startswith("reward_")}


def _beta(variant: str) -> float:
  return float(variant.split("beta")[1])


def guided_metrics(num: int):
  """``extra_fn`` of ``reward.plan``: the reference guided at ``gamma = 1 / beta`` of
  the fine-tuned run, ``num`` samples, the run's seed."""
  def fn(ft, judge, ref_x, seed):
    exp, cfg = ft.experiment, ft.config
    _, deltas_fn = finetune_lib.make_reward(cfg, exp.dataset, "")
    tilt = guidance.reward_tilt(deltas_fn, 1.0 / cfg.finetune.beta, exp.process.mask_id)
    m, _ = reward.sample_metrics(exp.ref.apply_fn, exp.ref_params, exp.ref,
                                 exp.ref_params, exp.reward_fn, judge, cfg.data.seq_len,
                                 num, seed, ref_x, log_tilt_fn=tilt)
    return {f"guided_{k}": m[k] for k in KEYS if k in m}
  return fn


def plan(ctx: Context):
  return reward.plan(ctx, variants, guided_metrics(reward.num_samples(ctx)))


def plot(ctx, rows, names, ref):
  import matplotlib.pyplot as plt
  from experiments import common
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
  for ax, xkey, label in ((axes[0], "gen_ppl", "generative perplexity (judge)"),
                          (axes[1], "ref_nll", "NLL bound under the reference, "
                           "nats/token")):
    for v in names:
      for prefix, marker in (("", "o"), ("guided_", "^")):
        xs = stats.per_seed(rows, v, prefix + xkey)
        ys = stats.per_seed(rows, v, prefix + "reward")
        seeds = sorted(set(xs) & set(ys))
        if not seeds:
          continue
        tag = (f"guided gamma={1 / _beta(v):g}" if prefix else f"fine-tuned beta={_beta(v):g}")
        ax.errorbar([np.mean([xs[s] for s in seeds])], [np.mean([ys[s] for s in seeds])],
                    xerr=[np.std([xs[s] for s in seeds])],
                    yerr=[np.std([ys[s] for s in seeds])], fmt=marker, capsize=3,
                    label=tag)
    if ref:
      ax.plot([ref.get(xkey, 0.0)], [ref["reward"]], "k*", ms=12, label="reference")
    ax.set_xlabel(label)
    ax.set_ylabel("mean reward of samples")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  fig.suptitle("guidance (triangles) vs fine-tuning (circles): mean +- 1 std over seeds")
  fig.tight_layout()
  common.save_figure(fig, fs.join(ctx.outdir, "guidance_vs_finetuning.png"))
  plt.close(fig)


def report_(ctx: Context, rows, summary):
  names = list(variants(ctx, ""))
  ref = ctx.notes.get("prereq", {}).get("reference_samples", {})
  keys = KEYS + [f"guided_{k}" for k in KEYS]
  sections = [
      "Reference samples: " + ", ".join(f"{k} {ref[k]:.4f}" for k in KEYS if k in ref),
      f"### Fine-tuned at beta vs guided at gamma = 1 / beta ({reward.num_samples(ctx)} "
      "samples each, 64 steps, same seeds)\n\n" + report.final_table(rows, names, keys),
      "![guidance vs fine-tuning](guidance_vs_finetuning.png)"]
  plot(ctx, rows, names, ref)
  verdicts = []
  for v in names:
    b = _beta(v)
    er = stats.effect(stats.per_seed(rows, v, "reward"),
                      stats.per_seed(rows, v, "guided_reward"))
    ep = stats.effect(stats.per_seed(rows, v, "gen_ppl"),
                      stats.per_seed(rows, v, "guided_gen_ppl"))
    verdicts.append(
        f"**beta {b:g}: guidance at gamma {1 / b:g} reaches a higher reward than "
        f"fine-tuning: {stats.verdict(er, 'higher')}** (guided - fine-tuned reward "
        f"{er.as_text()}); **at a lower generative perplexity: "
        f"{stats.verdict(ep, 'lower')}** (guided - fine-tuned {ep.as_text()}).")
  setup = (f"Seeds {ctx.seeds}; budget x{ctx.budget}{' (quick)' if ctx.quick else ''}. "
           "The reward study's reference (kjv_tiny), judge, classifier reward and "
           "fine-tuning config (kjv_reward: score form, gKL, Taylor reward differences) "
           f"at beta in {list(BETAS)}; guided sampling: the frozen reference with each "
           "step's clean-token law tilted by gamma = 1 / beta times the classifier's "
           "first-order (Taylor) neighbour differences at the denoiser's point estimate "
           "(`tcsm_jax/posttrain/guidance.py`), analytic sampler, exact draws.")
  return setup, sections, verdicts
