r"""Cost of the 2-Hamming (pair-block) score form against the 1-Hamming one.

  python -m experiments.benchmarks.hamming_cost [--vocab=8,32] [--lengths=16,64] \
      [--batch=16] [--pairs=0,16] [--repeats=5]

For each vocabulary ``V`` and length ``L``: the loss and its gradient with respect to
the logits (the part of a training step that changes with k; the network is the same),
for k = 1 and for k = 2 with all ``L (L - 1) / 2`` pairs or ``--pairs`` drawn pairs,
with the data (Monte Carlo) target and with an exact target from a Markov chain's
sequence log-probability (``targets.pair_exact``: ``P V^2`` sequence evaluations per
sequence). Prints the best-of-repeats time per call, the ratio to k = 1, and the bytes
of the largest pair-block array ``[batch, P, V, V]`` (float32).
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from tcsm_jax import hamming, losses, processes, targets
from tcsm_jax.data import synthetic
from tcsm_jax.training import log_setup

_VOCAB = flags.DEFINE_list("vocab", ["8", "32"], "Vocabulary sizes.")
_LENGTHS = flags.DEFINE_list("lengths", ["16", "64"], "Sequence lengths.")
_BATCH = flags.DEFINE_integer("batch", 16, "Sequences per call.")
_PAIRS = flags.DEFINE_list("pairs", ["0", "16"], "Pairs per call (0 = all).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls (best is reported).")


def _time(fn, *args):
  jax.block_until_ready(fn(*args))                 # compile + warm up
  best = float("inf")
  for _ in range(_REPEATS.value):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return best


def rows_for(v: int, length: int, batch: int, pair_counts):
  """``[(k, pairs, target, seconds, block_bytes)]`` for one ``(V, L)``."""
  chain = synthetic.MarkovChain.random(v, 1, 0.5, seed=0)
  lp_fn = synthetic.jax_log_prob_fn(chain)
  proc = processes.Absorbing(v)
  x0 = jnp.asarray(chain.sample(batch * length, seed=1).reshape(batch, length))
  sig = jnp.linspace(0.2, 3.0, batch)
  x_t = proc.sample_forward(jax.random.PRNGKey(0), x0, sig)
  logits = jax.random.normal(jax.random.PRNGKey(1), (batch, length, v))
  out = []
  for tgt in ("data", "exact"):
    def k1(lg, tgt=tgt):
      cond = targets.ar_exact(lp_fn, x0, v) if tgt == "exact" else None
      return jnp.sum(losses.tcsm_loss(lg, x0, x_t, sig, proc, form="score",
                                      divergence="gkl" if cond is not None else "kl",
                                      target_log_cond=cond))
    t1 = _time(jax.jit(jax.value_and_grad(k1)), logits)
    out.append((1, "-", tgt, t1, 0))
    for num in pair_counts:
      pairs = (hamming.all_pairs(length) if num == 0 else
               hamming.sample_pairs(jax.random.PRNGKey(2), length, num))

      def k2(lg, pairs=pairs, tgt=tgt):
        pt = targets.pair_exact(lp_fn, x0, v, pairs) if tgt == "exact" else None
        return jnp.sum(hamming.pair_tcsm_loss(
            lg, x0, x_t, sig, proc, pairs, divergence="gkl" if pt is not None else "kl",
            target_pair_log_ratios=pt))
      t2 = _time(jax.jit(jax.value_and_grad(k2)), logits)
      out.append((2, str(pairs.shape[0]), tgt, t2, batch * pairs.shape[0] * v * v * 4))
  return out


def main(_):
  log_setup.quiet_libraries()
  dev = jax.devices()[0]
  print(f"device: {dev.platform} ({dev.device_kind}); batch {_BATCH.value}; best of "
        f"{_REPEATS.value}; loss + gradient w.r.t. the logits")
  print(f"{'V':>4}{'L':>5}{'target':>8}{'k':>3}{'pairs':>7}{'ms/call':>10}"
        f"{'x k=1':>8}{'block MiB':>11}")
  for v in (int(a) for a in _VOCAB.value):
    for length in (int(a) for a in _LENGTHS.value):
      rows = rows_for(v, length, _BATCH.value, [int(p) for p in _PAIRS.value])
      base = {tgt: s for k, _, tgt, s, _ in rows if k == 1}
      for k, pairs, tgt, sec, nbytes in rows:
        print(f"{v:>4}{length:>5}{tgt:>8}{k:>3}{pairs:>7}{1e3 * sec:>10.2f}"
              f"{sec / base[tgt]:>8.1f}{nbytes / 2**20:>11.2f}")


if __name__ == "__main__":
  app.run(main)
