r"""Reward or preference fine-tuning of a trained diffusion model with TCSM.

  python -m experiments.finetune --config=experiments/configs/kjv_reward.py \
      --workdir=DIR --config.finetune.ref_workdir=REF [--config.finetune.beta=0.3]

Trains the correction network against the frozen reference (resumable like any run),
then prints the mean reward of samples before (reference) and after fine-tuning. The
reference must have been trained on the config's data (dataset, vocabulary, tokenizer),
else one error line; its step and parameter fingerprint are recorded
(``DIR/references.json``, every checkpoint), and a resume after it was retrained in
place is refused unless ``--config.train.allow_reference_change=true`` (recorded).
Exit status as experiments.train's (130 Ctrl-C, 143 SIGTERM, both after a checkpoint).
"""

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from experiments import cli, common
from tcsm_jax import errors, sampling
from tcsm_jax.training import distributed, log_setup, trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Fine-tuning config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Fine-tuning workdir.")
_SAMPLES = flags.DEFINE_integer("num_samples", 32, "Samples for the reward report "
                                "(>= 1).")
_STEPS = flags.DEFINE_integer("sample_steps", 64, "Sampling steps for the report (>= 1).")
flags.mark_flags_as_required(["config", "workdir"])


def samples_and_reward(exp, params, reward_fn, num, steps, seed=0):
  """``(samples [num, L], mean reward)`` of ``exp`` with ``params``."""
  length = exp.config.data.seq_len
  x, _ = sampling.jit_sampler(exp.apply_fn, exp.process, exp.schedule, (num, length),
                              steps=steps)(params, jax.random.PRNGKey(seed))
  return np.asarray(x), float(np.mean(np.asarray(jax.jit(reward_fn)(x))))


def main(_):
  common.at_least("num_samples", _SAMPLES.value, 1)
  common.at_least("sample_steps", _STEPS.value, 1)
  cfg = _CONFIG.value
  if cfg.finetune.kind == "none":
    raise errors.ConfigError("config key 'finetune.kind' is 'none': set "
                             "--config.finetune.kind=reward or preference")
  common.validate_config(cfg)
  common.require_output_dir(_WORKDIR.value, "workdir")
  common.require_run_dir(cfg.finetune.ref_workdir, "config.finetune.ref_workdir")
  log_setup.quiet_libraries()
  distributed.initialize()
  with common.removed_if_left_empty(_WORKDIR.value):     # a refused run leaves nothing
    result = trainer.train_and_evaluate(cfg, _WORKDIR.value)
  cli.exit_if_stopped(result, _WORKDIR.value)
  run = common.load_run(_WORKDIR.value)
  exp = run.experiment
  _, before = samples_and_reward(exp.ref, exp.ref_params, exp.reward_fn, _SAMPLES.value,
                                 _STEPS.value)
  x, after = samples_and_reward(exp, run.params, exp.reward_fn, _SAMPLES.value,
                                _STEPS.value)
  print(f"mean reward of samples: reference {before:.4f} -> fine-tuned {after:.4f} "
        f"(beta {cfg.finetune.beta})")
  for t in exp.dataset.decode(x[:4]):
    print(t)


if __name__ == "__main__":
  cli.run(main)
