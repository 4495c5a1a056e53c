r"""Draws samples from a trained diffusion model, with prompts and infilling.

  python -m experiments.sample --workdir=DIR --num_samples=16 --steps=128 \
      [--sampler=analytic|euler|ancestral] [--temperature=1] [--top_p=1] \
      [--prompt="in the beginning"] [--suffix="amen"] \
      [--template="and god said ____ there was light"] [--judge_workdir=JDIR]

``--prompt`` clamps a prefix, ``--suffix`` the end, ``--template`` any positions (``_``
marks a position to generate; character-level data). Writes the samples to
``DIR/samples/<sampler>_<steps>steps.txt`` and, with a judge, a JSON quality report.
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from experiments import cli, common
from tcsm_jax import quality, sampling
from tcsm_jax.training import log_setup

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config (default: the "
                                          "workdir's config.json).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir of the model.")
_NUM = flags.DEFINE_integer("num_samples", 8, "Number of samples.")
_STEPS = flags.DEFINE_integer("steps", 128, "Reverse steps.")
_SAMPLER = flags.DEFINE_enum("sampler", "analytic", list(sampling.SAMPLERS), "Sampler.")
_TEMP = flags.DEFINE_float("temperature", 1.0, "Softmax temperature.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus mass.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Samples per device batch.")
_LEN = flags.DEFINE_integer("seq_len", 0, "Sample length (0 = the config's).")
_PROMPT = flags.DEFINE_string("prompt", "", "Prefix to clamp.")
_SUFFIX = flags.DEFINE_string("suffix", "", "Suffix to clamp.")
_TEMPLATE = flags.DEFINE_string("template", "", "Text with '_' holes (character data).")
_JUDGE = flags.DEFINE_string("judge_workdir", "", "Causal judge's workdir.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.mark_flag_as_required("workdir")


def build_clamp(encode, length, num):
  """``(tokens, mask)`` of shape ``[num, length]`` from the prompt flags."""
  template = np.full(length, -1, np.int64)
  if _TEMPLATE.value:
    if encode is None:
      raise ValueError("--template needs a text dataset")
    chars = _TEMPLATE.value
    if len(chars) > length:
      raise ValueError(f"--template has {len(chars)} characters; samples have {length}")
    for i, ch in enumerate(chars):
      if ch != "_":
        ids = np.asarray(encode(ch))
        if len(ids) != 1:
          raise ValueError(f"--template character {ch!r} is not one token")
        template[i] = int(ids[0])
  if _PROMPT.value:
    ids = np.asarray(encode(_PROMPT.value))
    if len(ids) > length:
      raise ValueError(f"--prompt encodes to {len(ids)} tokens; samples have {length}")
    template[:len(ids)] = ids
  if _SUFFIX.value:
    ids = np.asarray(encode(_SUFFIX.value))
    if len(ids) > length:
      raise ValueError(f"--suffix encodes to {len(ids)} tokens; samples have {length}")
    template[length - len(ids):] = ids
  return sampling.clamp_from_template(np.tile(template[None], (num, 1)), 1 << 30)


def main(_):
  log_setup.quiet_libraries()
  run = common.load_or_exit(_WORKDIR.value, _CONFIG.value)
  cfg, exp = run.config, run.experiment
  if exp.causal:
    raise SystemExit("error: --workdir holds a causal model; sample.py samples "
                     "diffusion models")
  length = _LEN.value or cfg.data.seq_len
  if length > cfg.data.seq_len:
    raise SystemExit(f"error: --seq_len {length} exceeds the model's {cfg.data.seq_len}")
  b = min(_BATCH.value, _NUM.value)
  try:
    tokens, mask = build_clamp(exp.dataset.encode, length, b)
  except ValueError as e:
    raise SystemExit(f"error: {e}")
  if int(jnp.max(jnp.where(mask, tokens, 0))) >= exp.dataset.vocab_size:
    raise SystemExit("error: prompt token outside the vocabulary")

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
  odir = os.path.join(_WORKDIR.value, "samples")
  os.makedirs(odir, exist_ok=True)
  path = os.path.join(odir, f"{_SAMPLER.value}_{_STEPS.value}steps.txt")
  with open(path, "w") as f:
    f.write("\n".join(texts) + "\n")
  for i, t in enumerate(texts):
    print(f"[{i}] {t}")
  rep = {"samples_per_sec": len(samples) / dt, "step": run.step, "sampler": _SAMPLER.value,
         "steps": _STEPS.value}
  judge = None
  if _JUDGE.value:
    jr = common.load_or_exit(_JUDGE.value)
    judge = (jr.experiment.model, jr.params)
  ref = exp.dataset.validation[:len(samples) * length].reshape(-1, length)
  rep.update(quality.report(samples, judge, ref))
  with open(path.replace(".txt", ".json"), "w") as f:
    json.dump(rep, f, indent=2)
  print(json.dumps(rep, indent=2))
  logging.info("wrote %s", path)


if __name__ == "__main__":
  cli.run(main)
