r"""Exact draws against float32 Gumbel-max: sample entropy and perplexity by step count.

  python -m experiments.benchmarks.draw_precision [--workdir=DIR --judge_workdir=JDIR] \
      [--steps=64,256,1024,4096] [--vocab=50257] [--zipf=1.0] [--out=FILE]
  python -m experiments.benchmarks.draw_precision --part=draws [--draw_vocabs=27,2048,50257]

Two models, each sampled with ``draw=exact`` and ``draw=gumbel32`` (the analytic sampler,
mask start, same seeds):

* **Zipf** (always): a denoiser whose clean-token law is Zipf's ``p(k) ~ k^-s`` over a
  GPT-2-sized vocabulary (V = 50,257), whatever the context, so the exact answers are
  known: the samples' cross-entropy under the law is ``H(p)`` and the fraction of
  tokens with ``p(k) < 1e-5`` is that tail's mass. In a ``steps``-step masked sampler a
  token is unmasked to ``k`` with probability about ``p(k) / steps`` per step, and
  float32 Gumbel-max never draws an outcome about 20 nats below the most likely one
  (staying masked), so at many steps the tail is cut off.
* **corpus** (with ``--workdir`` and ``--judge_workdir``): a trained model, its samples'
  unigram entropy and generative perplexity under the judge.

``--part=draws`` measures the draws themselves instead (no model):

* **precision of log U** per uniform bucket ``k`` (``U`` in ``[2^-(k+1), 2^-k)``): the
  largest error of the float32 ``log U`` that ``draws.log_uniform_from_bits`` returns,
  against float64 from the same words, as a relative error of ``U`` (the variate is on
  a 2^-23 relative grid, but float32 holds ``log U ~ -(k+1) log 2`` to its own ulp);
* **speed** of ``draws.categorical`` with ``draw=exact`` against ``gumbel32``
  (``jax.random.categorical``): one jitted call drawing once from each of ``rows``
  different laws ``[rows, V]``, best of ``--draw_repeats``, in ns per draw.

Prints a markdown table (and writes it to ``--out``).
"""

import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from tcsm_jax import processes, schedules
from tcsm_jax.sampling import draws, samplers

_WORKDIR = flags.DEFINE_string("workdir", "", "Trained diffusion model (corpus rows).")
_JUDGE = flags.DEFINE_string("judge_workdir", "", "Its judge.")
_STEPS = flags.DEFINE_list("steps", ["64", "256", "1024", "4096"], "Step counts.")
_VOCAB = flags.DEFINE_integer("vocab", 50257, "Zipf vocabulary size.")
_ZIPF = flags.DEFINE_float("zipf", 1.0, "Zipf exponent s.")
_ZIPF_SHAPE = flags.DEFINE_list("zipf_shape", ["4", "32"], "Zipf batch, length.")
_ZIPF_SEEDS = flags.DEFINE_integer("zipf_seeds", 2, "Zipf seeds per setting.")
_NUM = flags.DEFINE_integer("num_samples", 64, "Corpus samples per setting.")
_CORPUS_STEPS = flags.DEFINE_list("corpus_steps", [], "Corpus step counts (default: "
                                  "--steps).")
_OUT = flags.DEFINE_string("out", "", "Also write the table here.")
_PART = flags.DEFINE_enum("part", "samplers", ["samplers", "draws"], "samplers: the "
                          "Zipf and corpus tables; draws: log U precision and draw speed.")
_DRAW_VOCABS = flags.DEFINE_list("draw_vocabs", ["27", "2048", "50257"],
                                 "--part=draws: vocabulary sizes timed.")
_DRAW_ELEMENTS = flags.DEFINE_integer("draw_elements", 2 ** 23, "--part=draws: rows x V "
                                      "per timed call (rows = this // V).")
_DRAW_REPEATS = flags.DEFINE_integer("draw_repeats", 5, "--part=draws: timed calls.")
TAIL = 1e-5


