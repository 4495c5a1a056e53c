r"""Error of the Top-K, dense Top-K + sampled tail and Taylor teacher concrete scores
against the exact ones.

  python -m experiments.benchmarks.teacher_approx --teacher_workdir=JDIR \
      [--seq_len=32] [--num_sequences=8] [--top_k=1,4,8,16] [--tail=4:4,1:8]

Exact neighbour log-ratios of the causal teacher (``seq_len * V`` evaluations per
sequence) on validation chunks, then for each approximation: KL(exact || approx)
between the per-position conditionals, exact mass on the kept neighbours, mean absolute
log-ratio error on them, and time per sequence. ``--tail=K:M`` rows are the dense
estimator (``teacher.mode=top_k_tail``: Top-K exact, M importance-sampled tail tokens
per position; random, so its KL is the mean over ``--draws`` draws).
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
_TAIL = flags.DEFINE_list("tail", ["1:4", "4:4", "4:12"], "K:M of the dense estimator.")
_DRAWS = flags.DEFINE_integer("draws", 8, "Draws averaged for the dense estimator.")
flags.mark_flag_as_required("teacher_workdir")


def main(_):
  log_setup.quiet_libraries()
  run = common.load_or_exit(_TEACHER.value)
  exp = run.experiment
  if not exp.causal:
    raise SystemExit("error: --teacher_workdir must hold a causal model")
  n, length = _NUM.value, _LEN.value
  x = jnp.asarray(exp.dataset.validation[:n * length].reshape(n, length), jnp.int32)

  def timed(mode, k=8, m=4, draws=1):
    # Parameters as an argument of the executable, not constants closed over (slow
    # compiles, a second copy in memory; NaN results seen on multi-device CPU hosts).
    fn = jax.jit(lambda params, xs, kk: targets.ar_teacher(exp.model, params, mode, k, m)(
        xs, key=kk))
    fn = fn.lower(run.params, x, jax.random.PRNGKey(0)).compile()
    outs, best = [], float("inf")
    for d in range(draws):
      t0 = time.perf_counter()
      outs.append(jax.block_until_ready(fn(run.params, x, jax.random.PRNGKey(d))))
      best = min(best, (time.perf_counter() - t0) / n)
    return (outs[0] if draws == 1 else outs), best

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
  for spec in _TAIL.value:
    k, m = (int(p) for p in spec.split(":"))
    outs, dt = timed("top_k_tail", k, m, _DRAWS.value)
    errs = [targets.approximation_error(ex, approx) for approx in outs]
    kl = sum(float(e["kl"]) for e in errs) / len(errs)
    mae = sum(float(e["mae_kept"]) for e in errs) / len(errs)
    print(f"{f'tail K={k} M={m}':<16}{kl:>10.4f}{1.0:>11.3f}{mae:>10.4f}"
          f"{1e3 * dt:>9.1f}")


if __name__ == "__main__":
  app.run(main)
