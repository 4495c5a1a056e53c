r"""Error of the Top-K and Taylor teacher concrete scores against the exact ones.

  python -m experiments.benchmarks.teacher_approx --teacher_workdir=JDIR \
      [--seq_len=32] [--num_sequences=8] [--top_k=1,4,8,16]

Exact neighbour log-ratios of the causal teacher (``seq_len * V`` evaluations per
sequence) on validation chunks, then for each approximation: KL(exact || approx)
between the per-position conditionals, exact mass on the kept neighbours, mean absolute
log-ratio error on them, and time per sequence.
"""

import time

import jax
import jax.numpy as jnp
from absl import app, flags

from experiments import common
from tcsm_jax import targets
from tcsm_jax.training import log_setup

_TEACHER = flags.DEFINE_string("teacher_workdir", None, "Causal teacher workdir.")
_LEN = flags.DEFINE_integer("seq_len", 32, "Sequence length.")
_NUM = flags.DEFINE_integer("num_sequences", 8, "Validation sequences.")
_KS = flags.DEFINE_list("top_k", ["1", "4", "8", "16"], "K values.")
flags.mark_flag_as_required("teacher_workdir")


def main(_):
  log_setup.quiet_libraries()
  run = common.load_or_exit(_TEACHER.value)
  exp = run.experiment
  if not exp.causal:
    raise SystemExit("error: --teacher_workdir must hold a causal model")
  n, length = _NUM.value, _LEN.value
  x = jnp.asarray(exp.dataset.validation[:n * length].reshape(n, length), jnp.int32)

  def timed(mode, k=8):
    # Parameters as an argument of the executable, not constants closed over (slow
    # compiles, a second copy in memory; NaN results seen on multi-device CPU hosts).
    fn = jax.jit(lambda params, xs: targets.ar_teacher(exp.model, params, mode, k)(xs))
    fn = fn.lower(run.params, x).compile()
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(run.params, x))
    return out, (time.perf_counter() - t0) / n

  ex, t_ex = timed("exact")
  print(f"teacher {_TEACHER.value} (step {run.step}); {n} sequences x {length} tokens, "
        f"V = {exp.dataset.vocab_size}")
  head = f"{'approximation':<16}{'KL nats':>10}{'mass kept':>11}{'MAE kept':>10}{'ms/seq':>9}"
  print(head)
  print("-" * len(head))
  print(f"{'exact':<16}{0.0:>10.4f}{1.0:>11.3f}{0.0:>10.4f}{1e3 * t_ex:>9.1f}")
  rows = [(f"top_k K={k}", *timed("top_k", int(k))) for k in _KS.value]
  rows.append(("taylor", *timed("taylor")))
  for name, approx, dt in rows:
    err = targets.approximation_error(ex, approx)
    print(f"{name:<16}{float(err['kl']):>10.4f}{float(err['mass_covered']):>11.3f}"
          f"{float(err['mae_kept']):>10.4f}{1e3 * dt:>9.1f}")


if __name__ == "__main__":
  app.run(main)
