"""Study ``reward``: reward fine-tuning over beta (reward against fidelity) and
preference fine-tuning (win rate against the reference under the reward)."""

from __future__ import annotations

import io
import json

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from experiments.configs import kjv_reward
from experiments.study import evals, report, stats
from experiments.study.context import Context, with_overrides
from experiments.study.objectives import corpus_config
from experiments.study.runner import Run
from tcsm_jax import fs, likelihood, quality, sampling
from tcsm_jax.posttrain import finetune as finetune_lib

NAME = "reward"
TITLE = "Study: reward and preference fine-tuning"
CLAIM = ("(d) Reward fine-tuning with TCSM (target p_ref exp(r / beta)) trades reward "
         "against fidelity to the reference through beta; preference fine-tuning "
         "raises the win rate against the reference under the reward.")

BETAS = (1.0, 0.3, 0.1)


def num_samples(ctx: Context) -> int:
  return 16 if ctx.quick else 128


def prereq_configs(ctx: Context):
  ref = corpus_config(ctx)
  ref.seed = 300
  ctx.schedule(ref, ctx.steps(3000))
  judge = with_overrides(ref, {"model.arch": "causal", "train.batch_size": 16,
                               "seed": 301})
  return {"reference": ref, "judge": judge}


def variants(ctx: Context, ref_dir: str):
  base = {"finetune.ref_workdir": ref_dir,
          "finetune.classifier_dir": str(fs.join(ctx.outdir, "classifier"))}
  v = {f"reward_beta{b:g}": dict(base, **{"finetune.beta": b}) for b in BETAS}
  v["preference_beta0.1"] = dict(base, **{"finetune.kind": "preference",
                                          "finetune.beta": 0.1})
  if ctx.quick:
    v = {k: v[k] for k in ("reward_beta0.3", "preference_beta0.1")}
  return v


def finetune_config(ctx: Context):
  c = kjv_reward.get_config()
  ctx.schedule(c, ctx.steps(300))
  c.train.eval_batches = 4 if ctx.quick else 16
  if ctx.quick:
    c.finetune.classifier_steps = 20
    c.finetune.num_pairs = 32
  return c


def sample_metrics(apply_fn, params, ref, ref_params, reward_fn, judge, length, num,
                   seed, ref_samples=None, log_tilt_fn=None):
  """Samples of a model: mean reward, reward standard error, NLL bounds under the
  reference and under the model itself (their mean difference estimates
  KL(model || reference) per token; a difference of two upper bounds, not a bound),
  generative perplexity, unigram entropy, and the win rate against ``ref_samples``.
  ``log_tilt_fn``: guided sampling (``posttrain/guidance.py``; the model's own bound
  is then that of the untilted network)."""
  x, _ = sampling.jit_sampler(apply_fn, ref.process, ref.schedule, (num, length),
                              steps=64, log_tilt_fn=log_tilt_fn)(
                                  params, jax.random.PRNGKey(seed + 4242))
  x = jnp.asarray(x)
  r = np.asarray(jax.jit(reward_fn)(x), np.float64)

  def bound(fn, p):
    return np.asarray(jax.jit(lambda p_, k, xx: likelihood.nll_bound(
        k, lambda xt, s: fn(p_, xt, s), xx, ref.process, ref.schedule,
        num_t=16)["bound"])(p, jax.random.PRNGKey(seed + 1), x), np.float64) / length

  nll_ref = bound(ref.apply_fn, ref_params)
  nll_own = bound(apply_fn, params)
  q = quality.report(np.asarray(x), judge)
  out = dict(reward=float(r.mean()), reward_se=float(r.std(ddof=1) / np.sqrt(r.size)),
             ref_nll=float(nll_ref.mean()), own_nll=float(nll_own.mean()),
             kl_est=float((nll_ref - nll_own).mean()),
             gen_ppl=float(q["gen_perplexity"]), entropy=float(q["unigram_entropy"]))
  if ref_samples is not None:
    rr = np.asarray(jax.jit(reward_fn)(jnp.asarray(ref_samples)), np.float64)
    out["win_rate"] = float(((r[:, None] > rr[None]) + 0.5 * (r[:, None] == rr[None])
                             ).mean())
  return out, np.asarray(x)


