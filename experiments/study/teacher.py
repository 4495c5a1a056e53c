"""Study ``teacher``: a parametric target p_1 (a masked-LM / absorbing-diffusion teacher,
an AR teacher, the exact law of Markov data) against the data target: steps and
wall-clock (teacher training included) to reach a fixed NLL bound."""

from __future__ import annotations

import numpy as np

from experiments import common
from experiments.study import evals, report, stats
from experiments.study.context import Context, with_overrides
from experiments.study.objectives import corpus_config as _corpus
from experiments.study.objectives import markov_config
from experiments.study.runner import Run

NAME = "teacher"
TITLE = "Study: a parametric target (teacher) against the data target"
CLAIM = ("(b) A parametric target (a pre-trained masked LM, 'BERT as p_1', or an AR "
         "model) speeds up TCSM pre-training (the paper's Figure 1). At what teacher "
         "quality does the speed-up appear, and does it pay for its compute?")

SEQ_LEN = 32          # the MLM and AR targets cost L teacher passes per step


def corpus_config(ctx: Context):
  c = _corpus(ctx)
  c.data.seq_len = SEQ_LEN
  ctx.schedule(c, ctx.steps(1000))
  return c


def teacher_configs(ctx: Context):
  """Teachers on the corpus: MLM trained 4x the student's steps on 2x its batch
  (strong), MLM with the student's own budget (weak), AR with the strong budget."""
  base = corpus_config(ctx)
  strong = with_overrides(base, {"train.batch_size": 16, "seed": 100})
  ctx.schedule(strong, ctx.steps(4000))
  weak = with_overrides(base, {"seed": 101})
  ar = with_overrides(strong, {"model.arch": "causal", "seed": 102})
  return {"mlm_strong": strong, "mlm_weak": weak, "ar_strong": ar}


def variants(ctx: Context, teachers):
  mlm = lambda name, w: {"teacher.kind": "mlm", "teacher.workdir": teachers.get(name, ""),
                         "loss.teacher_weight": w}
  v = {
      "corpus/data": {"loss.teacher_weight": 0.0},
      "corpus/mlm_strong": mlm("mlm_strong", 1.0),
      "corpus/mlm_strong_mix": mlm("mlm_strong", 0.5),
      "corpus/mlm_weak": mlm("mlm_weak", 1.0),
      "corpus/ar_strong_topk4_mix": {"teacher.kind": "ar", "teacher.mode": "top_k",
                                     "teacher.top_k": 4,
                                     "teacher.workdir": teachers.get("ar_strong", ""),
                                     "loss.teacher_weight": 0.5},
      "markov/data": {"loss.teacher_weight": 0.0},
      "markov/oracle": {"teacher.kind": "markov", "loss.teacher_weight": 1.0},
      "markov/oracle_mix": {"teacher.kind": "markov", "loss.teacher_weight": 0.5},
  }
  if ctx.quick:
    v = {k: v[k] for k in ("corpus/data", "corpus/mlm_strong", "markov/data",
                           "markov/oracle")}
  return v


def plan(ctx: Context):
  teachers = ctx.prerequisites({n: c for n, c in teacher_configs(ctx).items()
                                if not ctx.quick or n == "mlm_strong"}, "teachers")
  bases = {"corpus": corpus_config(ctx), "markov": markov_config(ctx)}
  runs = []
  nb = 2 if ctx.quick else 32

  def fin(run, wd):
    return evals.final_nll(common.load_run(wd), nb, num_t=2 if ctx.quick else 8)

  for name, ov in variants(ctx, teachers).items():
    for seed in ctx.seeds:
      cfg = with_overrides(bases[name.split("/")[0]], dict(ov, seed=seed))
      runs.append(Run(name, seed, cfg, fin))
  return runs


def _teacher_of(variant: str):
  for t in ("mlm_strong", "mlm_weak", "ar_strong"):
    if f"/{t}" in variant:
      return t
  return None


