r"""Trains a TCSM discrete diffusion model.

  python -m experiments.train --config=experiments/configs/kjv_tiny.py \
      --workdir=workdirs/kjv_tiny [--config.train.num_steps=2000 ...]

Re-running with the same ``--workdir`` resumes from the newest checkpoint.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import cli
from tcsm_jax.training import distributed, log_setup, trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml-collections "
                                          "config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  log_setup.quiet_libraries()
  distributed.initialize()
  result = trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  logging.info("done: %s", result)


if __name__ == "__main__":
  cli.run(main)
