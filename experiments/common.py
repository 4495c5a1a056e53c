"""Helpers shared by the binaries: flag and workdir checks, run loading, outputs.

Every check raises a ``tcsm_jax.errors.UserError`` subclass; ``experiments.cli.run``
turns it into one ``error: ...`` line (status 2). Every file goes through
``tcsm_jax.fs``, so workdirs and output directories may be bucket URLs.
"""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any, Callable, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments import cli
from tcsm_jax import errors, fs, gen_ppl, likelihood
from tcsm_jax.data import pipeline, prepared
from tcsm_jax.posttrain import judges
from tcsm_jax.training import config as config_lib
from tcsm_jax.training import partition, restore


def check_flag(ok: bool, message: str) -> None:
  """``FlagError(message)`` unless ``ok``; ``message`` names the flag."""
  if not ok:
    raise errors.FlagError(message)


def at_least(flag: str, value, minimum) -> None:
  check_flag(value >= minimum, f"--{flag} must be >= {minimum}, got {value}")


def require_dir(path: str, flag: str = "workdir", _why: str = "") -> None:
  """The directory ``path`` given by ``--flag`` must exist (local or bucket)."""
  check_flag(bool(path), f"--{flag} is empty")
  if not fs.exists(path):
    raise errors.WorkdirError(f"--{flag} {path!r} does not exist{_why}")
  if not fs.isdir(path):
    raise errors.WorkdirError(f"--{flag} {path!r} is a file, not a directory")


def require_output_dir(path: str, flag: str = "outdir") -> None:
  """``path`` may not exist yet, but must not be a file."""
  check_flag(bool(path), f"--{flag} is empty")
  if fs.exists(path) and not fs.isdir(path):
    raise errors.WorkdirError(f"--{flag} {path!r} is a file, not a directory")


def require_run_dir(path: str, flag: str = "workdir", config_given: bool = False) -> None:
  """A training workdir: a directory holding ``config.json`` (or ``--config`` given)."""
  require_dir(path, flag, " (no config.json or checkpoint there; train first with "
              "experiments.train)")
  if not config_given and not fs.exists(fs.join(path, "config.json")):
    raise errors.WorkdirError(
        f"--{flag} {path!r} has no config.json: not a training workdir (train first "
        "with experiments.train, or pass --config)")


def define_judge_flags(help_suffix: str = "") -> Tuple[Any, Any]:
  """``--judge`` (alias ``--judge_workdir``) and ``--gen_ppl_convention`` of a binary
  that reports generative perplexity; returns their flag holders."""
  judge = flags.DEFINE_string(
      "judge", "", "Generative-perplexity judge: a causal model's training workdir, or "
      "hf:DIR (a Hugging Face GPT-2 directory: config.json, model.safetensors, "
      "tokenizer.json)" + help_suffix)
  flags.DEFINE_alias("judge_workdir", "judge")
  conv = flags.DEFINE_enum(
      "gen_ppl_convention", "auto", ["auto"] + sorted(gen_ppl.CONVENTIONS),
      "How generative perplexity is computed (README, Pre-trained models): auto = "
      "project for a workdir judge, mdlm for hf:DIR; " + "; ".join(
          f"{k}: {v}" for k, v in gen_ppl.CONVENTIONS.items()))
  return judge, conv


def check_judge_spec(spec: str, flag: str = "judge") -> None:
  """Before any work: a workdir judge must be a training workdir, an ``hf:`` judge an
  existing directory (a hub id is fetched here, the only download the user can ask
  for)."""
  if spec and not judges.is_hf(spec):
    require_run_dir(spec, flag)
  elif spec:
    judges.gpt2.resolve(spec, what="judge")


