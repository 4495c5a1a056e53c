r"""Distils an autoregressive teacher into a diffusion student with TCSM.

  python -m experiments.distill --config=experiments/configs/kjv_tiny.py \
      --workdir=DIR --teacher=JDIR|hf:DIR [--mode=taylor|top_k|top_k_tail|exact] \
      [--top_k=8] [--tail_samples=4] [--teacher_weight=1.0]

The student is trained with the teacher's clean-space concrete score as the TCSM
target (``loss.teacher_weight`` of it, the rest from data). Afterwards the NLL bound
on the validation split is printed; use experiments.compare_targets for a
side-by-side run against a data-only student. ``--teacher`` (alias
``--teacher_workdir``) is a causal run's workdir, which must have been trained on the
config's data, or ``hf:DIR``, a Hugging Face GPT-2 (BOS = ``<|endoftext|>``), whose
vocabulary must be the data's (same size and tokenizer file; else one error line). The
teacher is pinned like a fine-tuning reference
(``DIR/references.json``; a resume after it changed on disk is refused unless
``--config.train.allow_reference_change=true``). Exit status as experiments.train's
(130 Ctrl-C, 143 SIGTERM, both after a checkpoint).
"""

from absl import flags, logging
from ml_collections import config_flags

from experiments import cli, common
from tcsm_jax.models import gpt2
from tcsm_jax.training import distributed, log_setup, trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Student config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Student workdir.")
_TEACHER = flags.DEFINE_string("teacher", None, "Causal teacher: a training workdir, or "
                               "hf:DIR (a Hugging Face GPT-2 directory).")
flags.DEFINE_alias("teacher_workdir", "teacher")
_MODE = flags.DEFINE_enum("mode", "taylor", ["exact", "top_k", "top_k_tail", "taylor"],
                          "Teacher concrete score: exact, Top-K, Top-K plus an "
                          "importance-sampled tail (dense), or first-order Taylor.")
_TOP_K = flags.DEFINE_integer("top_k", 8, "K for --mode=top_k / top_k_tail (>= 1).")
_TAIL = flags.DEFINE_integer("tail_samples", 4, "Tail draws per position for "
                             "--mode=top_k_tail (>= 1).")
_WEIGHT = flags.DEFINE_float("teacher_weight", 1.0, "Weight of the teacher target, in "
                             "(0, 1].")
flags.mark_flags_as_required(["config", "workdir", "teacher"])


def main(_):
  common.at_least("top_k", _TOP_K.value, 1)
  common.at_least("tail_samples", _TAIL.value, 1)
  common.check_flag(0 < _WEIGHT.value <= 1, "--teacher_weight must be in (0, 1], got "
                    f"{_WEIGHT.value}")
  cfg = _CONFIG.value.copy_and_resolve_references()
  cfg.teacher.kind = "ar"
  cfg.teacher.workdir = _TEACHER.value
  cfg.teacher.mode = _MODE.value
  cfg.teacher.top_k = _TOP_K.value
  cfg.teacher.tail_samples = _TAIL.value
  cfg.loss.teacher_weight = _WEIGHT.value
  common.validate_config(cfg)
  common.require_output_dir(_WORKDIR.value, "workdir")
  if _TEACHER.value.startswith("hf:"):
    gpt2.resolve(_TEACHER.value, what="teacher")
  else:
    common.require_run_dir(_TEACHER.value, "teacher")
  log_setup.quiet_libraries()
  distributed.initialize()
  out = trainer.train_and_evaluate(cfg, _WORKDIR.value)
  cli.exit_if_stopped(out, _WORKDIR.value)     # Ctrl-C: 130; SIGTERM: 143
  logging.info("student NLL bound %.4f nats/token", out.get("eval/nll_bound", float("nan")))
  print(f"student NLL bound: {out.get('eval/nll_bound', float('nan')):.4f} nats/token")


if __name__ == "__main__":
  cli.run(main)
