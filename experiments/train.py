r"""Trains a TCSM discrete diffusion model.

  python -m experiments.train --config=experiments/configs/kjv_tiny.py \
      --workdir=workdirs/kjv_tiny [--config.train.num_steps=2000 ...]

Re-running with the same ``--workdir`` resumes from the newest good checkpoint. At the
end it prints a short summary: steps, time, the validation NLL bound, a few samples
and the next commands to run.

Exit status: 0 finished; 2 a user error (one line); 130 Ctrl-C and 143 SIGTERM, both
after saving a checkpoint (143 also for a SIGTERM before training started, with
nothing saved): a scheduler that sees 143 should requeue the same command, which
resumes (``launch/slurm.sbatch`` does).
"""

import time

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from experiments import cli, common
from tcsm_jax import sampling
from tcsm_jax.training import distributed, log_setup, restore, trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml-collections "
                                          "config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory (or bucket URL) for "
                               "checkpoints and metrics.")
_SUMMARY_SAMPLES = flags.DEFINE_integer("summary_samples", 3, "Samples printed at the "
                                        "end (0 = none).")
flags.mark_flags_as_required(["config", "workdir"])


def summary(workdir: str, result, seconds: float, num_samples: int) -> str:
  """A human summary of a finished run: numbers, samples, next commands."""
  lines = ["", f"== trained {workdir} =="]
  run = restore.load_run(workdir)
  exp, cfg = run.experiment, run.config
  lines.append(f"steps           {run.step} (this start: {seconds / 60:.1f} min wall)")
  nll = result.get("eval/nll_bound")
  if nll is not None:
    unit = "char" if exp.dataset.vocab_size == 27 else "token"
    what = "NLL (exact)" if exp.causal else "NLL bound"
    lines.append(f"{what:<16}{nll:.4f} nats/{unit} = {nll / np.log(2):.4f} "
                 f"bits/{unit} (validation, {cfg.train.eval_batches} batches)")
  if "tokens_per_sec" in result:
    lines.append(f"throughput      {result['tokens_per_sec']:.0f} tokens/s, "
                 f"{result['steps_per_sec']:.2f} steps/s")
  if num_samples and not exp.causal:
    x, _ = sampling.jit_sampler(exp.apply_fn, exp.process, exp.schedule,
                                (num_samples, cfg.data.seq_len), steps=128)(
                                    run.params, jax.random.PRNGKey(0))
    lines.append("samples (analytic sampler, 128 steps):")
    for t in exp.dataset.decode(np.asarray(x)):
      lines.append(f"  > {t}")
  lines.append("next:")
  if not exp.causal:
    lines.append(f"  python -m experiments.sample   --workdir={workdir} --num_samples=8 "
                 "--steps=128 [--prompt=\"in the beginning\"]")
  lines += [f"  python -m experiments.evaluate --workdir={workdir}",
            f"  tensorboard --logdir={workdir}/tensorboard"]
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.at_least("summary_samples", _SUMMARY_SAMPLES.value, 0)
  common.require_output_dir(_WORKDIR.value, "workdir")
  log_setup.quiet_libraries()
  distributed.initialize()
  t0 = time.time()
  with common.removed_if_left_empty(_WORKDIR.value):     # a refused run leaves nothing
    result = trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  logging.debug("done: %s", result)
  cli.exit_if_stopped(result, _WORKDIR.value)    # Ctrl-C: 130; SIGTERM: 143
  if jax.process_count() == 1:   # the summary restores on this host's devices only
    print(summary(_WORKDIR.value, result, time.time() - t0, _SUMMARY_SAMPLES.value))


if __name__ == "__main__":
  cli.run(main)
