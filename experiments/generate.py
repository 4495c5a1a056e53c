"""Drawing samples from a loaded run, for the binaries (sample, frontier, studies).

``options(config.sampling, **overrides)`` turns the config's ``sampling`` section into
``tcsm_jax.sampling.sample`` keyword arguments; ``draw(run, ...)`` draws ``num``
samples of any length (past ``data.seq_len`` by semi-autoregressive blocks) with prompts
and guidance; ``record(...)`` is what every file holding a generative perplexity holds:
the entropy of the same samples, the sampler, the draw, the steps, the temperature and
top-p.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Callable, Dict, Optional

import jax
import numpy as np

from tcsm_jax import quality, sampling, strict_json

SAMPLE_KEYS = ("sampler", "steps", "draw", "start", "temperature", "top_p",
               "remask_schedule", "remask_eta", "remask_t_on", "remask_t_off",
               "remask_alpha_on", "events_per_call", "unmask_per_call", "eb_gamma",
               "confidence_tau", "t_end", "final_denoise")
REPORT_KEYS = ("sampler", "steps", "draw", "temperature", "top_p")


def options(sampling_config=None, **overrides) -> Dict[str, Any]:
  """``sample`` keyword arguments from ``config.sampling`` (a ConfigDict or dict) and
  overrides (``None`` values are ignored)."""
  base = {"sampler": "analytic", "steps": 128, "draw": "exact", "start": "mask",
          "temperature": 1.0, "top_p": 1.0, "remask_schedule": "cap", "remask_eta": 0.0,
          "remask_t_on": 0.55, "remask_t_off": 0.05, "remask_alpha_on": 0.9,
          "events_per_call": 1, "unmask_per_call": 1, "eb_gamma": 0.1,
          "confidence_tau": 0.9, "t_end": 1e-5, "final_denoise": True}
  if sampling_config is not None:
    given = dict(sampling_config.items()) if hasattr(sampling_config, "items") else {}
    base.update({k: given[k] for k in SAMPLE_KEYS if k in given})
  base.update({k: v for k, v in overrides.items() if v is not None})
  unknown = set(base) - set(SAMPLE_KEYS)
  if unknown:
    raise ValueError(f"unknown sampling options {sorted(unknown)}")
  return base


def describe(opts: Dict[str, Any]) -> Dict[str, Any]:
  """The sampling settings a report names next to its numbers."""
  out = {k: opts[k] for k in REPORT_KEYS}
  if opts["sampler"] == "remdm":
    out.update(remask_schedule=opts["remask_schedule"], remask_eta=opts["remask_eta"])
    if opts["remask_schedule"] == "loop":
      out.update({k: opts[k] for k in ("remask_t_on", "remask_t_off", "remask_alpha_on")})
  if opts["sampler"] == "first_hitting":
    out["events_per_call"] = opts["events_per_call"]
  adaptive = {"confidence": "unmask_per_call", "entropy_bound": "eb_gamma",
              "confidence_threshold": "confidence_tau"}.get(opts["sampler"])
  if adaptive:
    out[adaptive] = opts[adaptive]
  return out


def report_name(settings: Dict[str, Any]) -> str:
  """``<sampler>_<steps>steps_<hash>``: the file stem of a sample report. ``settings``
  holds every setting that changes the samples (at least ``sampler`` and ``steps``);
  ``<hash>`` is 8 hex digits of the sha256 of their sorted strict JSON, so two runs
  share a name only when they draw the same samples."""
  digest = hashlib.sha256(strict_json.dumps(settings, sort_keys=True).encode())
  return f"{settings['sampler']}_{settings['steps']}steps_{digest.hexdigest()[:8]}"


def draw(run, num: int, batch: int, length: int, opts: Dict[str, Any], seed: int = 0,
         template: Optional[np.ndarray] = None, overlap: Optional[int] = None,
         eos_id: Optional[int] = None, log_tilt_fn: Optional[Callable] = None,
         progress: Optional[Callable] = None):
  """``(samples [num, length] int32, info)`` from a loaded run.

  ``template [length]``: token ids to clamp, ``-1`` where free. Lengths above the run's
  ``data.seq_len`` are generated in blocks of ``seq_len`` overlapping by ``overlap``
  tokens (default ``seq_len // 4``), stopping at ``eos_id`` when every row has one.
  ``info``: ``seconds``, ``samples_per_sec`` (after compilation), ``nfe`` (network calls per batch),
  ``blocks`` (per batch, long generation).
  """
  exp = run.experiment
  block = exp.config.data.seq_len
  b = min(batch, num)
  kw = dict(opts)
  steps = kw.pop("steps")
  win = min(length, block)
  fn = sampling.jit_clamped_sampler(exp.apply_fn, exp.process, exp.schedule, (b, win),
                                    steps=steps, log_tilt_fn=log_tilt_fn,
                                    progress=progress, **kw)
  tmpl = np.full((length,), -1, np.int32) if template is None else np.asarray(template)
  tokens, mask = sampling.clamp_from_template(np.tile(tmpl[None], (b, 1)),
                                              exp.dataset.vocab_size)
  tokens, mask = np.asarray(tokens), np.asarray(mask)
  # Compile before the clock starts: samples/s is the sampler's, not XLA's. The
  # sampler sees one window ``[b, win]``; long generation hands it window slices.
  fn = fn.lower(run.params, jax.random.PRNGKey(0), tokens[:, :win],
                mask[:, :win]).compile()
  out, nfe, blocks, t0 = [], 0, 0, time.time()
  for i in range(0, num, b):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
    if length <= block:
      x, info = fn(run.params, key, tokens, mask)
      nfe = int(info["nfe"])
    else:
      calls = []

      def block_fn(k, t, m):
        x, info = fn(run.params, k, t, m)
        calls.append(int(info["nfe"]))
        return x

      ov = block // 4 if overlap is None else overlap
      x, info = sampling.long.generate(key, block_fn, b, length, block, ov, tokens, mask,
                                       eos_id=eos_id)
      nfe, blocks = sum(calls), info["blocks"]
    out.append(np.asarray(x))
  samples = np.concatenate(out)[:num]
  dt = time.time() - t0
  return samples, {"seconds": dt, "samples_per_sec": len(samples) / dt, "nfe": nfe,
                   "blocks": blocks}


def record(samples, opts: Dict[str, Any], judge=None, reference=None) -> Dict[str, Any]:
  """Quality of ``samples`` (generative perplexity under ``judge``, unigram entropy),
  with the sampling settings that made them."""
  rep = describe(opts)
  rep.update(quality.report(samples, judge, reference))
  return rep