def load_judge(spec: str, dataset=None, convention: str = "auto", flag: str = "judge",
               dtype: str = "float32"):
  """The ``gen_ppl.Judge`` of ``--judge`` bound to the sampling model's ``dataset``
  (its decode and tokenizer) and ``--gen_ppl_convention``; None without a spec."""
  if not spec:
    return None
  check_judge_spec(spec, flag)
  judge = judges.load_judge(spec, dtype=dtype)
  kw = {"convention": "" if convention in ("", "auto") else convention}
  if dataset is not None:
    kw.update(decode=dataset.decode, model_tokenizer_sha=model_tokenizer_sha(dataset))
  return judge.bind(**kw)


def validate_config(config) -> None:
  """The one config validation (``ConfigError`` naming the key); registers its paths."""
  config_lib.validate(config)
  strings = []
  cli.config_strings(config, strings)
  cli.add_user_paths(strings)


def load_config(workdir: str, config=None, flag: str = "workdir"):
  """The validated config of a run: ``config`` (from ``--config``) or the workdir's
  ``config.json``."""
  require_run_dir(workdir, flag, config_given=config is not None)
  config = restore.load_config(workdir) if config is None else config
  validate_config(config)
  return config


def load_run(workdir: str, config=None, use_ema: bool = True, flag: str = "workdir"):
  """``restore.load_run`` after checking the workdir and validating the config (the
  workdir's ``config.json`` unless ``config``); user errors propagate to ``cli.run``
  (one line, status 2)."""
  config = load_config(workdir, config, flag)
  return restore.load_run(workdir, config, use_ema=use_ema)


# Old name, kept for the benchmarks; there is one mechanism: errors propagate.
load_or_exit = load_run


# ------------------------------------------------------ flags of sample / evaluate


def with_model_dtype(config, dtype: Optional[str]):
  """A copy of ``config`` whose network computes in ``dtype`` (``None``: unchanged).
  Parameters stay float32 (``tcsm_jax/models/transformer.py``), so a float32 run's
  checkpoint restores as it is."""
  if dtype is None or dtype == config.model.dtype:
    return config
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.dtype = dtype
  return config


def provenance() -> dict:
  """``{date, machine, commit}`` of a measurement made now (UTC date; the first
  device's kind, or the CPU core count; the short git hash of the checkout, with
  ``+dirty`` when it has uncommitted changes, ``unknown`` outside git)."""
  import datetime
  import os
  import subprocess
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    commit = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=root,
                            capture_output=True, text=True, timeout=10).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           cwd=root, capture_output=True, text=True, timeout=10).stdout
    commit = (commit + ("+dirty" if dirty.strip() else "")) if commit else "unknown"
  except (OSError, subprocess.SubprocessError):
    commit = "unknown"
  dev = jax.devices()[0]
  machine = (f"{os.cpu_count()}-core CPU" if dev.platform == "cpu" else
             f"{jax.device_count()} x {dev.device_kind}")
  return {"date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
          "machine": machine, "commit": commit}


def provenance_line(verb: str = "Measured") -> str:
  """``'Measured 2026-12-02 on 2-core CPU at commit abc1234'``."""
  p = provenance()
  return f"{verb} {p['date']} on {p['machine']} at commit {p['commit']}"


def validate_sample_flags(num_samples: int, steps: int, top_p: float,
                          temperature: float, batch_size: int, seq_len: int) -> None:
  """Raises ``FlagError`` naming the first bad flag (before anything is loaded)."""
  at_least("num_samples", num_samples, 1)
  at_least("steps", steps, 1)
  check_flag(0 < top_p <= 1, f"--top_p must be in (0, 1], got {top_p}")
  # The samplers divide the logits by the temperature; there is no greedy mode.
  check_flag(temperature > 0, f"--temperature must be > 0, got {temperature}")
  at_least("batch_size", batch_size, 1)
  check_flag(seq_len >= 0, f"--seq_len must be >= 0 (0 = the config's), got {seq_len}")


def _try_encode(encode: Callable, text: str) -> Optional[np.ndarray]:
  try:
    return np.asarray(encode(text)).reshape(-1)
  except ValueError:
    return None


