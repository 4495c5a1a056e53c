"""Study ``objectives``: TCSM (score and distribution forms x four Bregman divergences)
against the masked-diffusion ELBO (MD4/MDLM), SEDD (absorbing and uniform) and an AR
model of the same size, on the bundled corpus and on Markov data with a known law."""

from __future__ import annotations

import numpy as np

from experiments.configs import kjv_tiny
from experiments import common
from experiments.study import evals, report, stats
from experiments.study.context import Context, with_overrides
from experiments.study.runner import Run
from tcsm_jax.data import synthetic

NAME = "objectives"
TITLE = "Study: TCSM objectives against masked diffusion, SEDD and AR"
CLAIM = ("(a) TCSM pre-training from data matches or beats masked diffusion (MD4/MDLM) "
         "and SEDD in NLL bound. (e) The choice of Bregman divergence (KL, generalized "
         "KL, LSIF, Itakura-Saito) matters for stability and speed (the paper's own "
         "open question).")

_DIVS = {"kl": "kl", "gkl": "gkl", "lsif": "lsif", "is": "itakura_saito"}


def variants(quick: bool):
  v = {}
  for form, short in (("distribution", "dist"), ("score", "score")):
    for name, div in _DIVS.items():
      v[f"tcsm_{short}_{name}"] = {"loss.kind": "tcsm", "loss.form": form,
                                   "loss.divergence": div}
  v["masked_elbo"] = {"loss.kind": "masked_elbo"}
  v["sedd_absorbing"] = {"loss.kind": "sedd", "process": "absorbing"}
  v["sedd_uniform"] = {"loss.kind": "sedd", "process": "uniform"}
  v["ar"] = {"model.arch": "causal"}
  if quick:
    v = {k: v[k] for k in ("tcsm_score_gkl", "masked_elbo", "ar")}
  return v


def markov_only(quick: bool):
  """The unbounded score forms again, with a full-support target: the chain's exact law
  (teacher weight 1). Shows what makes the score form trainable (Markov data only)."""
  if quick:
    return {}
  return {f"tcsm_score_{n}_oracle": {"loss.kind": "tcsm", "loss.form": "score",
                                     "loss.divergence": _DIVS[n], "teacher.kind": "markov",
                                     "loss.teacher_weight": 1.0}
          for n in ("gkl", "lsif")}


def corpus_config(ctx: Context):
  c = kjv_tiny.get_config()
  ctx.schedule(c, ctx.steps(1500))
  c.train.eval_batches = 4 if ctx.quick else 16
  return c


def markov_config(ctx: Context):
  c = kjv_tiny.get_config()
  c.data.name = "markov"
  c.data.markov_vocab = 8
  c.data.seq_len = 16
  c.data.markov_tokens = 200_000
  c.model.width = 64
  c.model.num_heads = 4
  c.model.num_layers = 2
  c.model.cond_width = 64
  c.train.batch_size = 16
  c.optim.lr = 1e-3
  ctx.schedule(c, ctx.steps(2000))
  c.train.eval_batches = 4 if ctx.quick else 16
  return c


FINAL_BATCHES = {"corpus": 32, "markov": 32}


def plan(ctx: Context):
  runs = []
  chain = synthetic.chain_from_config(markov_config(ctx).data)
  nb = 2 if ctx.quick else None
  for data, base in (("corpus", corpus_config(ctx)), ("markov", markov_config(ctx))):
    chn = chain if data == "markov" else None
    num_b = nb or FINAL_BATCHES[data]

    def fin(run, wd, chn=chn, num_b=num_b):
      return evals.final_nll(common.load_run(wd), num_b, num_t=2 if ctx.quick else 8,
                             markov_chain=chn)

    extra = markov_only(ctx.quick) if data == "markov" else {}
    for name, ov in dict(variants(ctx.quick), **extra).items():
      for seed in ctx.seeds:
        cfg = with_overrides(base, dict(ov, seed=seed))
        runs.append(Run(f"{data}/{name}", seed, cfg, fin))
  return runs


def _at_equal_time(rows, variants_, t):
  """``{variant: {seed: NLL interpolated at training time t}}``."""
  out = {}
  for v in variants_:
    per = {}
    for seed in {r["seed"] for r in rows if r["variant"] == v}:
      pts = sorted((r for r in rows if r["variant"] == v and r["seed"] == seed),
                   key=lambda r: r["train_time_sec"])
      ts = np.array([r["train_time_sec"] for r in pts], float)
      ys = np.array([r["nll_bound"] for r in pts], float)
      if len(ts) and ts[0] <= t <= ts[-1]:
        per[seed] = float(np.interp(t, ts, ys))
    out[v] = per
  return out


def unstable(rows, variant: str, reference: float):
  """``(bad, n)``: seeds of ``variant`` stopped by the divergence guard or ending above
  1.5 x ``reference`` (the trainer's own divergence factor) in final NLL."""
  bad, n = 0, 0
  for r in rows:
    if r["variant"] != variant or not ("diverged" in r or "final_nll" in r):
      continue
    n += 1
    bad += int(r.get("diverged") == 1.0 or r.get("final_nll", 0.0) > 1.5 * reference)
  return bad, n


