"""Study ``few_steps``: fewer network calls at the same sample quality (issue 28).

On the bundled corpus a diffusion teacher and a causal judge are trained once; then
``ROUNDS`` rounds of self-distillation through TCSM (``tcsm_jax/posttrain/
self_distill.py``) halve the teacher's ``TEACHER_STEPS`` sampling steps, one chain of
rounds per seed (each round an ordinary workdir, ``runs/round_<r>/seed_<s>``). Every
round and every sampler of the teacher is measured on the network-call axis
(``experiments/few_calls.py``): generative perplexity under the judge and unigram
entropy of ``num_samples`` samples at 4, 8, 16, 32 and 64 calls (grid samplers and the
rounds: that many steps ending at ``t = 0``; ``confidence``: ``ceil(L / calls)`` tokens
per call; ``first_hitting``: ``ceil(L / (calls - 1))`` events per call plus the final
call; ``entropy_bound`` / ``confidence_threshold``: swept over gamma / tau and placed at
their mean calls per sequence). References: the teacher at 256 and 1,024 steps, exact
first-hitting (at most ``L + 1`` calls). Each setting is sampled with every seed; the
report gives means with 95% t intervals over seeds and the verdict against the target:
at 16 calls, a student or sampler within 10% of the 256-step teacher's generative
perplexity at an entropy within 0.02 nats (else how far each got).
"""

from __future__ import annotations

import json
import math

import jax
import numpy as np

from experiments import common, few_calls
from experiments.study import stats
from experiments.study.context import Context, with_overrides
from experiments.study.objectives import corpus_config as _corpus
from experiments.study.runner import Run, run_dir
from tcsm_jax import fs, quality, sampling
from tcsm_jax.posttrain import self_distill

NAME = "few_steps"
TITLE = "Study: fewer network calls at the same sample quality"
CLAIM = ("(issue 28) At 16 network calls a self-distilled student or an adaptive "
         "sampler comes within 10% of the 256-step teacher's generative perplexity at "
         "an entropy within 0.02 nats.")

SEQ_LEN = 32
PPL_BAND, ENT_BAND = 0.10, 0.02


def design(ctx: Context) -> dict:
  if ctx.quick:
    return dict(teacher_steps=8, rounds=2, nfes=(2, 4), target=4, refs=(8, 16),
                samples=8, gammas=(0.1, 3.0), taus=(0.9, 0.3))
  return dict(teacher_steps=256, rounds=6, nfes=(4, 8, 16, 32, 64), target=16,
              refs=(256, 1024), samples=64, gammas=(0.03, 0.1, 0.3, 1.0, 3.0),
              taus=(0.99, 0.9, 0.7, 0.5, 0.3))


def base_config(ctx: Context):
  c = _corpus(ctx)
  c.data.seq_len = SEQ_LEN
  c.train.batch_size = 16
  ctx.schedule(c, ctx.steps(4000))
  return c


def prereq_configs(ctx: Context):
  teacher = with_overrides(base_config(ctx), {"seed": 300})
  judge = with_overrides(teacher, {"model.arch": "causal", "seed": 301})
  return {"teacher": teacher, "judge": judge}


def _sample(run, judge, opts: dict, num: int, seed: int) -> dict:
  """Quality and calls of ``num`` samples of ``run`` with ``sampling.sample`` options."""
  exp = run.experiment
  kw = dict(opts)
  steps = kw.pop("steps")
  fn = sampling.jit_sampler(exp.apply_fn, exp.process, exp.schedule,
                            (num, run.config.data.seq_len), steps=steps, **kw)
  x, info = fn(run.params, jax.random.PRNGKey(seed + 777))
  q = quality.report(np.asarray(x), judge)
  per_row = info.get("calls_per_row")
  calls = float(np.mean(per_row)) if per_row is not None else float(info["nfe"])
  return {"gen_ppl": float(q["gen_perplexity"]), "entropy": float(q["unigram_entropy"]),
          "calls": calls, "calls_batch": int(info["nfe"])}


