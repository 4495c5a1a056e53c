"""Study ``hamming`` (issue 15, part 4): the score form on the 1-Hamming against the
2-Hamming (pair-block) neighbourhood, on Markov data whose exact NLL is known."""

from __future__ import annotations

import numpy as np

from experiments import common
from experiments.study import evals, objectives, report, stats
from experiments.study.context import Context, with_overrides
from experiments.study.runner import Run

NAME = "hamming"
TITLE = "Study: TCSM score form, 1-Hamming vs 2-Hamming neighbourhoods"
CLAIM = ("(issue 15, the paper's open question 3) Matching concrete scores on a larger "
         "neighbourhood (pairs of positions, k = 2) instead of single positions (k = 1) "
         "changes how fast a factorized denoiser converges, and what it costs per step.")

# (name, overrides): the same objective at k = 1 and k = 2.
_ORACLE = {"teacher.kind": "markov", "loss.teacher_weight": 1.0}
_OBJECTIVES = {
    "score_gkl_oracle": dict(_ORACLE, **{"loss.divergence": "gkl"}),
    "score_lsif_oracle": dict(_ORACLE, **{"loss.divergence": "lsif"}),
    "score_kl_data": {"loss.divergence": "kl"},
}


def variants(quick: bool):
  objs = ("score_gkl_oracle",) if quick else tuple(_OBJECTIVES)
  out = {}
  for o in objs:
    for k in (1, 2):
      out[f"{o}_k{k}"] = dict(_OBJECTIVES[o], **{"loss.kind": "tcsm", "loss.form": "score",
                                                 "loss.hamming": k})
  if not quick:   # 2-Hamming with 16 of the 120 pairs drawn per step: the cost lever
    out["score_gkl_oracle_k2_p16"] = dict(out["score_gkl_oracle_k2"],
                                          **{"loss.hamming_pairs": 16})
  return out


def plan(ctx: Context):
  base = objectives.markov_config(ctx)
  chain = objectives.synthetic.chain_from_config(base.data)
  nb = 2 if ctx.quick else objectives.FINAL_BATCHES["markov"]

  def fin(run, wd):
    return evals.final_nll(common.load_run(wd), nb, num_t=2 if ctx.quick else 8,
                           markov_chain=chain)

  return [Run(name, seed, with_overrides(base, dict(ov, seed=seed)), fin)
          for name, ov in variants(ctx.quick).items() for seed in ctx.seeds]


def _objective(variant: str) -> str:
  """``score_kl_data_k2_p16`` -> ``score_kl_data``."""
  return variant.rsplit("_k", 1)[0]


def _early(rows, a, b):
  """The paired NLL-bound difference b - a at the first evaluation after step 0."""
  steps = sorted({r["step"] for r in rows if r["variant"] == a and r["step"] > 0})
  if not steps:
    return None, None
  return steps[0], stats.effect(stats.per_seed(rows, a, "nll_bound", step=steps[0]),
                                stats.per_seed(rows, b, "nll_bound", step=steps[0]))


def _step_cost(rows, v):
  """Mean training seconds per step over seeds (from each run's last evaluation)."""
  last = {}
  for r in rows:
    if r["variant"] == v and r["step"] > 0:
      if r["seed"] not in last or r["step"] > last[r["seed"]]["step"]:
        last[r["seed"]] = r
  per = [r["train_time_sec"] / r["step"] for r in last.values()]
  return float(np.mean(per)) if per else float("nan")


def report_(ctx: Context, rows, summary):
  names = list(variants(ctx.quick))
  chain = objectives.synthetic.chain_from_config(objectives.markov_config(ctx).data)
  ex = [r["exact_nll"] for r in rows if "exact_nll" in r]
  exact = float(np.mean(ex)) if ex else None
  report.plot_curves(ctx.outdir, "curves", summary, names, "score form, k = 1 vs k = 2",
                     hline=exact, hline_label="chain's exact NLL of the evaluated tokens")
  cost = ["| variant | training seconds per step | relative to k = 1 |", "|---|---|---|"]
  for v in names:
    base = _objective(v) + "_k1"
    rel = _step_cost(rows, v) / _step_cost(rows, base)
    cost.append(f"| {v} | {_step_cost(rows, v):.4f} | {rel:.2f}x |")
  sections = [
      f"Markov chain V={chain.vocab}, order {chain.order}, chunks of 16 tokens "
      f"(120 pairs per sequence). `gap` = final NLL bound - the chain's exact NLL of the "
      "same validation tokens, nats/token (`gap_se` its standard error).\n\n" +
      report.final_table(rows, names, ["final_nll", "exact_nll", "gap", "gap_se",
                                       "train_time_sec"]),
      "![curves](curves.png)",
      "Cost (this machine, training time only, from the runs' logged training time; "
      "`experiments/benchmarks/hamming_cost.py` measures it in isolation):\n\n" +
      "\n".join(cost),
      "For `kl` with the data target the k = 2 objective is k = 1's times 2 / V "
      "exactly (a pair block's Monte Carlo KL is the two positions' cross-entropies; "
      "`tests/test_hamming.py`), so those two rows differ only through Adam's "
      "scale-invariance being approximate (epsilon, gradient clipping): a control."]
  verdicts = []
  for o in sorted({_objective(v) for v in names}):
    a, b = f"{o}_k1", f"{o}_k2"
    if a not in names or b not in names:
      continue
    e = stats.effect(stats.per_seed(rows, a, "gap"), stats.per_seed(rows, b, "gap"))
    step, early = _early(rows, a, b)
    cost_ = _step_cost(rows, b) / _step_cost(rows, a)
    verdicts.append(f"**{o}: k = 2 reaches a lower gap than k = 1 at equal steps: "
                    f"{stats.verdict(e, 'lower')}** (final gap k2 - k1 "
                    f"{e.as_text('nats/token')}; training-eval NLL bound k2 - k1 at step "
                    f"{step}: {early.as_text('nats/token') if early else 'n/a'}; cost "
                    f"{cost_:.1f}x per step).")
  if "score_gkl_oracle_k2_p16" in names:
    e = stats.effect(stats.per_seed(rows, "score_gkl_oracle_k1", "gap"),
                     stats.per_seed(rows, "score_gkl_oracle_k2_p16", "gap"))
    verdicts.append("**score_gkl_oracle, 16 drawn pairs per step: lower gap than k = 1: "
                    f"{stats.verdict(e, 'lower')}** ({e.as_text('nats/token')}).")
  setup = (f"Seeds {ctx.seeds}; budget x{ctx.budget}{' (quick)' if ctx.quick else ''}. "
           "The objectives study's Markov setup (V=8, order 1, L=16, 2-layer width-64 "
           "denoiser, absorbing process, batch 16). `oracle` = the chain's exact law as "
           "the target (teacher weight 1; at k = 2 its exact pair ratios, "
           "`targets.pair_exact`); `data` = the Monte Carlo data target. k = 2 sums the "
           "score-form divergence over every pair block (V^2 values, scale 1/V^2, "
           "(L/P) sum over P pairs; `tcsm_jax/hamming.py`).")
  return setup, sections, verdicts
