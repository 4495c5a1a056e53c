"""Study ``reward_bias`` (issue 15, part 1, on the corpus): the default reward
fine-tuning recipe against the exact-case fix (clean-space conditionals of the reference
tilted by the reward, plus self-normalized importance weights), over seeds."""

from __future__ import annotations

import numpy as np

from experiments.study import report, reward, stats
from experiments.study.context import Context, with_overrides

NAME = "reward_bias"
TITLE = "Study: reward fine-tuning, default recipe vs the exact-case fix"
CLAIM = ("(issue 15) On enumerable cases the default recipe (tilted reference denoiser, "
         "training sequences from the reference) misses the tilted target "
         "p_ref exp(r/beta)/Z of a factorized model, and clean-space conditionals with "
         "self-normalized importance weights reach it. Does the fix move fine-tuning "
         "on the corpus closer to the tilted target?")

BETAS = (0.3, 0.1)
FIX = {"finetune.reward_target": "clean_conditionals",
       "finetune.importance_weights": "self_normalized"}


def variants(ctx: Context, ref_dir: str):
  base = reward.variants(ctx, ref_dir)
  common = {k: v for k, v in next(iter(base.values())).items() if k != "finetune.beta"}
  out = {}
  for b in ((0.3,) if ctx.quick else BETAS):
    out[f"default_beta{b:g}"] = dict(common, **{"finetune.beta": b})
    out[f"fixed_beta{b:g}"] = dict(common, **FIX, **{"finetune.beta": b})
  return out


def plan(ctx: Context):
  return reward.plan(ctx, variants)     # the reward study's shared runs, own variants


def _beta(v: str) -> float:
  return float(v.split("beta")[1])


def report_(ctx: Context, rows, summary):
  names = list(variants(ctx, ""))
  reward.add_objective(rows, _beta)
  info = ctx.notes.get("prereq", {})
  ess = {v: ctx.logged(v, "snis_ess") for v in names}
  keys = ["reward", "kl_est", "objective", "gen_ppl", "entropy", "train_time_sec"]
  ref = info.get("reference_samples", {})
  sections = [
      "Reference samples: " + ", ".join(f"{k} {ref[k]:.4f}" for k in keys if k in ref),
      f"### Fine-tuned models ({reward.num_samples(ctx)} samples each)\n\n"
      "objective = reward / beta - kl_est = log Z - KL(model || tilted target): at one "
      "beta, higher is closer to the target (kl_est is a difference of two NLL bounds, "
      "so this carries its error).\n\n" + report.final_table(rows, names, keys),
      "Effective sample size of the self-normalized weights (batch of "
      f"{reward.finetune_config(ctx).train.batch_size}; logged steps, all seeds): " +
      "; ".join(f"{v}: median {np.median(e):.2f}, min {np.min(e):.2f}"
                for v, e in ess.items() if e.size),
      "![reward vs fidelity](reward_vs_fidelity.png)"]
  reward.plot_reward_vs_fidelity(ctx, rows, names, ref)
  verdicts = []
  for b in sorted({_beta(v) for v in names}, reverse=True):
    d, f = f"default_beta{b:g}", f"fixed_beta{b:g}"
    e = stats.effect(stats.per_seed(rows, d, "objective"),
                     stats.per_seed(rows, f, "objective"))
    er = stats.effect(stats.per_seed(rows, d, "reward"), stats.per_seed(rows, f, "reward"))
    ek = stats.effect(stats.per_seed(rows, d, "kl_est"), stats.per_seed(rows, f, "kl_est"))
    verdicts.append(
        f"**beta {b:g}: the fix is closer to the tilted target (higher reward/beta - "
        f"KL): {stats.verdict(e, 'higher')}.** objective difference fixed - default "
        f"{e.as_text()}; reward {er.as_text()}; KL estimate {ek.as_text('nats/token')}.")
  setup = (f"Seeds {ctx.seeds}; budget x{ctx.budget}{' (quick)' if ctx.quick else ''}. "
           "The reward study's reference, judge, classifier reward and fine-tuning config "
           "(kjv_reward: score form, gKL, Taylor reward differences) with, for 'fixed', "
           "`finetune.reward_target=clean_conditionals` (the reference read as a masked "
           "LM: L extra passes per batch) and `finetune.importance_weights="
           "self_normalized`.")
  return setup, sections, verdicts