def _round_trips(encode: Callable, decode: Callable, text: str) -> bool:
  ids = _try_encode(encode, text)
  return ids is not None and ids.size > 0 and decode(ids) == text


def _chars(chars) -> str:
  return " ".join(repr(c) for c in chars)


def encode_text_flag(flag: str, text: str, encode: Callable, decode: Callable,
                     clean: bool) -> Tuple[np.ndarray, Optional[str]]:
  """``(ids, note)`` of the text of ``--flag``.

  The text must read back unchanged after tokenization (``decode(encode(text)) ==
  text``); otherwise a ``FlagError`` names the characters the tokenizer cannot encode,
  unless ``clean``: then ``note`` states the change (original -> cleaned). An empty
  result is an error either way.
  """
  ids = _try_encode(encode, text)
  back = decode(ids) if ids is not None and ids.size else ""
  if ids is not None and ids.size and back == text:
    return ids, None
  if not clean:
    bad = [c for c in dict.fromkeys(text)
           if not c.isspace() and not _round_trips(encode, decode, c)]
    if bad:
      raise errors.FlagError(
          f"--{flag} has characters the tokenizer cannot encode: {_chars(bad)}; remove "
          "them, or pass --clean_prompt to apply the tokenizer's cleaning "
          f"({text!r} -> {back!r})")
    raise errors.FlagError(
        f"--{flag} {text!r} does not survive tokenization unchanged (it reads back as "
        f"{back!r}); write it that way or pass --clean_prompt")
  if ids is None or not ids.size:
    raise errors.FlagError(f"--{flag} is empty after cleaning ({text!r} -> {back!r}); "
                           "nothing left to clamp")
  return ids, f"--{flag} cleaned: {text!r} -> {back!r}"


def encode_template(template: str, encode: Callable, decode: Callable,
                    clean: bool) -> Tuple[List[int], Optional[str]]:
  """Ids of ``template`` (``-1`` at ``_`` holes): every other character must be one
  token that reads back unchanged (or, with ``clean``, one token after cleaning)."""
  ids, cleaned, bad, unfixable = [], [], [], []
  for ch in template:
    if ch == "_":
      ids.append(-1)
      cleaned.append(ch)
      continue
    tok = _try_encode(encode, ch)
    one = tok is not None and tok.size == 1
    back = decode(tok) if one else None
    if one and back == ch:
      ids.append(int(tok[0]))
      cleaned.append(ch)
      continue
    bad.append(ch)
    if one and clean:
      ids.append(int(tok[0]))
      cleaned.append(back)
    else:
      unfixable.append(ch)
  if bad and not clean:
    raise errors.FlagError(
        f"--template has characters the tokenizer cannot encode as one token each: "
        f"{_chars(dict.fromkeys(bad))}; remove them, mark them '_' to generate, or pass "
        "--clean_prompt")
  if unfixable:
    raise errors.FlagError(
        f"--template characters {_chars(dict.fromkeys(unfixable))} are not one token "
        "even after cleaning; replace them or mark them '_' to generate")
  note = None
  if bad:
    note = f"--template cleaned: {template!r} -> {''.join(cleaned)!r}"
  return ids, note