def teacher_settings(ctx: Context, length: int, sigma0_zero: bool) -> dict:
  """``{label: sample options}`` of the teacher's samplers and references."""
  d = design(ctx)
  out = {}
  for s in ("analytic", "remdm", "confidence", "first_hitting"):
    for n in d["nfes"]:
      o = few_calls.options_at(s, n, length, sigma0_zero)
      if s == "remdm":
        o.update(remask_eta=0.02, remask_schedule="cap")
      out[f"{s}@{n}"] = o
  for g in d["gammas"]:
    out[f"entropy_bound gamma={g}"] = dict(sampler="entropy_bound", steps=1, eb_gamma=g)
  for t in d["taus"]:
    out[f"confidence_threshold tau={t}"] = dict(sampler="confidence_threshold", steps=1,
                                                confidence_tau=t)
  for n in d["refs"]:
    out[f"teacher@{n} (reference)"] = few_calls.options_at("analytic", n, length,
                                                           sigma0_zero)
  out["first_hitting exact (reference)"] = dict(sampler="first_hitting", steps=1)
  return out


def plan(ctx: Context):
  d = design(ctx)
  dirs = ctx.prerequisites(prereq_configs(ctx))
  ctx.notes["dirs"] = dirs
  jr = common.load_run(dirs["judge"], flag="judge")
  judge = (jr.experiment.model, jr.params)
  ctx.notes["judge"] = judge
  base = prereq_configs(ctx)["teacher"]
  per_round = ctx.steps(600, quick=10)

  def fin(run, wd):
    loaded = common.load_run(wd)
    sig0 = float(loaded.experiment.schedule.sigma_bar(0.0)) == 0.0
    out = {}
    for n in d["nfes"]:
      r = _sample(loaded, judge, few_calls.options_at("analytic", n, SEQ_LEN, sig0),
                  d["samples"], run.seed)
      out.update({f"gen_ppl_n{n}": r["gen_ppl"], f"entropy_n{n}": r["entropy"],
                  f"calls_n{n}": r["calls"]})
    return out

  runs = []
  for r in range(1, d["rounds"] + 1):
    steps = d["teacher_steps"] // 2 ** r
    for seed in ctx.seeds:
      teacher = (dirs["teacher"] if r == 1 else
                 str(run_dir(ctx.outdir, Run(f"round_{r - 1}", seed, None))))
      cfg = self_distill.round_config(with_overrides(base, {"seed": seed}), teacher,
                                      steps, divergence="kl")
      ctx.schedule(cfg, per_round, evals=1, quick_evals=1)
      runs.append(Run(f"round_{r}", seed, cfg, fin))
  return runs


def measure_teacher(ctx: Context) -> dict:
  """``{label: {seed: measurement}}`` of the teacher's settings, cached in
  ``OUTDIR/teacher_samplers.json`` (only missing ones are sampled)."""
  d = design(ctx)
  path = fs.join(ctx.outdir, "teacher_samplers.json")
  cache = json.loads(fs.read_text(path)) if fs.exists(path) else {}
  run = common.load_run(ctx.notes["dirs"]["teacher"])
  sig0 = float(run.experiment.schedule.sigma_bar(0.0)) == 0.0
  judge = ctx.notes["judge"]
  for label, opts in teacher_settings(ctx, SEQ_LEN, sig0).items():
    for seed in ctx.seeds:
      key = f"{label}|{seed}|{d['samples']}"
      if key not in cache:
        cache[key] = dict(_sample(run, judge, opts, d["samples"], seed), options=opts)
        common.write_json(path, cache)
  out = {}
  for label in teacher_settings(ctx, SEQ_LEN, sig0):
    out[label] = {s: cache[f"{label}|{s}|{d['samples']}"] for s in ctx.seeds}
  return out