def plan(ctx: Context, variants_fn=None, extra_fn=None):
  """The shared runs (reference, judge, classifier, reference samples) and one run per
  variant of ``variants_fn(ctx, reference_dir)`` (default: this study's) and seed.
  ``extra_fn(loaded_run, judge, ref_samples, seed) -> dict`` adds final metrics."""
  dirs = ctx.prerequisites(prereq_configs(ctx))
  info = ctx.notes["prereq"]
  base = finetune_config(ctx)
  num = num_samples(ctx)
  vs = (variants_fn or variants)(ctx, dirs["reference"])
  # The reference's own samples and metrics, once (kept for later re-runs).
  rr = common.load_run(dirs["reference"], flag="reference")
  judge = evals.study_judge(ctx, dirs["judge"], rr.experiment.dataset)
  reward_fn, _ = finetune_lib.make_reward(
      with_overrides(base, next(iter(vs.values()))), rr.experiment.dataset, "")
  ref_path = fs.join(ctx.outdir, "reference_samples.npz")
  if fs.exists(ref_path):
    with fs.open_file(ref_path, "rb") as f:
      z = np.load(io.BytesIO(f.read()))
      ref_x, ref_m = z["tokens"], json.loads(str(z["metrics"]))
  else:
    e = rr.experiment
    ref_m, ref_x = sample_metrics(e.apply_fn, rr.params, e, rr.params, reward_fn, judge,
                                  base.data.seq_len, num, 0)
    buf = io.BytesIO()
    np.savez(buf, tokens=ref_x, metrics=json.dumps(ref_m))
    fs.write_bytes_atomic(ref_path, buf.getvalue())
  info["reference_samples"] = ref_m

  def fin(run, wd):
    ft = common.load_run(wd)
    exp = ft.experiment
    m, _ = sample_metrics(exp.apply_fn, ft.params, exp.ref, exp.ref_params,
                          exp.reward_fn, judge, base.data.seq_len, num, run.seed, ref_x)
    if extra_fn is not None:
      m.update(extra_fn(ft, judge, ref_x, run.seed))
    return m

  runs = []
  for name, ov in vs.items():
    for seed in ctx.seeds:
      runs.append(Run(name, seed, with_overrides(base, dict(ov, seed=seed)), fin))
  return runs


def add_objective(rows, beta_of) -> None:
  """Adds ``objective = reward / beta - kl_est`` to every row with both (``beta_of``:
  variant -> beta or None). It is ``log Z - KL(model || p_ref exp(r/beta) / Z)``, so at
  one beta a higher value is closer to the tilted target (up to the KL estimate's
  error)."""
  for r in rows:
    b = beta_of(r["variant"])
    if b and "reward" in r and "kl_est" in r:
      r["objective"] = r["reward"] / b - r["kl_est"]


