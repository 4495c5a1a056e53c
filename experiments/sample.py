r"""Draws samples from a trained diffusion model: prompts, infilling, long and guided
generation.

  python -m experiments.sample --workdir=DIR --num_samples=16 --steps=128 \
      [--sampler=analytic|euler|ancestral|remdm|first_hitting] [--draw=exact|gumbel32] \
      [--temperature=1] [--top_p=1] [--remask_schedule=cap --remask_eta=0.02] \
      [--prompt="in the beginning"] [--suffix="amen"] \
      [--template="and god said ____ there was light"] [--length=512 --overlap=16] \
      [--guide=token --guide_gamma=2 --guide_token_weights="aeiou=1"] \
      [--judge=JDIR|hf:DIR [--gen_ppl_convention=auto|project|mdlm|duo|remdm|sedd]]

Sampler options default to the run's ``config.sampling`` (``tcsm_jax/training/config.py``).
``--prompt`` clamps a prefix, ``--suffix`` the end, ``--template`` any positions (``_``
marks a position to generate; character-level data). ``--length`` above the model's
``data.seq_len`` generates semi-autoregressively in blocks of ``seq_len`` that overlap by
``--overlap`` tokens (a prompt may be longer than a block); with an end-of-document
token in the vocabulary, ``--stop_at_eos`` stops there. ``--guide`` tilts every step
toward a reward (``tcsm_jax/posttrain/guidance.py``): ``token`` (per-character weights,
exact) or ``classifier`` (the reward classifier of ``--guide_classifier_dir``, first
order). Text the tokenizer cannot encode unchanged is refused with the characters named,
unless ``--clean_prompt``. Writes ``DIR/samples/<sampler>_<steps>steps.txt`` and a JSON
report (generative perplexity with a judge, always with the samples' entropy and the
sampling settings); on a read-only workdir the results are printed and one line says
what could not be written.
"""

import json
import sys

import jax
import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from experiments import cli, common, generate
from tcsm_jax import errors, fs, sampling
from tcsm_jax.posttrain import finetune as finetune_lib
from tcsm_jax.posttrain import guidance
from tcsm_jax.training import log_setup

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config (default: the "
                                          "workdir's config.json).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir of the model.")
_NUM = flags.DEFINE_integer("num_samples", 8, "Number of samples (>= 1).")
_STEPS = flags.DEFINE_integer("steps", None, "Reverse steps (>= 1; default: the config's "
                              "sampling.steps).")
_SAMPLER = flags.DEFINE_enum("sampler", None, list(sampling.SAMPLERS),
                             "Sampler (default: the config's sampling.sampler).")
_DRAW = flags.DEFINE_enum("draw", None, list(sampling.draws.DRAWS),
                          "exact (default) or gumbel32 (float32 Gumbel-max, older numbers).")
_TEMP = flags.DEFINE_float("temperature", None, "Softmax temperature (> 0).")
_TOP_P = flags.DEFINE_float("top_p", None, "Nucleus mass, in (0, 1].")
_REMASK = flags.DEFINE_enum("remask_schedule", None, list(sampling.remask.REMASK_SCHEDULES),
                            "remdm: remasking schedule.")
_ETA = flags.DEFINE_float("remask_eta", None, "remdm: eta in [0, 1].")
_EVENTS = flags.DEFINE_integer("events_per_call", None, "first_hitting: unmasking events "
                               "per network call (1 = exact).")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Network compute "
                           "dtype for sampling (default: the config's model.dtype); "
                           "parameters stay float32, draws are exact in float32.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Samples per device batch (>= 1).")
_LEN = flags.DEFINE_integer("seq_len", 0, "Sample length (0 = the config's); may exceed "
                            "it (semi-autoregressive blocks).")
_LENGTH = flags.DEFINE_integer("length", 0, "Alias of --seq_len.")
_OVERLAP = flags.DEFINE_integer("overlap", -1, "Long generation: tokens each block "
                                "shares with the previous one (-1: seq_len // 4).")
_EOS = flags.DEFINE_bool("stop_at_eos", True, "Long generation: stop at the "
                         "end-of-document token where the vocabulary has one.")
_GUIDE = flags.DEFINE_enum("guide", "none", ["none", "token", "classifier"],
                           "Reward guidance at sampling time.")
_GAMMA = flags.DEFINE_float("guide_gamma", 1.0, "Guidance strength gamma (>= 0).")
_GUIDE_W = flags.DEFINE_string("guide_token_weights", "aeiou=1",
                               "--guide=token: 'chars=weight,chars=weight'.")
_GUIDE_DIR = flags.DEFINE_string("guide_classifier_dir", "", "--guide=classifier: the "
                                 "reward classifier's directory (trained if absent).")
_PROMPT = flags.DEFINE_string("prompt", "", "Prefix to clamp.")
_SUFFIX = flags.DEFINE_string("suffix", "", "Suffix to clamp.")
_TEMPLATE = flags.DEFINE_string("template", "", "Text with '_' holes (character data).")
_CLEAN = flags.DEFINE_bool("clean_prompt", False, "Apply the tokenizer's cleaning to "
                           "--prompt/--suffix/--template (printing what changed) "
                           "instead of refusing characters it cannot encode.")