def zipf_rows(steps_list):
  v, s = _VOCAB.value, _ZIPF.value
  logp = -s * np.log(np.arange(1, v + 1, dtype=np.float64))
  logp -= np.logaddexp.reduce(logp)
  p = np.exp(logp)
  h = float(-(p * logp).sum())
  tail_mass = float(p[p < TAIL].sum())
  proc, sched = processes.Absorbing(v), schedules.get("log_linear")
  logits = jnp.asarray(logp, jnp.float32)
  den = lambda x, sig: jnp.broadcast_to(logits, x.shape + (v,))
  b, length = (int(x) for x in _ZIPF_SHAPE.value)
  rows = []
  for steps in steps_list:
    for draw in ("exact", "gumbel32"):
      fn = jax.jit(lambda k: samplers.sample(k, den, proc, sched, (b, length),
                                             steps=steps, draw=draw)[0])
      fn = fn.lower(jax.random.PRNGKey(0)).compile()
      xs, t0 = [], time.time()
      for seed in range(_ZIPF_SEEDS.value):
        xs.append(np.asarray(fn(jax.random.PRNGKey(seed))))
      dt = time.time() - t0
      x = np.concatenate(xs).reshape(-1)
      ce = float(-logp[x].mean())
      se = float(logp[x].std() / math.sqrt(x.size))
      rows.append({"model": f"Zipf s={s:g}, V={v}", "steps": steps, "draw": draw,
                   "tokens": x.size, "cross_entropy": ce, "cross_entropy_se": se,
                   "exact_entropy": h, "tail_fraction": float((p[x] < TAIL).mean()),
                   "tail_mass": tail_mass, "seconds": dt})
      print(rows[-1], flush=True)
  return rows


def corpus_rows(steps_list):
  from experiments import common, generate
  run = common.load_run(_WORKDIR.value)
  jr = common.load_run(_JUDGE.value, flag="judge_workdir")
  judge = (jr.experiment.model, jr.params)
  length = run.experiment.config.data.seq_len
  rows = []
  for steps in steps_list:
    for draw in ("exact", "gumbel32"):
      opts = generate.options(run.experiment.config.get("sampling"), sampler="analytic",
                              steps=steps, draw=draw)
      x, info = generate.draw(run, _NUM.value, _NUM.value, length, opts, seed=0)
      rep = generate.record(x, opts, judge)
      rows.append({"model": "kjv_tiny (V=27)", "steps": steps, "draw": draw,
                   "samples": len(x), "gen_perplexity": rep["gen_perplexity"],
                   "unigram_entropy": rep["unigram_entropy"],
                   "seconds": info["seconds"]})
      print(rows[-1], flush=True)
  return rows


