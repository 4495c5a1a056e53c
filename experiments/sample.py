r"""Draws samples from a trained diffusion model, with prompts and infilling.

  python -m experiments.sample --workdir=DIR --num_samples=16 --steps=128 \
      [--sampler=analytic|euler|ancestral] [--temperature=1] [--top_p=1] \
      [--prompt="in the beginning"] [--suffix="amen"] \
      [--template="and god said ____ there was light"] [--judge_workdir=JDIR]

``--prompt`` clamps a prefix, ``--suffix`` the end, ``--template`` any positions (``_``
marks a position to generate; character-level data). Text the tokenizer cannot encode
unchanged (e.g. characters outside the text8 alphabet, upper case) is refused with the
characters named, unless ``--clean_prompt`` (then one line states what was changed).
Writes the samples to ``DIR/samples/<sampler>_<steps>steps.txt`` and a JSON report
(with a judge, generative perplexity).
"""

import json
import sys
import time

import jax
import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from experiments import cli, common
from tcsm_jax import errors, fs, quality, sampling
from tcsm_jax.training import log_setup

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config (default: the "
                                          "workdir's config.json).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir of the model.")
_NUM = flags.DEFINE_integer("num_samples", 8, "Number of samples (>= 1).")
_STEPS = flags.DEFINE_integer("steps", 128, "Reverse steps (>= 1).")
_SAMPLER = flags.DEFINE_enum("sampler", "analytic", list(sampling.SAMPLERS), "Sampler.")
_TEMP = flags.DEFINE_float("temperature", 1.0, "Softmax temperature (> 0).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus mass, in (0, 1].")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Samples per device batch (>= 1).")
_LEN = flags.DEFINE_integer("seq_len", 0, "Sample length (0 = the config's).")
_PROMPT = flags.DEFINE_string("prompt", "", "Prefix to clamp.")
_SUFFIX = flags.DEFINE_string("suffix", "", "Suffix to clamp.")
_TEMPLATE = flags.DEFINE_string("template", "", "Text with '_' holes (character data).")
_CLEAN = flags.DEFINE_bool("clean_prompt", False, "Apply the tokenizer's cleaning to "
                           "--prompt/--suffix/--template (printing what changed) "
                           "instead of refusing characters it cannot encode.")
_JUDGE = flags.DEFINE_string("judge_workdir", "", "Causal judge's workdir.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.mark_flag_as_required("workdir")

def main(_):
  common.validate_sample_flags(_NUM.value, _STEPS.value, _TOP_P.value, _TEMP.value,
                               _BATCH.value, _LEN.value)
  workdir = _WORKDIR.value
  common.require_run_dir(workdir, "workdir", config_given=_CONFIG.value is not None)
  if _JUDGE.value:
    common.require_run_dir(_JUDGE.value, "judge_workdir")
  log_setup.quiet_libraries()
  cfg = common.load_config(workdir, _CONFIG.value)
  length = _LEN.value or cfg.data.seq_len
  common.check_flag(length <= cfg.data.seq_len, f"--seq_len {length} exceeds the "
                    f"model's data.seq_len {cfg.data.seq_len}")
  run = common.load_run(workdir, cfg)
  exp = run.experiment
  if exp.causal:
    raise errors.WorkdirError(f"--workdir {workdir!r} holds a causal model; "
                              "experiments.sample samples diffusion models")
  template, notes = common.build_template(
      exp.dataset.encode, exp.dataset.decode, length, prompt=_PROMPT.value,
      suffix=_SUFFIX.value, template=_TEMPLATE.value, clean=_CLEAN.value)
  for note in notes:
    print(f"note: {note}", file=sys.stderr)
  if template.max() >= exp.dataset.vocab_size:
    raise errors.FlagError(f"the prompt flags encode to token {int(template.max())}, "
                           f"outside the model's vocabulary of {exp.dataset.vocab_size}")
  b = min(_BATCH.value, _NUM.value)
  tokens, mask = sampling.clamp_from_template(np.tile(template[None], (b, 1)),
                                              exp.dataset.vocab_size)

  from tqdm import tqdm
  bar = tqdm(total=_NUM.value * _STEPS.value, unit="step", desc="sampling",
             disable=None)
  progress = lambda k: bar.update(b)
  jitted = sampling.jit_sampler(
      exp.apply_fn, exp.process, exp.schedule, (b, length), steps=_STEPS.value,
      sampler=_SAMPLER.value, temperature=_TEMP.value, top_p=_TOP_P.value,
      clamp_tokens=tokens, clamp_mask=mask, progress=progress)
  fn = lambda k: jitted(run.params, k)
  out, t0 = [], time.time()
  for i in range(0, _NUM.value, b):
    x, info = fn(jax.random.fold_in(jax.random.PRNGKey(_SEED.value), i))
    out.append(np.asarray(x))
  bar.close()
  samples = np.concatenate(out)[:_NUM.value]
  dt = time.time() - t0
  texts = exp.dataset.decode(samples)
  stem = fs.join(workdir, "samples", f"{_SAMPLER.value}_{_STEPS.value}steps")
  path = common.write_text(f"{stem}.txt", "\n".join(texts) + "\n")
  for i, t in enumerate(texts):
    print(f"[{i}] {t}")
  rep = {"samples_per_sec": len(samples) / dt, "step": run.step, "sampler": _SAMPLER.value,
         "steps": _STEPS.value}
  judge = None
  if _JUDGE.value:
    jr = common.load_run(_JUDGE.value, flag="judge_workdir")
    judge = (jr.experiment.model, jr.params)
  ref = exp.dataset.validation[:len(samples) * length].reshape(-1, length)
  rep.update(quality.report(samples, judge, ref))
  common.write_json(f"{stem}.json", rep)
  print(json.dumps(rep, indent=2))
  logging.info("wrote %s", path)


if __name__ == "__main__":
  cli.run(main)