_JUDGE, _CONV = common.define_judge_flags(" (--judge_workdir: alias).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.mark_flag_as_required("workdir")

def guidance_tilt(cfg, exp, workdir):
  """``log_tilt_fn`` of ``--guide`` (``None`` without guidance)."""
  if _GUIDE.value == "none":
    return None
  common.check_flag(_GAMMA.value >= 0, f"--guide_gamma must be >= 0, got {_GAMMA.value}")
  ft = cfg.copy_and_resolve_references()
  with ft.unlocked():
    ft.finetune.reward = _GUIDE.value
    ft.finetune.token_weights = _GUIDE_W.value
    ft.finetune.classifier_dir = _GUIDE_DIR.value
    ft.finetune.reward_mode = "taylor"
  _, deltas_fn = finetune_lib.make_reward(ft, exp.dataset, workdir)
  return guidance.reward_tilt(deltas_fn, _GAMMA.value, exp.process.mask_id)


def main(_):
  length_flag = _LENGTH.value or _LEN.value
  common.validate_sample_flags(_NUM.value, _STEPS.value or 1, _maybe(_TOP_P.value, 1.0),
                               _maybe(_TEMP.value, 1.0), _BATCH.value, length_flag)
  workdir = _WORKDIR.value
  common.require_run_dir(workdir, "workdir", config_given=_CONFIG.value is not None)
  common.check_judge_spec(_JUDGE.value)
  log_setup.quiet_libraries()
  cfg = common.load_config(workdir, _CONFIG.value)
  opts = generate.options(cfg.get("sampling"), sampler=_SAMPLER.value, steps=_STEPS.value,
                          draw=_DRAW.value, temperature=_TEMP.value, top_p=_TOP_P.value,
                          remask_schedule=_REMASK.value, remask_eta=_ETA.value,
                          events_per_call=_EVENTS.value)
  length = length_flag or cfg.data.seq_len
  overlap = cfg.data.seq_len // 4 if _OVERLAP.value < 0 else _OVERLAP.value
  if length > cfg.data.seq_len:
    common.check_flag(overlap < cfg.data.seq_len, f"--overlap {overlap} must be below "
                      f"the model's data.seq_len {cfg.data.seq_len}")
  cfg = common.with_model_dtype(cfg, _DTYPE.value)
  run = common.load_run(workdir, cfg)
  exp = run.experiment
  if exp.causal:
    raise errors.WorkdirError(f"--workdir {workdir!r} holds a causal model; "
                              "experiments.sample samples diffusion models")
  try:
    sampling.validate(exp.process, opts["sampler"], opts["steps"], opts["temperature"],
                      opts["top_p"], opts["draw"], opts["start"], opts["remask_schedule"],
                      opts["remask_eta"], opts["remask_t_on"], opts["remask_t_off"], 1e-5)
  except ValueError as e:
    raise errors.FlagError(str(e)) from None
  template, notes = common.build_template(
      exp.dataset.encode, exp.dataset.decode, length, prompt=_PROMPT.value,
      suffix=_SUFFIX.value, template=_TEMPLATE.value, clean=_CLEAN.value)
  for note in notes:
    print(f"note: {note}", file=sys.stderr)
  if template.max() >= exp.dataset.vocab_size:
    raise errors.FlagError(f"the prompt flags encode to token {int(template.max())}, "
                           f"outside the model's vocabulary of {exp.dataset.vocab_size}")
  # Samples longer than the judge's window are scored in windows (gen_ppl conventions).
  eos = getattr(exp.dataset, "eos_id", None) if _EOS.value else None
  b = min(_BATCH.value, _NUM.value)
  judge = common.load_judge(_JUDGE.value, exp.dataset, _CONV.value)
  if judge is not None:               # mdlm/duo retokenize per sampling batch, as MDLM
    judge = judge.bind(group_size=b)
  tilt = guidance_tilt(cfg, exp, workdir)

  from tqdm import tqdm
  win_steps = opts["steps"] if opts["sampler"] != "first_hitting" else 1
  bar = tqdm(total=None, unit="step", desc="sampling", disable=None)
  progress = lambda k: bar.update(1)
  samples, info = generate.draw(run, _NUM.value, b, length, opts, seed=_SEED.value,
                                template=template, overlap=overlap, eos_id=eos,
                                log_tilt_fn=tilt,
                                progress=progress if win_steps > 1 else None)
  bar.close()
  texts = exp.dataset.decode(samples)
  stem = fs.join(workdir, "samples", f"{opts['sampler']}_{opts['steps']}steps")
  for i, t in enumerate(texts):
    print(f"[{i}] {t}")
  rep = {"samples_per_sec": info["samples_per_sec"], "step": run.step, "length": length,
         "nfe_per_batch": info["nfe"], "dtype": cfg.model.dtype}
  if _GUIDE.value != "none":
    rep.update(guide=_GUIDE.value, guide_gamma=_GAMMA.value)
  n_ref = min(len(samples), len(exp.dataset.validation) // length)
  ref = exp.dataset.validation[:n_ref * length].reshape(-1, length) if n_ref else None
  rep.update(generate.record(samples, opts, judge, ref))
  path = common.write_report_or_warn(f"{stem}.txt", "\n".join(texts) + "\n")
  common.write_report_or_warn(f"{stem}.json", rep)
  print(json.dumps(rep, indent=2))
  if path:
    logging.info("wrote %s", path)
  common.finish_reports()


def _maybe(v, default):
  return default if v is None else v


if __name__ == "__main__":
  cli.run(main)