def table(zrows, crows):
  out = ["| model | steps | draw | tokens | cross-entropy under the law (nats) | "
         f"exact H(p) | fraction with p < {TAIL:g} | exact tail mass |",
         "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
  for r in zrows:
    out.append(f"| {r['model']} | {r['steps']} | {r['draw']} | {r['tokens']} | "
               f"{r['cross_entropy']:.3f} +- {r['cross_entropy_se']:.3f} | "
               f"{r['exact_entropy']:.3f} | {r['tail_fraction']:.4f} | {r['tail_mass']:.4f} |")
  if crows:
    out += ["", "| model | steps | draw | samples | gen PPL (judge) | unigram entropy |",
            "| --- | ---: | --- | ---: | ---: | ---: |"]
    for r in crows:
      out.append(f"| {r['model']} | {r['steps']} | {r['draw']} | {r['samples']} | "
                 f"{r['gen_perplexity']:.3f} | {r['unigram_entropy']:.4f} |")
  return "\n".join(out)


def precision_rows(buckets=(0, 1, 8, 22, 23, 40, 63, 64, 80, 100, 104, 105), n=1 << 16):
  """Largest relative error of ``U`` implied by float32 ``log U``, per bucket ``k``."""
  rng = np.random.default_rng(0)
  rows = []
  for k in buckets:
    mant = rng.integers(0, 1 << 23, n, dtype=np.uint64)
    mant[:2] = [0, (1 << 23) - 1]
    words = np.zeros((n, draws.WORDS), np.uint64)
    words[:, 0] = mant << np.uint64(9)
    if k < 9:                     # exponent bits: 9 low bits of word 0, then words 1..3
      words[:, 0] |= np.uint64(1 << (8 - k))
    elif k < 105:
      w, b = divmod(k - 9, 32)
      words[:, w + 1] = np.uint64(1 << (31 - b))
    # k = 105: every exponent bit zero (the last bucket).
    lu = np.asarray(draws.log_uniform_from_bits(jnp.asarray(words.astype(np.uint32))),
                    np.float64)
    m = mant.astype(np.float64)
    if k == 0:
      want = np.log1p(-(2.0 ** 23 - m - 0.5) * 2.0 ** -24)
    else:
      want = np.log1p((m + 0.5) * 2.0 ** -23) - (min(k, 105) + 1) * math.log(2.0)
    err = np.abs(lu - want).max()                 # |d log U| = relative error of U
    rows.append({"k": k, "log_u": float(want.mean()), "max_rel_err_u": float(err),
                 "ulp_log_u": float(np.spacing(np.float32(abs(want.mean()))))})
    print(rows[-1], flush=True)
  return rows


def speed_rows(vocabs, elements, repeats):
  """ns per draw of ``categorical`` (exact, gumbel32) from ``[rows, V]`` distinct laws."""
  out = []
  for v in vocabs:
    rows = max(1, elements // v)
    lp = jax.random.normal(jax.random.PRNGKey(v), (rows, v)) * 2.0
    row = {"V": v, "rows": rows}
    for draw in draws.DRAWS:
      fn = jax.jit(lambda k, l, d=draw: draws.categorical(k, l, d))
      jax.block_until_ready(fn(jax.random.PRNGKey(0), lp))
      best = float("inf")
      for i in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(jax.random.PRNGKey(i + 1), lp))
        best = min(best, time.perf_counter() - t0)
      row[draw] = best / rows * 1e9
    row["ratio"] = row["gumbel32"] / row["exact"]
    out.append(row)
    print(row, flush=True)
  return out


def draws_table(prows, srows):
  out = ["| bucket k | U in | mean log U | largest relative error of U (log2) | "
         "ulp of float32 log U (log2) |", "| ---: | --- | ---: | ---: | ---: |"]
  for r in prows:
    rng = f"[2^-{r['k'] + 1}, 2^-{r['k']})" if r["k"] < 105 else "[2^-106, 2^-105)"
    out.append(f"| {r['k']} | {rng} | {r['log_u']:.2f} | "
               f"{math.log2(r['max_rel_err_u']):.1f} | {math.log2(r['ulp_log_u']):.0f} |")
  out += ["", "| V | rows per call | exact (ns / draw) | gumbel32 (ns / draw) | "
          "gumbel32 / exact |", "| ---: | ---: | ---: | ---: | ---: |"]
  for r in srows:
    out.append(f"| {r['V']} | {r['rows']} | {r['exact']:.1f} | {r['gumbel32']:.1f} | "
               f"{r['ratio']:.2f} |")
  return "\n".join(out)


def main(_):
  from experiments import common
  if _PART.value == "draws":
    body = draws_table(precision_rows(), speed_rows(
        [int(v) for v in _DRAW_VOCABS.value], _DRAW_ELEMENTS.value, _DRAW_REPEATS.value))
    text = (common.provenance_line() + f" ({jax.devices()[0].platform}) with: `python -m "
            "experiments.benchmarks.draw_precision " + " ".join(sys.argv[1:]) + "`\n\n"
            + body)
    print(text)
    if _OUT.value:
      with open(_OUT.value, "w") as f:
        f.write(text + "\n")
    return
  steps = [int(s) for s in _STEPS.value]
  zrows = zipf_rows(steps)
  csteps = [int(s) for s in _CORPUS_STEPS.value] or steps
  crows = corpus_rows(csteps) if _WORKDIR.value and _JUDGE.value else []
  text = (common.provenance_line() + " with: `python -m "
          "experiments.benchmarks.draw_precision " + " ".join(sys.argv[1:]) + "`\n\n"
          + table(zrows, crows))
  print(text)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  app.run(main)
