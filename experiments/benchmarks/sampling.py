r"""Sample quality and speed against the number of sampling steps.

  python -m experiments.benchmarks.sampling --workdir=DIR --judge_workdir=JDIR \
      [--steps=8,16,32,64,128,256,512,1024] [--samplers=analytic,ancestral,euler] \
      [--num_samples=32] [--draw=exact|gumbel32]

For each sampler and step count: samples/s, network calls (NFE), the full-batch
equivalents of the rows they evaluated (the ancestral sampler's per-sequence cache runs
the network on the changed sequences only), seconds per network call, generative
perplexity under the judge and unigram entropy (the data's own values are printed
first). Writes ``DIR/sampling_benchmark.csv``. For speed alone, with random weights and
no workdir, see ``experiments.benchmarks.sampling_speed``.
"""

import csv
import io
import time

import jax
import numpy as np
from absl import app, flags

from experiments import common
from tcsm_jax import fs, quality, sampling
from tcsm_jax.processes import Absorbing
from tcsm_jax.training import log_setup

_WORKDIR = flags.DEFINE_string("workdir", None, "Diffusion model workdir.")
_JUDGE, _CONV = common.define_judge_flags(" (--judge_workdir: alias).")
_STEPS = flags.DEFINE_list("steps", ["8", "16", "32", "64", "128", "256", "512", "1024"],
                           "Step counts.")
_SAMPLERS = flags.DEFINE_list("samplers", ["analytic", "ancestral", "euler"], "Samplers.")
_NUM = flags.DEFINE_integer("num_samples", 32, "Samples per setting (one batch).")
_DRAW = flags.DEFINE_enum("draw", "exact", ["exact", "gumbel32"], "Categorical draws.")
flags.mark_flag_as_required("workdir")


def main(_):
  log_setup.quiet_libraries()
  run = common.load_or_exit(_WORKDIR.value)
  exp, cfg = run.experiment, run.config
  judge = common.load_judge(_JUDGE.value, exp.dataset, _CONV.value)
  length = cfg.data.seq_len
  ref = exp.dataset.validation[:_NUM.value * length].reshape(-1, length)
  data_q = quality.report(ref, judge)
  print(f"model {_WORKDIR.value} step {run.step}; {_NUM.value} samples of {length} tokens")
  print(f"data: gen PPL {data_q.get('gen_perplexity', float('nan')):.3f}, unigram "
        f"entropy {data_q['unigram_entropy']:.3f}")
  head = (f"{'sampler':<11}{'steps':>7}{'NFE':>7}{'rows':>8}{'samples/s':>11}"
          f"{'s/call':>9}{'gen PPL':>10}{'entropy':>9}")
  print(head)
  print("-" * len(head))
  rows = []
  for sampler in _SAMPLERS.value:
    if sampler in ("ancestral", "remdm", "first_hitting") and not isinstance(
        exp.process, Absorbing):
      continue
    for steps in map(int, _STEPS.value):
      jitted = sampling.jit_sampler(exp.apply_fn, exp.process, exp.schedule,
                                    (_NUM.value, length), steps=steps, sampler=sampler,
                                    draw=_DRAW.value)
      compiled = jitted.lower(run.params, jax.random.PRNGKey(0)).compile()
      fn = lambda k: compiled(run.params, k)
      t0 = time.perf_counter()
      x, info = fn(jax.random.PRNGKey(1))
      x = np.asarray(jax.block_until_ready(x))
      dt = time.perf_counter() - t0
      q = quality.report(x, judge)
      nfe = int(info["nfe"])
      row = dict(sampler=sampler, draw=_DRAW.value, steps=steps, nfe=nfe,
                 full_batch_calls=int(info.get("nfe_rows", nfe * _NUM.value)) / _NUM.value,
                 samples_per_sec=_NUM.value / dt, sec_per_call=dt / nfe,
                 gen_perplexity=q.get("gen_perplexity", float("nan")),
                 unigram_entropy=q["unigram_entropy"])
      rows.append(row)
      print(f"{sampler:<11}{steps:>7}{nfe:>7}{row['full_batch_calls']:>8.1f}"
            f"{row['samples_per_sec']:>11.2f}{row['sec_per_call']:>9.4f}"
            f"{row['gen_perplexity']:>10.3f}{row['unigram_entropy']:>9.3f}", flush=True)
  path = fs.join(_WORKDIR.value, "sampling_benchmark.csv")    # local or bucket workdir
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=list(rows[0]))
  w.writeheader()
  w.writerows(rows)
  fs.write_text_atomic(path, buf.getvalue())
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