def report_(ctx: Context, rows, summary):
  names = list(variants(ctx, {k: "" for k in ("mlm_strong", "mlm_weak", "ar_strong")}))
  info = ctx.notes.get("teachers", {})
  sections, verdicts = [], []
  tlines = ["| teacher | steps | training s | validation NLL (nats/token) |",
            "|---|---|---|---|"]
  for t, d in info.items():
    kind = "exact NLL" if t.startswith("ar") else "NLL bound"
    tlines.append(f"| {t} | {d['steps']} | {d['time']:.0f} | {d['nll']:.4f} ({kind}) |")
  sections.append("### Teachers (trained once, seed 100-102)\n\n" + "\n".join(tlines))
  for data in ("corpus", "markov"):
    vs = [v for v in names if v.startswith(data + "/")]
    if not vs:
      continue
    report.plot_curves(ctx.outdir, f"curves_{data}", summary, vs,
                       f"teacher targets on {data}")
    data_v = f"{data}/data"
    finals = stats.per_seed(rows, data_v, "nll_bound").values()
    thr = max(finals) if finals else float("nan")
    lines = [f"Threshold: {thr:.4f} nats/token, the final training-eval NLL bound the "
             "data target reaches in every seed (its worst seed's). Steps and training "
             "seconds to reach it "
             "(interpolated between evaluations; '-' = not reached); "
             "'s + teacher' adds the teacher's own training time.", "",
             "| variant | final NLL | steps to threshold | s to threshold | "
             "s + teacher | reached (seeds) |", "|---|---|---|---|---|---|"]
    reach = {}
    for v in vs:
      st, ti = {}, {}
      for seed in sorted({r["seed"] for r in rows if r["variant"] == v}):
        pts = sorted((r for r in rows if r["variant"] == v and r["seed"] == seed),
                     key=lambda r: r["step"])
        ys = [r["nll_bound"] for r in pts]
        st[seed] = stats.steps_to_threshold([r["step"] for r in pts], ys, thr)
        ti[seed] = stats.steps_to_threshold([r["train_time_sec"] for r in pts], ys, thr)
      reach[v] = (st, ti)
      t_extra = info.get(_teacher_of(v), {}).get("time", 0.0)
      ms, ss, n_st = stats.mean_std(st.values())
      mt, stt, _ = stats.mean_std(ti.values())
      fm, fs_, _ = stats.mean_std(stats.per_seed(rows, v, "final_nll").values())
      fmt = lambda m, s: "-" if not np.isfinite(m) else (
          f"{m:.1f}" + ("" if not np.isfinite(s) else f" +- {s:.1f}"))
      lines.append(f"| {v} | {fm:.4f} +- {fs_:.4f} | {fmt(ms, ss)} | {fmt(mt, stt)} | "
                   f"{fmt(mt + t_extra, stt)} | {n_st}/{len(st)} |")
    sections.append(f"### {data}\n\n![curves](curves_{data}.png)\n\n" + "\n".join(lines))
    a = stats.per_seed(rows, data_v, "final_nll")
    for v in vs:
      if v == data_v:
        continue
      e = stats.effect(a, stats.per_seed(rows, v, "final_nll"))
      verdict = stats.verdict(e, "lower")
      t_extra = info.get(_teacher_of(v), {}).get("time", 0.0)
      st, ti = reach[v]
      t_mean = stats.mean_std(ti.values())[0]
      data_t = stats.mean_std(reach[data_v][1].values())[0]
      s_mean = stats.mean_std(st.values())[0]
      data_s = stats.mean_std(reach[data_v][0].values())[0]
      speed = (f" Steps to the threshold: {s_mean:.0f} vs {data_s:.0f} (data)."
               if np.isfinite(s_mean) else " It does not reach the threshold in every "
               "seed." if len(st) else "")
      pays = ("" if not t_extra else
              " It pays for its compute: " + ("yes" if np.isfinite(t_mean) and
                                               t_mean + t_extra < data_t else "no") +
              f" (student {t_mean:.1f} s + teacher {t_extra:.1f} s vs data target "
              f"{data_t:.1f} s to the threshold).")
      verdicts.append(f"**(b) {data}: {v.split('/')[1]} gives a lower final NLL than the "
                      f"data target at equal steps: {verdict}.** difference "
                      f"{e.as_text('nats/token')}.{speed}{pays}")
  setup = (f"Seeds {ctx.seeds}; budget x{ctx.budget}{' (quick)' if ctx.quick else ''}. "
           f"Corpus: the objectives study's kjv_tiny student (distribution form, KL) at "
           f"sequence length {SEQ_LEN}, {corpus_config(ctx).train.num_steps} steps of 8 "
           "sequences. Teachers of the same architecture: MLM (absorbing diffusion "
           "model used as p_1(x^i | x^-i), one masked pass per position) trained 4x "
           "the steps on 2x the batch (strong) or with the student's budget (weak); "
           "AR (causal) with the strong budget, its neighbour ratios by Top-4 exact "
           "re-scoring mixed half/half with data. Markov: the exact law of the chain "
           "(oracle) as p_1, alone and half/half with data. teacher_weight 1 = teacher "
           "target only.")
  return setup, sections, verdicts