def report_(ctx: Context, rows, summary):
  names = list(variants(ctx.quick))
  sections, verdicts = [], []
  chain = synthetic.chain_from_config(markov_config(ctx).data)
  for data in ("corpus", "markov"):
    vs = [f"{data}/{n}" for n in names + (list(markov_only(ctx.quick))
                                          if data == "markov" else [])]
    metrics = ["final_nll", "final_nll_se", "train_time_sec"]
    if data == "markov":
      metrics = ["final_nll", "exact_nll", "gap", "gap_se", "train_time_sec"]
    exact = None
    if data == "markov":
      ex = [r["exact_nll"] for r in rows if r["variant"].startswith("markov/")
            and "exact_nll" in r]
      exact = float(np.mean(ex)) if ex else None
    report.plot_curves(ctx.outdir, f"curves_{data}", summary, vs,
                       f"objectives on {data}", hline=exact,
                       hline_label="chain's exact NLL of the evaluated tokens")
    # Equal wall-clock: every variant at the shortest mean training time of any.
    t_eq = min((np.mean([r["train_time_sec"] for r in rows if r["variant"] == v and
                         "final_nll" in r]) for v in vs), default=float("nan"))
    eq = _at_equal_time(rows, vs, t_eq)
    eq_lines = ["| variant | NLL at equal wall-clock |", "|---|---|"]
    for v in vs:
      m, s, n = stats.mean_std(eq[v].values())
      eq_lines.append(f"| {v} | {m:.4f} +- {s:.4f} (n={n}) |")
    # Gradient norms before clipping (optim.grad_clip): a variant whose norm sits far
    # above the clip learns with a smaller effective step.
    gn_lines = ["| variant | median grad norm (clip at 1.0) | max | non-finite |",
                "|---|---|---|---|"]
    for v in vs:
      g = ctx.logged(v, "grad_norm")
      if g.size:
        gn_lines.append(f"| {v} | {report.spread_cells(g)} |")
    head = (f"### {data}: final metrics (nats/token; final_nll = ELBO bound with "
            "stratified time samples, exact for ar; mean +- std over seeds)")
    if data == "markov":
      head += (f"\n\nMarkov chain V={chain.vocab}, order {chain.order}: entropy rate "
               f"{chain.entropy_rate():.4f}, 16-token chunk entropy "
               f"{chain.chunk_entropy(16) / 16:.4f} nats/token. `exact_nll` is the "
               "chain's NLL of the very validation tokens evaluated; `gap` = final_nll "
               "- exact_nll, with `gap_se` its standard error (paired per sequence).")
    sections.append(head + "\n\n" + report.final_table(rows, vs, metrics) +
                    f"\n\n![curves](curves_{data}.png)\n\n"
                    f"NLL bound (training eval) at equal training time t = {t_eq:.1f} s "
                    "(the shortest variant's):\n\n" + "\n".join(eq_lines) +
                    "\n\nGradient norm before clipping, at every logged step of every "
                    "seed:\n\n" + "\n".join(gn_lines))
    tcsm = [v for v in vs if v.split("/")[1].startswith("tcsm_")
            and not v.endswith("_oracle")]
    for base in ("masked_elbo", "sedd_absorbing"):
      if f"{data}/{base}" not in vs or not tcsm:
        continue
      a = stats.per_seed(rows, f"{data}/{base}", "final_nll")
      lines = [f"TCSM - {base}, final NLL (nats/token; 'matches' allows +0.01):", "",
               "| TCSM variant | difference | verdict |", "|---|---|---|"]
      by = {}
      ref_mean = stats.mean_std(a.values())[0]
      for v in tcsm:
        e = stats.effect(a, stats.per_seed(rows, v, "final_nll"))
        by[v] = stats.verdict(e, "lower", margin=0.01, claim="matches or beats")
        bad, n = unstable(rows, v, ref_mean)
        note = ""
        if bad and 2 * bad >= n:        # most seeds blew up: worse, whatever the rest do
          by[v] = "does not hold at this scale"
          note = f" ({bad}/{n} seeds diverged)"
        lines.append(f"| {v.split('/')[1]} | {e.as_text()} | {by[v]}{note} |")
      sections.append("\n".join(lines))
      groups = {k: [v.split("/")[1] for v in tcsm if by[v] == k]
                for k in ("holds", "does not hold at this scale", "inconclusive")}
      summary_ = "; ".join(f"{k}: {', '.join(g)}" for k, g in groups.items() if g)
      verdicts.append(f"**(a) {data}: each TCSM variant matches or beats {base}** "
                      f"({summary_}).")
    # (e) divergences: best vs worst divergence within each form.
    for form in ("dist", "score"):
      divs = [f"{data}/tcsm_{form}_{d}" for d in _DIVS if f"{data}/tcsm_{form}_{d}" in vs]
      if len(divs) < 2:
        continue
      ref_mean = stats.mean_std(stats.per_seed(rows, f"{data}/masked_elbo",
                                               "final_nll").values())[0]
      stab = {d: unstable(rows, d, ref_mean) for d in divs}
      stab_txt = ", ".join(f"{d.split('_')[-1]} {b}/{n}" for d, (b, n) in stab.items())
      stable = [d for d in divs if stab[d][0] == 0 and stab[d][1]]
      text = f"seeds diverged: {stab_txt}"
      matters = "inconclusive"
      if len(stable) < len(divs) and stable:
        matters = "holds"                 # some divergences train, others blow up
      if len(stable) >= 2:
        means = {d: stats.mean_std(stats.per_seed(rows, d, "final_nll").values())[0]
                 for d in stable}
        best, worst = min(means, key=means.get), max(means, key=means.get)
        # Best and worst are picked after the fact: Bonferroni over all pairs.
        pairs = len(stable) * (len(stable) - 1) // 2
        e = stats.effect(stats.per_seed(rows, best, "final_nll"),
                         stats.per_seed(rows, worst, "final_nll"), 1 - 0.05 / pairs)
        text += (f"; among the stable ones, worst ({worst.split('_')[-1]}) - best "
                 f"({best.split('_')[-1]}) final NLL = {e.as_text('nats/token')}")
        if np.isfinite(e.low) and e.low > 0:
          matters = "holds"
        elif matters != "holds" and np.isfinite(e.high) and e.high < 0.01:
          matters = "does not hold at this scale"
      verdicts.append(f"**(e) {data}, {form} form: the choice of divergence matters: "
                      f"{matters}** ({text}).")
  sections.append(
      "### Notes for reading the tables\n\n"
      "- On the absorbing process the TCSM distribution form with KL and the masked-"
      "diffusion ELBO (MD4/MDLM) are the same objective (tests/test_losses.py), so "
      "`tcsm_dist_kl` and `masked_elbo` agree to rounding; the comparison that tests "
      "claim (a) is every *other* TCSM variant against them.\n"
      "- With the data target the score-form gKL and Itakura-Saito objectives differ by "
      "a constant per position (Prop. 3's `V score_gKL = V score_IS`), so "
      "`tcsm_score_gkl` and `tcsm_score_is` train identically.\n"
      "- With the Monte Carlo data target (the clean token, one-hot), the score-form "
      "gKL, LSIF and Itakura-Saito objectives and the distribution-form Itakura-Saito "
      "objective are unbounded below: pushing the probability of tokens not seen in "
      "the batch toward 0 lowers them without limit, and the `1/p(x)` terms give "
      "heavy-tailed gradients when a low-probability token is seen "
      "(`tests/test_losses.py::test_which_data_target_objectives_are_bounded_below`, "
      "exact per-position values). The gradient-norm tables show it: norms of 1e4-1e9 "
      "before clipping, losses that turn negative, NLL that rises. KL in both forms "
      "and the distribution-form gKL and LSIF are bounded. This is the reason the "
      "score form with generalized KL trains badly from data; the fix is to give it a "
      "target with full support (a teacher, or the exact posterior as in the tests) "
      "or to train from data with KL or the distribution form. The `markov/*_oracle` "
      "rows test that fix: the same score forms with the chain's exact law as the "
      "target (teacher weight 1).")
  for v in [f"markov/{n}" for n in markov_only(ctx.quick)]:
    ref = stats.mean_std(stats.per_seed(rows, "markov/masked_elbo", "final_nll").values())[0]
    bad, n = unstable(rows, v, ref)
    m, s, k = stats.mean_std(stats.per_seed(rows, v, "final_nll").values())
    gap = stats.mean_std(stats.per_seed(rows, v, "gap").values())[0]
    verdicts.append(f"**(e) markov, {v.split('/')[1]}: the score form trains with a "
                    f"full-support target: {'holds' if n and not bad else 'does not hold at this scale' if bad else 'inconclusive'}** "
                    f"({bad}/{n} seeds diverged; final NLL {m:.4f} +- {s:.4f}, gap to the "
                    f"exact NLL {gap:.4f}).")
  setup = (f"Seeds {ctx.seeds}; budget x{ctx.budget}{' (quick)' if ctx.quick else ''}. "
           f"Corpus: bundled KJV, kjv_tiny model (3 x 128), batch 8 x 64 characters, "
           f"{corpus_config(ctx).train.num_steps} steps. Markov: V=8 order-1 chain, "
           f"2 x 64 model, batch 16 x 16, {markov_config(ctx).train.num_steps} steps. Every "
           "variant shares the optimizer (AdamW, lr of kjv_tiny; 1e-3 on Markov), EMA and "
           "data order per seed; the AR baseline is the same transformer, causal. "
           "Final NLL: the EMA parameters on the first validation sequences "
           "(32 batches), ELBO with 8 stratified time samples per sequence; its standard "
           "error is over sequences. Verdict intervals are paired over seeds.")
  return setup, sections, verdicts
