"""What a run borrowed: pins of its reference, teacher and classifier, and their checks.

Fine-tuning (a frozen reference, a classifier reward) and distillation (a teacher) build
on models trained elsewhere. Each borrowed model is *pinned*: a record of its workdir,
the step restored, a fingerprint of its parameters (the checkpoint integrity
fingerprints of ``checkpoint.py``, digested) and what it was trained on (dataset name,
vocabulary, tokenizer sha256, token counts: ``identity``). ``Experiment.pins`` holds
``{role: record}``; the trainer saves it in every checkpoint's meta and in
``WORKDIR/references.json``.

Two rules:

* **Same data.** A reference or teacher trained on other data than the config's (another
  dataset, vocabulary or tokenizer) is refused in one line (``require_same_data``):
  a fine-tuning run trains on its config's data, and a reward written in characters
  means those characters.
* **Same model.** A resume (or a ``load_run``) whose borrowed model changed on disk
  since the checkpoint was written (retrained in place: another parameter fingerprint)
  is refused in one line (``check_unchanged``) unless ``train.allow_reference_change``;
  then the change is logged and recorded (``pin_changes`` in the checkpoint meta and
  ``references.json``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, List, Optional

from absl import logging

from tcsm_jax import errors, fs, strict_json
from tcsm_jax.data import base

ROLES = {"reference": "fine-tuning reference", "teacher": "teacher",
         "init": "initial model (train.init_from)",
         "classifier": "reward classifier"}
RECORD = "references.json"
# identity key -> what differs when it does
_WHAT = {"vocab_size": "vocabulary", "tokenizer_sha256": "tokenizer", "layout": "data",
         "pad_id": "data", "data": "data", "train_tokens": "data",
         "validation_tokens": "data"}


def digest(fingerprints: Dict[str, str], prefix: str = "") -> str:
  """16 hex digits identifying the leaves of ``fingerprints`` under ``prefix``
  (``checkpoint.fingerprint`` output: layout-independent, so the digest is too)."""
  items = sorted((p[len(prefix):], f) for p, f in fingerprints.items()
                 if p.startswith(prefix))
  return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def identity(dataset) -> Dict[str, Any]:
  """What data a model trained on: ``{"data": name, **data.base.stats(dataset)}``."""
  return {"data": dataset.name, **base.stats(dataset)}


def identity_from_meta(meta: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
  """The identity a trainer recorded in a checkpoint's meta; None if it did not."""
  if not meta or not isinstance(meta.get("dataset"), dict):
    return None
  out = {"data": meta.get("dataset_name"), **meta["dataset"]}
  if isinstance(meta.get("imported"), dict):       # a converted peer checkpoint
    out["imported"] = meta["imported"].get("kind", True)
  return out


def require_same_data(role: str, workdir: str, trained_on: Optional[Dict[str, Any]],
                      dataset) -> None:
  """Refuses (``ConfigError``) a borrowed model trained on other data than ``dataset``.

  ``trained_on``: the model's recorded identity (None: not recorded, not checked).
  """
  if trained_on is None:
    return
  want = identity(dataset)
  # An imported checkpoint (training/imports.py) was trained elsewhere on data this
  # project never saw: its vocabulary and tokenizer are what must agree.
  keys = ("vocab_size", "tokenizer_sha256") if trained_on.get("imported") else _WHAT
  diffs = [k for k in keys if trained_on.get(k) != want.get(k)]
  if not diffs:
    return
  what = _WHAT[diffs[0]]
  if what == "vocabulary":
    detail = f"a vocabulary of {trained_on.get('vocab_size')}, the config's data " \
             f"{want['vocab_size']}"
  elif what == "tokenizer":
    detail = (f"tokenizer sha256 {str(trained_on.get('tokenizer_sha256'))[:12]}..., the "
              f"config's data {str(want.get('tokenizer_sha256'))[:12]}...")
  else:
    detail = "; ".join(f"{k} {trained_on.get(k)!r} (config's data: {want.get(k)!r})"
                       for k in diffs)
  raise errors.ConfigError(
      f"the {ROLES.get(role, role)} {workdir} was trained on other data ({what}: "
      f"{detail}): set data.* to the data it was trained on (its config.json), or "
      "train it on this config's data")


def _short(pin: Dict[str, Any]) -> str:
  return f"step {pin.get('step')}, parameters {pin.get('fingerprint')}"


def check_unchanged(saved: Optional[Dict[str, Any]], current: Dict[str, Any],
                    allow: bool, workdir: str, doing: str = "resume") -> List[Dict]:
  """Compares the pins a checkpoint recorded with those just built.

  Returns the changes (``[{"role", "from", "to"}]``, empty when none) if there are none
  or ``allow``; otherwise raises ``ConfigError`` naming the first changed model.
  """
  changes = []
  for role in sorted(set(saved or {}) & set(current or {})):
    old, new = saved[role], current[role]
    if old.get("fingerprint") != new.get("fingerprint"):
      changes.append({"role": role, "from": old, "to": new})
  if not changes:
    return []
  c = changes[0]
  where = c["to"].get("workdir") or c["to"].get("dir")
  what = (f"the {ROLES.get(c['role'], c['role'])} {where} changed since {workdir} was "
          f"trained on it ({_short(c['from'])} -> {_short(c['to'])})")
  if not allow:
    raise errors.ConfigError(
        f"{what}: refusing to {doing} (config.json is untouched); restore that model, "
        "or --config.train.allow_reference_change=true to go on with the new one "
        "(the change is recorded)")
  for c in changes:
    logging.warning("train.allow_reference_change: the %s changed (%s -> %s)",
                    ROLES.get(c["role"], c["role"]), _short(c["from"]), _short(c["to"]))
  return changes


def write_record(workdir: str, pins: Dict[str, Any], changes: List[Dict]) -> None:
  """``WORKDIR/references.json``: the pins and every allowed change, for readers."""
  fs.write_text_atomic(fs.join(workdir, RECORD), strict_json.dumps(
      {"pins": pins, "changes": changes}, indent=2, sort_keys=True) + "\n")