def build_template(encode: Optional[Callable], decode: Callable, length: int, *,
                   prompt: str = "", suffix: str = "", template: str = "",
                   clean: bool = False) -> Tuple[np.ndarray, List[str]]:
  """``(template [length] with -1 holes, notes)`` from the prompt flags."""
  out = np.full(length, -1, np.int64)
  notes = []
  given = [f for f, v in (("prompt", prompt), ("suffix", suffix), ("template", template))
           if v]
  if given and encode is None:
    raise errors.FlagError(f"--{given[0]} needs a text dataset; this model's data has "
                           "no tokenizer")
  if template:
    if len(template) > length:
      raise errors.FlagError(f"--template has {len(template)} characters; samples have "
                             f"{length}")
    ids, note = encode_template(template, encode, decode, clean)
    out[:len(ids)] = ids
    notes += [note] if note else []
  spans = {}
  for flag, text in (("prompt", prompt), ("suffix", suffix)):
    if not text:
      continue
    ids, note = encode_text_flag(flag, text, encode, decode, clean)
    notes += [note] if note else []
    if len(ids) > length:
      raise errors.FlagError(f"--{flag} encodes to {len(ids)} tokens; samples have "
                             f"{length}")
    spans[flag] = ids
  if "prompt" in spans and "suffix" in spans and (
      len(spans["prompt"]) + len(spans["suffix"]) > length):
    raise errors.FlagError(
        f"--prompt and --suffix encode to {len(spans['prompt'])} + "
        f"{len(spans['suffix'])} tokens; samples have {length}")
  if "prompt" in spans:
    out[:len(spans["prompt"])] = spans["prompt"]
  if "suffix" in spans:
    out[length - len(spans["suffix"]):] = spans["suffix"]
  return out, notes


def validate_eval_flags(num_t, num_batches, data: str = "", name: str = "",
                        split: str = "validation") -> None:
  """Raises ``FlagError`` naming the first bad flag (before anything is loaded)."""
  if num_t is not None:
    at_least("num_t", num_t, 1)
  if num_batches is not None:
    check_flag(num_batches >= 0, "--num_batches must be >= 0 (0 = the whole split), "
               f"got {num_batches}")
  check_flag(not name or bool(data), "--name is only used with --data")
  if name:
    check_flag(re.fullmatch(r"[A-Za-z0-9._-]+", name) is not None,
               f"--name {name!r} may hold only letters, digits, '.', '_', '-'")
  check_flag(bool(data) or split in ("validation", "train"),
             f"--split must be validation or train, got {split!r} (other splits of a "
             "prepared set need --data)")


# ------------------------------------------------------------- zero-shot evaluation


def eval_report_name(data: str, name: str = "") -> str:
  """``eval_<name>.json``: ``name`` or the base name of ``data`` made file-safe."""
  if not name:
    name = fs.path(data.rstrip("/")).name if data else "report"
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "data"
  return f"eval_{name}.json"


def model_tokenizer_sha(dataset) -> Optional[str]:
  """The sha256 of the tokenizer a model was trained with, where its data record it."""
  tok = getattr(dataset, "tokenizer", None)
  return getattr(tok, "sha256", None) or (getattr(dataset, "info", None) or {}).get(
      "tokenizer_sha256")


def load_prepared(path: str, run, split: str = "validation") -> pipeline.TokenDataset:
  """The prepared dataset at ``path`` for zero-shot evaluation of ``run``: its
  ``split`` as ``validation``, in the training config's layout and sequence length,
  with the model's vocabulary and (where both record one) tokenizer; a ``DataError``
  naming the directory otherwise."""
  require_dir(path, "data")
  cfg, model_ds = run.config, run.experiment.dataset
  return prepared.load(path, seq_len=cfg.data.seq_len,
                       layout=cfg.data.get("layout", "packed") or "packed",
                       expect_vocab_size=int(model_ds.vocab_size),
                       expect_tokenizer_sha=model_tokenizer_sha(model_ds),
                       validation_split=split, need_train=False)


