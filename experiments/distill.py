r"""Distils an autoregressive teacher into a diffusion student with TCSM, or a
diffusion model into fewer steps (``--self``).

  python -m experiments.distill --config=experiments/configs/kjv_tiny.py \
      --workdir=DIR --teacher=JDIR|hf:DIR [--mode=taylor|top_k|top_k_tail|exact] \
      [--top_k=8] [--tail_samples=4] [--teacher_weight=1.0]
  python -m experiments.distill --self --teacher_workdir=TDIR --workdir=DIR \
      --rounds=5 [--teacher_steps=256] [--round_train_steps=N] [--divergence=kl] \
      [--config=...]

``--self`` (``tcsm_jax/posttrain/self_distill.py``): round ``r`` trains
``DIR/round_r``, an ordinary workdir whose model does in one step what its teacher
(``TDIR`` for round 1, ``DIR/round_{r-1}`` after) does in two: the teacher samples with
``teacher_steps / 2^(r-1)`` steps, the student with ``teacher_steps / 2^r`` (its
``sampling.steps``). Training settings come from ``--config`` (default: the teacher's
``config.json``), with ``--round_train_steps`` steps per round (default its
``train.num_steps``) and the TCSM divergence ``--divergence`` (``kl``: unbiased for
this target). Re-running resumes: finished rounds are kept, an unfinished one
continues. ``DIR/rounds.json`` lists the rounds.

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
from tcsm_jax import divergences, fs
from tcsm_jax.posttrain import self_distill
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
_SELF = flags.DEFINE_bool("self", False, "Self-distillation into fewer steps (rounds).")
_ROUNDS = flags.DEFINE_integer("rounds", 1, "--self: rounds, each halving the steps.")
_TSTEPS = flags.DEFINE_integer("teacher_steps", 256, "--self: the first teacher's "
                               "sampling steps (divisible by 2^rounds).")
_RSTEPS = flags.DEFINE_integer("round_train_steps", 0, "--self: training steps per "
                               "round (0: the config's train.num_steps).")
_DIV = flags.DEFINE_string("divergence", "kl", "--self: the TCSM divergence.")
flags.mark_flags_as_required(["workdir", "teacher"])


def self_main():
  common.at_least("rounds", _ROUNDS.value, 1)
  common.at_least("round_train_steps", _RSTEPS.value, 0)
  n, r = _TSTEPS.value, _ROUNDS.value
  common.check_flag(n >= 2 ** r and n % 2 ** r == 0, f"--teacher_steps {n} must be "
                    f"a multiple of 2^rounds = {2 ** r}")
  common.check_flag(_DIV.value in divergences.DIVERGENCES, f"--divergence: unknown "
                    f"{_DIV.value!r}; choose one of {sorted(divergences.DIVERGENCES)}")
  common.require_run_dir(_TEACHER.value, "teacher_workdir")
  common.require_output_dir(_WORKDIR.value, "workdir")
  base = (_CONFIG.value if _CONFIG.value is not None
          else common.load_config(_TEACHER.value, flag="teacher_workdir"))
  common.validate_config(self_distill.round_config(base, _TEACHER.value, n // 2,
                                                   _RSTEPS.value, _DIV.value))
  log_setup.quiet_libraries()
  distributed.initialize()
  teacher, rows = _TEACHER.value, []
  for i in range(1, r + 1):
    wd = fs.join(_WORKDIR.value, f"round_{i}")
    cfg = self_distill.round_config(base, str(teacher), n // 2 ** i, _RSTEPS.value,
                                    _DIV.value)
    print(f"round {i}: {teacher} ({n // 2 ** (i - 1)} steps) -> {wd} "
          f"({n // 2 ** i} steps)", flush=True)
    out = trainer.train_and_evaluate(cfg, str(wd))
    cli.exit_if_stopped(out, str(wd))
    rows.append({"round": i, "workdir": str(wd), "teacher": str(teacher),
                 "teacher_steps": n // 2 ** (i - 1), "steps": n // 2 ** i,
                 "nll_bound": out.get("eval/nll_bound")})
    common.write_json(f"{_WORKDIR.value}/rounds.json", {**common.provenance(),
                                                       "rounds": rows})
    teacher = wd
  print(f"self-distilled {r} round(s): {n} -> {n // 2 ** r} steps in {_WORKDIR.value}")


def main(_):
  if _SELF.value:
    return self_main()
  common.check_flag(_CONFIG.value is not None, "--config is required (or --self)")
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
  with common.removed_if_left_empty(_WORKDIR.value):     # a refused run leaves nothing
    out = trainer.train_and_evaluate(cfg, _WORKDIR.value)
  cli.exit_if_stopped(out, _WORKDIR.value)     # Ctrl-C: 130; SIGTERM: 143
  logging.info("student NLL bound %.4f nats/token", out.get("eval/nll_bound", float("nan")))
  print(f"student NLL bound: {out.get('eval/nll_bound', float('nan')):.4f} nats/token")


if __name__ == "__main__":
  cli.run(main)