def report_(ctx: Context, rows, summary):
  names = list(variants(ctx, ""))
  info = ctx.notes.get("prereq", {})
  add_objective(rows, lambda v: float(v.split("beta")[1]) if v.startswith("reward_")
                else None)
  keys = ["reward", "kl_est", "objective", "ref_nll", "gen_ppl", "entropy", "win_rate"]
  sections = []
  lines = [f"- {k}: {d['steps']} steps, {d['time']:.0f} s, validation "
           f"{'exact NLL' if k == 'judge' else 'NLL bound'} {d['nll']:.4f} nats/token"
           for k, d in info.items() if k in ("reference", "judge")]
  ref = info.get("reference_samples")
  if ref:
    lines.append("- reference samples: " + ", ".join(f"{k} {ref[k]:.4f}" for k in keys
                                                    if k in ref))
  sections.append("### Reference and judge\n\n" + "\n".join(lines))
  sections.append(
      f"### Fine-tuned models ({num_samples(ctx)} samples each, 64 sampling steps)\n\n"
      "reward: mean classifier log-odds of samples; kl_est: mean NLL bound under the "
      "reference minus under the model (nats/token, estimates KL(model || ref)); "
      "ref_nll: samples' NLL bound under the reference; win_rate: P(reward of a model "
      "sample > reward of a reference sample), ties 1/2; objective: reward / beta - "
      "kl_est = log Z - KL(model || p_ref exp(r/beta)/Z), higher is closer to the "
      "tilted target at that beta.\n\n"
      + report.final_table(rows, names, keys))
  plot_reward_vs_fidelity(ctx, rows, names, ref)
  sections.append("![reward vs fidelity](reward_vs_fidelity.png)")
  verdicts = []
  hi, lo = f"reward_beta{min(BETAS):g}", f"reward_beta{max(BETAS):g}"
  if hi in names and lo in names:
    er = stats.effect(stats.per_seed(rows, lo, "reward"), stats.per_seed(rows, hi, "reward"))
    ek = stats.effect(stats.per_seed(rows, lo, "kl_est"), stats.per_seed(rows, hi, "kl_est"))
    vr, vk = stats.verdict(er, "higher"), stats.verdict(ek, "higher")
    both = ("holds" if vr == vk == "holds" else "does not hold at this scale"
            if "does not hold at this scale" in (vr, vk) else "inconclusive")
    verdicts.append(f"**(d) lowering beta from {max(BETAS):g} to {min(BETAS):g} raises "
                    f"the reward and the distance from the reference: {both}.** reward "
                    f"{er.as_text()} ({vr}); KL estimate {ek.as_text('nats/token')} "
                    f"({vk}).")
  for v in names:
    if v.startswith("preference"):
      w = stats.per_seed(rows, v, "win_rate")
      e = stats.effect({s: 0.5 for s in w}, w)
      verdicts.append(f"**(d) {v} wins against the reference under the reward more "
                      f"than half the time: {stats.verdict(e, 'higher')}.** win rate - "
                      f"0.5 = {e.as_text()}.")
  setup = (f"Seeds {ctx.seeds}; budget x{ctx.budget}{' (quick)' if ctx.quick else ''}. "
           "Reference: kjv_tiny (sequence length 64) trained "
           f"{prereq_configs(ctx)['reference'].train.num_steps} steps; judge: the causal "
           "twin with 2x the batch. Reward: log-odds of a New- vs Old-Testament "
           "classifier trained once in the study directory. Fine-tuning: "
           f"experiments/configs/kjv_reward.py ({finetune_config(ctx).train.num_steps} "
           "steps, score form, gKL, Taylor reward differences, default tilted-denoiser "
           "target, no importance weights) for each beta; preference: "
           "kjv_preference's DPO-style loss on reward-ranked pairs of reference samples, "
           "beta 0.1.")
  return setup, sections, verdicts


def plot_reward_vs_fidelity(ctx, rows, names, ref):
  """``reward_vs_fidelity.png``: reward against the KL estimate and against generative
  perplexity, per seed and mean +- std, with the reference's own point."""
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
  for ax, xkey, xlabel in ((axes[0], "kl_est", "KL(model || reference) estimate, "
                            "nats/token"), (axes[1], "gen_ppl", "generative perplexity "
                                             "(judge)")):
    for v in names:
      xs = stats.per_seed(rows, v, xkey)
      ys = stats.per_seed(rows, v, "reward")
      seeds = sorted(set(xs) & set(ys))
      (pts,) = ax.plot([xs[s] for s in seeds], [ys[s] for s in seeds], "o", alpha=0.5)
      mx, sx, _ = stats.mean_std(xs.values())
      my, sy, _ = stats.mean_std(ys.values())
      ax.errorbar([mx], [my], xerr=[np.nan_to_num(sx)], yerr=[np.nan_to_num(sy)],
                  fmt="s", color=pts.get_color(), label=v, capsize=3)
    if ref:
      ax.plot([ref.get(xkey, 0.0)], [ref["reward"]], "k*", ms=12, label="reference")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean reward of samples")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  fig.suptitle("reward vs fidelity (dots: seeds; squares: mean +- 1 std)")
  fig.tight_layout()
  common.save_figure(fig, fs.join(ctx.outdir, "reward_vs_fidelity.png"))
  plt.close(fig)