def evaluate_tokens(run, tokens: np.ndarray, num_t: int, num_batches: int,
                    what: str, pad_id: Optional[int] = None) -> dict:
  """NLL (bound) of ``run`` on ``tokens`` cut into the training config's sequences
  (``pad_id``: padded layout, padding left out, per real token)."""
  cfg, exp = run.config, run.experiment
  seq_len, batch = cfg.data.seq_len, cfg.eval.batch_size
  if len(tokens) // seq_len < batch:
    raise errors.DataError(
        f"{what} holds {len(tokens):,} tokens, fewer than one evaluation batch of "
        f"eval.batch_size {batch} x data.seq_len {seq_len}")
  batches = pipeline.eval_batches(tokens, seq_len, batch, num_batches or None)
  key = jax.random.PRNGKey(cfg.seed + 2)
  if exp.causal:
    if pad_id is not None:
      raise errors.DataError(f"{what} is padded; the exact NLL of a causal model on "
                             "padded rows is not implemented (diffusion models only)")
    from tcsm_jax.models.transformer import ar_log_likelihood
    fn = jax.jit(lambda p, x: ar_log_likelihood(exp.model, p, x))
    ll = np.concatenate([np.asarray(fn(run.params, jnp.asarray(b))) for b in batches])
    rep = likelihood.summarize(-ll, np.zeros_like(ll), seq_len)
    kind = "exact NLL (causal model)"
  else:
    # Data parallel over every local device: params replicated, batches split.
    mesh = partition.make_mesh(1, jax.local_devices())
    partition.check_batch_size(batch, mesh, "eval.batch_size")
    params = jax.device_put(run.params, partition.replicated(mesh))
    rep = likelihood.evaluate(key, exp.apply_fn, batches, exp.process, exp.schedule,
                              num_t, batch_sharding=partition.batch_sharding(mesh),
                              params=params, pad_id=pad_id)
    kind = f"NLL upper bound (ELBO, {num_t} time samples/sequence)"
  return dict(rep.as_dict(), kind=kind, eval_batch_size=batch,
              layout="packed" if pad_id is None else "padded")


# ------------------------------------------------------------------ outputs


def write_text(path, text: str) -> str:
  fs.write_text_atomic(path, text)
  return str(path)


def write_json(path, obj: Any) -> str:
  return write_text(path, json.dumps(obj, indent=2) + "\n")


_UNWRITTEN: List[str] = []     # reports a refusing disk kept out (finish_reports)


def write_report_or_warn(path, content: Any) -> Optional[str]:
  """Writes a report (``str``: as text, else as JSON); returns its path, or ``None``
  when the disk refuses (read-only, full, no permission: ``fs.refusal``), remembering
  why for ``finish_reports``. The binary prints its results either way, then calls
  ``finish_reports()``, which ends in one ``error:`` line (status 2) if a report was
  not written."""
  try:
    if isinstance(content, str):
      return write_text(path, content)
    return write_json(path, content)
  except Exception as e:  # pylint: disable=broad-except
    why = fs.refusal(e, path)
    if why is None:
      raise
    _UNWRITTEN.append(why)
    return None


def finish_reports() -> None:
  """``DiskError`` naming the reports ``write_report_or_warn`` could not write."""
  if _UNWRITTEN:
    whys, _UNWRITTEN[:] = list(_UNWRITTEN), []
    raise errors.DiskError(f"the results are printed above, but could not write "
                           f"{len(whys)} report(s): {'; '.join(whys)}")


def write_csv(path, rows, fieldnames) -> str:
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=fieldnames, extrasaction="ignore")
  w.writeheader()
  w.writerows(rows)
  return write_text(path, buf.getvalue())


def save_figure(fig, path, dpi: int = 120) -> str:
  """Saves a matplotlib figure through ``tcsm_jax.fs`` (bucket paths included)."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi)
  fs.write_bytes_atomic(path, buf.getvalue())
  return str(path)


def read_jsonl(path) -> list:
  """Rows of a metrics file read through ``tcsm_jax.fs`` (later rows for a step win)."""
  rows = {}
  for line in fs.read_text(path).splitlines():
    if line.strip():
      r = json.loads(line)
      rows[(r["step"], tuple(sorted(r)))] = r
  return sorted(rows.values(), key=lambda r: r["step"])


def maybe(value: Optional[Any], default: Any) -> Any:
  return default if value is None else value
