r"""Effective sample size of the self-normalized importance weights of reward fine-tuning.

  python -m experiments.benchmarks.snis_ess --ref_workdir=REF --classifier_dir=CDIR \
      [--betas=1,0.3,0.1] [--batches=8,64,512,4096] [--num_chunks=8192]

``finetune.importance_weights=self_normalized`` reweights a batch of training chunks
(drawn from the data the reference was fitted to) by ``softmax_b(r(x_b) / beta)``
(``reward.snis_weights``). Its effective sample size ``(sum w)^2 / sum w^2`` decides
whether the fix of issue 15, part 1 can work: this prints, for each beta and batch (or
buffer) size B, the mean ESS over disjoint groups of B chunks and its fraction ``ESS / B``.
If the fraction falls like ``1 / B`` the weights rest on a handful of sequences whatever
B is, and no batch or resampling buffer drawn from the data can fix it.
"""

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments import common
from tcsm_jax.posttrain import classifier, reward
from tcsm_jax.training import log_setup

_REF = flags.DEFINE_string("ref_workdir", None, "The reference run (data, seq_len).")
_CLF = flags.DEFINE_string("classifier_dir", None, "The reward classifier's directory.")
_BETAS = flags.DEFINE_list("betas", ["1", "0.3", "0.1"], "Temperatures.")
_BATCHES = flags.DEFINE_list("batches", ["8", "64", "512", "4096"], "Group sizes B.")
_NUM = flags.DEFINE_integer("num_chunks", 8192, "Training chunks scored.")
flags.mark_flags_as_required(["ref_workdir", "classifier_dir"])


def main(_):
  log_setup.quiet_libraries()
  run = common.load_run(_REF.value, flag="ref_workdir")
  ds, length = run.experiment.dataset, run.config.data.seq_len
  model, params = classifier.load(_CLF.value, length, ds.vocab_size)
  n = min(_NUM.value, len(ds.train) // length)
  rng = np.random.default_rng(0)
  starts = rng.integers(0, len(ds.train) - length, n)
  chunks = np.stack([ds.train[s:s + length] for s in starts]).astype(np.int32)
  score = jax.jit(lambda x: model.apply({"params": params}, jax.nn.one_hot(x, ds.vocab_size)))
  r = np.concatenate([np.asarray(score(jnp.asarray(chunks[i:i + 512])))
                      for i in range(0, n, 512)]).astype(np.float64)
  print(f"{n} training chunks of {length} tokens; reward mean {r.mean():.3f}, std "
        f"{r.std():.3f}, max {r.max():.3f}")
  print(f"{'beta':>6}{'B':>7}{'mean ESS':>11}{'ESS / B':>10}{'groups':>8}")
  for beta in (float(b) for b in _BETAS.value):
    for b in (int(x) for x in _BATCHES.value):
      groups = [r[i:i + b] for i in range(0, n - b + 1, b)]
      if not groups:
        continue
      e = [float(reward.effective_sample_size(reward.snis_weights(jnp.asarray(g), beta)))
           for g in groups]
      print(f"{beta:>6g}{b:>7}{np.mean(e):>11.2f}{np.mean(e) / b:>10.4f}{len(groups):>8}")


if __name__ == "__main__":
  app.run(main)
