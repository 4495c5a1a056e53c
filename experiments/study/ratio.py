"""Study ``ratio`` (issue 15, part 2; the paper's open question 2): the explicit
density-ratio parameterization of fine-tuning, with and without stabilizers, against the
implicit one (a trained copy of the reference), for reward and preference
fine-tuning at beta 0.1 (the setting where the reward study saw reward hacking and a
diverged seed)."""

from __future__ import annotations

from experiments.study import report, reward, stats
from experiments.study.context import Context

NAME = "ratio"
TITLE = "Study: explicit vs implicit density-ratio parameterization of fine-tuning"
CLAIM = ("(issue 15, the paper's open question 2) The paper fine-tunes with the implicit "
         "parameterization (a copy of the reference, r = p_theta / p_ref implicit) "
         "because the explicit ratio is unstable. Is the explicit ratio head, normalized "
         "over the neighbourhood and optionally bounded or regularized, less stable or "
         "worse in reward and fidelity than the implicit one?")

BETA = 0.1
BOUND, REG = 2.0, 1.0
PARAMS = {
    "explicit": {},
    "implicit": {"finetune.parameterization": "implicit"},
    f"explicit_bound{BOUND:g}": {"finetune.ratio_bound": BOUND},
    f"explicit_reg{REG:g}": {"finetune.ratio_reg": REG},
}


def variants(ctx: Context, ref_dir: str):
  base = reward.variants(ctx, ref_dir)
  common = {k: v for k, v in base["reward_beta0.3"].items() if k != "finetune.beta"}
  out = {}
  kinds = ("reward",) if ctx.quick else ("reward", "preference")
  names = ("explicit", "implicit") if ctx.quick else tuple(PARAMS)
  for kind in kinds:
    for p in names:
      out[f"{kind}_{p}"] = dict(common, **PARAMS[p], **{"finetune.kind": kind,
                                                        "finetune.beta": BETA})
  return out


def plan(ctx: Context):
  return reward.plan(ctx, variants)     # the reward study's shared runs, own variants


def report_(ctx: Context, rows, summary):
  names = list(variants(ctx, ""))
  reward.add_objective(rows, lambda v: BETA if v.startswith("reward_") else None)
  info = ctx.notes.get("prereq", {})
  keys = ["reward", "kl_est", "objective", "gen_ppl", "entropy", "win_rate",
          "train_time_sec"]
  ref = info.get("reference_samples", {})
  stab = ["| variant | runs diverged | median grad norm (clip 1.0) | max | non-finite |",
          "|---|---|---|---|---|"]
  div = {}
  for v in names:
    d = [r for r in rows if r["variant"] == v and ("diverged" in r or "reward" in r)]
    div[v] = (sum(r.get("diverged") == 1.0 for r in d), len(d))
    stab.append(f"| {v} | {div[v][0]}/{div[v][1]} | "
                f"{report.spread_cells(ctx.logged(v, 'grad_norm'))} |")
  sections = [
      "Reference samples: " + ", ".join(f"{k} {ref[k]:.4f}" for k in keys if k in ref),
      f"### Fine-tuned models ({reward.num_samples(ctx)} samples each, beta {BETA:g})\n\n"
      "objective (reward runs) = reward / beta - kl_est = log Z - KL(model || tilted "
      "target), higher is closer to the target; win_rate against reference samples "
      "under the reward; gen_ppl under the judge (reference samples: "
      f"{ref.get('gen_ppl', float('nan')):.1f}).\n\n" + report.final_table(rows, names, keys),
      "### Stability\n\nDiverged = stopped by the trainer's divergence guard; gradient "
      "norms before clipping at every logged step of every seed.\n\n" + "\n".join(stab),
      "![reward vs fidelity](reward_vs_fidelity.png)"]
  reward.plot_reward_vs_fidelity(ctx, rows, names, ref)
  verdicts = []
  for kind in sorted({v.split("_")[0] for v in names}):
    ex, im = f"{kind}_explicit", f"{kind}_implicit"
    if ex not in names or im not in names:
      continue
    key = "objective" if kind == "reward" else "win_rate"
    e = stats.effect(stats.per_seed(rows, im, key), stats.per_seed(rows, ex, key))
    eg = stats.effect(stats.per_seed(rows, im, "gen_ppl"), stats.per_seed(rows, ex, "gen_ppl"))
    verdicts.append(
        f"**{kind}: the explicit ratio head is worse than the implicit copy (lower "
        f"{key}): {stats.verdict(e, 'lower')}** (explicit - implicit {key} "
        f"{e.as_text()}; gen_ppl {eg.as_text()}; diverged explicit {div[ex][0]}/"
        f"{div[ex][1]}, implicit {div[im][0]}/{div[im][1]}).")
    short = lambda v: v.split("_", 1)[1]

    def stability(a, b):               # the claim: b is stopped less often than a
      if div[a][0] + div[b][0] == 0:
        return
      v, pv = stats.fewer_failures(*div[a], *div[b])
      verdicts.append(f"**{kind}: {short(b)} diverges less often than {short(a)}: "
                      f"{v}** ({div[b][0]}/{div[b][1]} vs {div[a][0]}/{div[a][1]} runs "
                      f"stopped by the divergence guard; Fisher exact p = {pv:.3g}).")

    stability(ex, im)                  # the paper's reason for the implicit form
    for p in PARAMS:
      st = f"{kind}_{p}"
      if p in ("explicit", "implicit") or st not in names:
        continue
      stability(ex, st)
      stability(im, st)
      eg = stats.effect(stats.per_seed(rows, ex, "gen_ppl"), stats.per_seed(rows, st, "gen_ppl"))
      ek = stats.effect(stats.per_seed(rows, ex, "kl_est"), stats.per_seed(rows, st, "kl_est"))
      e = stats.effect(stats.per_seed(rows, ex, key), stats.per_seed(rows, st, key))
      verdicts.append(
          f"**{kind}: {p} keeps samples closer to the reference than the plain explicit "
          f"head (lower generative perplexity): {stats.verdict(eg, 'lower')}** "
          f"({p} - explicit: gen_ppl {eg.as_text()}; kl_est {ek.as_text('nats/token')}; "
          f"{key} {e.as_text()}; diverged {div[st][0]}/{div[st][1]}).")
  setup = (f"Seeds {ctx.seeds}; budget x{ctx.budget}{' (quick)' if ctx.quick else ''}. "
           "The reward study's reference, judge and classifier reward; its fine-tuning "
           f"configs (kjv_reward: score form, gKL, Taylor reward differences; preference: "
           f"DPO on reward-ranked reference pairs) at beta {BETA:g}, with "
           "`finetune.parameterization` explicit (the default: a log-ratio head over the "
           "frozen reference, softmax-normalized over the neighbourhood, zero at init) or "
           "implicit (a trained copy of the reference network, same size), and the "
           f"explicit head's stabilizers `finetune.ratio_bound={BOUND:g}` (B tanh(g/B)) "
           f"and `finetune.ratio_reg={REG:g}` (lam Var_p_ref[log r] per position).")
  return setup, sections, verdicts