def _interval(values):
  """``(mean, half-width of the 95% t interval)`` (``nan`` half-width for one value)."""
  m, s, n = stats.mean_std(values)
  if n < 2:
    return m, float("nan")
  from scipy import stats as sp
  return m, float(sp.t.ppf(0.975, n - 1) * s / math.sqrt(n))


def _fmt(m, h, f="{:.3f}"):
  return f.format(m) + ("" if not np.isfinite(h) else " +- " + "{:.3f}".format(h))


def collect(ctx: Context, rows, teacher) -> list:
  """Every measured point: ``{label, group, per-seed {seed: (calls, ppl, ent)}}``."""
  d = design(ctx)
  points = []
  for label, by_seed in teacher.items():
    group = label.split("@")[0].split(" ")[0]
    points.append(dict(label=label, group=group, seeds={
        s: (m["calls"], m["gen_ppl"], m["entropy"]) for s, m in by_seed.items()}))
  for r in range(1, d["rounds"] + 1):
    v = f"round_{r}"
    steps = d["teacher_steps"] // 2 ** r
    for n in d["nfes"]:
      c = stats.per_seed(rows, v, f"calls_n{n}")
      p = stats.per_seed(rows, v, f"gen_ppl_n{n}")
      e = stats.per_seed(rows, v, f"entropy_n{n}")
      if p:
        points.append(dict(label=f"{v} ({steps}-step student)@{n}", group=v,
                           seeds={s: (c[s], p[s], e[s]) for s in p}))
  return points


def verdicts_at_target(ctx: Context, points) -> tuple:
  """The table against the 256-step (quick: first reference) teacher and the lines."""
  d = design(ctx)
  ref = next(p for p in points if p["label"] == f"teacher@{d['refs'][0]} (reference)")
  target = d["target"]
  cands = [p for p in points if "(reference)" not in p["label"]
           and np.mean([v[0] for v in p["seeds"].values()]) <= target + 1e-9]
  # Per group, the candidate with the most calls within the target (the best budget use).
  best = {}
  for p in cands:
    calls = np.mean([v[0] for v in p["seeds"].values()])
    if p["group"] not in best or calls > best[p["group"]][0]:
      best[p["group"]] = (calls, p)
  lines = ["| candidate | calls | gen PPL / reference (95% CI) | entropy - reference "
           "(nats, 95% CI) | target |", "|---|---|---|---|---|"]
  verdicts, reached = [], []
  for group, (calls, p) in sorted(best.items()):
    common_seeds = sorted(set(p["seeds"]) & set(ref["seeds"]))
    lr = [math.log(p["seeds"][s][1] / ref["seeds"][s][1]) for s in common_seeds]
    de = [p["seeds"][s][2] - ref["seeds"][s][2] for s in common_seeds]
    (mr, hr), (me, he) = _interval(lr), _interval(de)
    ratio = math.exp(mr)
    ok_mean = ratio <= 1 + PPL_BAND and abs(me) <= ENT_BAND
    ok_ci = (np.isfinite(hr) and math.exp(mr + hr) <= 1 + PPL_BAND
             and abs(me) + he <= ENT_BAND)
    no_ci = np.isfinite(hr) and (math.exp(mr - hr) > 1 + PPL_BAND
                                 or abs(me) - he > ENT_BAND)
    state = ("holds" if ok_ci else "does not hold at this scale" if no_ci else
             "inconclusive")
    if ok_mean:
      reached.append(p["label"])
    ci = ("" if not np.isfinite(hr) else
          f" ({math.exp(mr - hr):.3f} to {math.exp(mr + hr):.3f})")
    lines.append(f"| {p['label']} | {calls:.1f} | {ratio:.3f}{ci} | "
                 f"{_fmt(me, he, '{:+.3f}')} | {state} |")
    verdicts.append(f"{p['label']} ({calls:.1f} calls): perplexity ratio {ratio:.3f}"
                    f"{ci}, entropy difference {_fmt(me, he, '{:+.3f}')} nats: {state}.")
  for group in sorted({p["group"] for p in points if "(reference)" not in p["label"]}
                      - set(best)):
    fewest = min(np.mean([v[0] for v in p["seeds"].values()]) for p in points
                 if p["group"] == group and "(reference)" not in p["label"])
    lines.append(f"| {group} | {fewest:.1f} (fewest measured) | - | - | over budget |")
    verdicts.append(f"{group}: no setting within {target} calls (its fewest: "
                    f"{fewest:.1f}).")
  head = (f"**Target at {target} calls (within {PPL_BAND:.0%} of the "
          f"{d['refs'][0]}-step teacher's generative perplexity at an entropy within "
          f"{ENT_BAND} nats): " + (("reached on the seed means by " + ", ".join(reached))
                                   if reached else "not reached by any candidate") + ".**")
  return head, "\n".join(lines), verdicts


