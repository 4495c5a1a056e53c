r"""Exact draws against float32 Gumbel-max: sample entropy and perplexity by step count.

  python -m experiments.benchmarks.draw_precision [--workdir=DIR --judge_workdir=JDIR] \
      [--steps=64,256,1024,4096] [--vocab=50257] [--zipf=1.0] [--out=FILE]

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
from tcsm_jax.sampling import samplers

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


def main(_):
  steps = [int(s) for s in _STEPS.value]
  zrows = zipf_rows(steps)
  csteps = [int(s) for s in _CORPUS_STEPS.value] or steps
  crows = corpus_rows(csteps) if _WORKDIR.value and _JUDGE.value else []
  from experiments import common
  text = (common.provenance_line() + " with: `python -m "
          "experiments.benchmarks.draw_precision " + " ".join(sys.argv[1:]) + "`\n\n"
          + table(zrows, crows))
  print(text)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  app.run(main)