def report_(ctx: Context, rows, summary):
  del summary
  d = design(ctx)
  teacher = measure_teacher(ctx)
  points = collect(ctx, rows, teacher)
  table = ["| setting | calls per sequence | gen PPL (95% CI) | entropy (nats) | seeds |",
           "|---|---|---|---|---|"]
  plot_rows = []
  for p in points:
    calls = [v[0] for v in p["seeds"].values()]
    (mp, hp), (me, he) = (_interval([v[1] for v in p["seeds"].values()]),
                          _interval([v[2] for v in p["seeds"].values()]))
    table.append(f"| {p['label']} | {np.mean(calls):.1f} | {_fmt(mp, hp)} | "
                 f"{_fmt(me, he)} | {len(calls)} |")
    if "(reference)" not in p["label"]:
      hp0 = hp if np.isfinite(hp) else 0.0
      plot_rows.append(dict(label=p["group"], nfe=float(np.mean(calls)),
                            gen_perplexity=mp, unigram_entropy=me,
                            gen_ppl_lo=mp - hp0, gen_ppl_hi=mp + hp0))
  refs = [(p["label"], _interval([v[1] for v in p["seeds"].values()])[0])
          for p in points if "(reference)" in p["label"]]
  few_calls.plot_nfe(plot_rows, fs.join(ctx.outdir, "quality_vs_calls.png"),
                     references=refs)
  head, vtable, verdicts = verdicts_at_target(ctx, points)
  info = ctx.notes.get("prereq", {})
  setup = (
      f"Seeds {ctx.seeds}; budget x{ctx.budget}{' (quick)' if ctx.quick else ''}. "
      f"Teacher: kjv_tiny's absorbing diffusion model at sequence length {SEQ_LEN} "
      f"(batch 16, {info.get('teacher', {}).get('steps', '?')} steps, NLL bound "
      f"{info.get('teacher', {}).get('nll', float('nan')):.3f} nats/token); judge: a "
      "causal model of the same size and budget (another seed). Self-distillation: "
      f"{d['rounds']} rounds from {d['teacher_steps']} steps, each halving the steps "
      f"(k = 2 teacher steps per student step), "
      f"{ctx.steps(600, quick=10)} training steps per round, TCSM distribution form "
      "with the kl divergence (unbiased for the k-step target), one chain of rounds "
      f"per seed. {d['samples']} samples per setting and seed (the seed is also the "
      "sampling seed); calls are per sequence (adaptive samplers: the mean over "
      "sequences; their batch runs until its slowest sequence is done). Grid samplers "
      "end at t = 0 (no final denoising call).")
  sections = [
      "### Quality against network calls\n\n![calls](quality_vs_calls.png)\n\n"
      "Means over seeds with 95% t intervals (the rounds' students are sampled with "
      "their own grid at every number of calls):\n\n" + "\n".join(table),
      f"### At {d['target']} calls against the {d['refs'][0]}-step teacher\n\n"
      "Per candidate family, the setting with the most calls within the budget; "
      "ratios and differences paired by seed:\n\n" + vtable]
  return setup, sections, [head] + verdicts
