"""A peer checkpoint (MDLM, SEDD, DUO) turned into an ordinary workdir.

``convert(kind, directory, workdir, tokenizer)`` (what ``python -m experiments.convert``
runs) reads the peer's files (``models/peers.py``) and writes, into an empty
``workdir``:

* ``config.json`` (and ``config.0.json``): a validated config with ``model.arch = dit``,
  the peer's process and schedule, ``data.name = prepared`` and ``data.path`` = the
  user's prepared data (``data``) or the workdir's ``tokenizer/`` (then the run has the
  tokenizer and no data: it samples, and evaluates with ``--data``);
* ``tokenizer/``: the tokenizer (a Hugging Face ``tokenizer.json``) with a manifest, as
  ``prepared.copy_tokenizer`` leaves it next to a trained run, with no splits;
* ``checkpoints/0``: the train state at step 0 (parameters = EMA = the peer's weights,
  a fresh optimizer state), saved by the trainer's ``Checkpointer`` with its integrity
  fingerprints, so ``load_run`` / ``evaluate`` / ``sample`` / fine-tuning restore it
  like any run on any mesh. Its meta records the data identity (vocabulary, tokenizer
  sha256) and ``imported`` (kind, source directory, sha256 and size of every file
  read, the peer's config);
* ``imported.json``: the same record, for readers.

A run that borrows the converted model (``finetune.ref_workdir``, ``teacher.workdir``)
pins it like any reference: step, parameter fingerprint, vocabulary and tokenizer
(``pins.py``); being imported, it is checked against the borrower's data on vocabulary
and tokenizer only (it was not trained on the borrower's token counts).

Vocabulary: the clean vocabulary ``V`` is the peer's rows minus the mask (absorbing) or
its rows (uniform). The tokenizer must have ``V`` ids; when it has one fewer and no pad
token, ``[PAD]`` is appended as an added special token, which is what the peers'
dataloaders do to GPT-2's tokenizer (DUO's uniform process has 50,258 states: GPT-2's
50,257 and ``[PAD]``). MDLM's and SEDD's mask is the input-only id ``V`` (50,257 for
GPT-2), as in this project's absorbing process.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tcsm_jax import errors, fs
from tcsm_jax.data import prepared, tokenizer as tok_lib
from tcsm_jax.models import peers
from tcsm_jax.training import checkpoint as ckpt_lib
from tcsm_jax.training import config as config_lib
from tcsm_jax.training import experiment as experiment_lib
from tcsm_jax.training import state as state_lib
from tcsm_jax.training import workdir as workdir_lib

RECORD = "imported.json"
TOKENIZER_DIR = "tokenizer"
PAD_TOKEN = "[PAD]"


def _tokenizer_json(path: str, vocab: int) -> str:
  """The tokenizer JSON text with ``V = vocab`` ids (``[PAD]`` appended if one short)."""
  tok = tok_lib.HuggingFace.from_file(path)
  if tok.vocab_size == vocab:
    return fs.read_text(path)
  if tok.vocab_size + 1 == vocab and tok.pad_id is None:
    spec = json.loads(fs.read_text(path))
    spec.setdefault("added_tokens", []).append(
        {"id": tok.vocab_size, "content": PAD_TOKEN, "single_word": False,
         "lstrip": False, "rstrip": False, "normalized": False, "special": True})
    text = json.dumps(spec, ensure_ascii=False)
    if tok_lib.HuggingFace(text, path).vocab_size != vocab:
      raise errors.DataError(f"tokenizer {path!r}: appending {PAD_TOKEN} did not give "
                             f"{vocab} ids")
    return text
  raise errors.DataError(f"tokenizer {path!r} has {tok.vocab_size} ids; the checkpoint "
                         f"predicts {vocab} clean tokens (give the tokenizer it was "
                         "trained with, e.g. GPT-2's tokenizer.json)")


def tokenizer_manifest(tok: tok_lib.HuggingFace, name: str) -> Dict[str, Any]:
  """A prepared-format manifest of a tokenizer alone (no splits)."""
  vocab, pad = prepared.special_ids(tok, "packed")
  return {"format": prepared.FORMAT, "name": name,
          "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
              timespec="seconds"),
          "source": {"kind": "imported"},
          "tokenizer": dict(tok.describe(), file=tok_lib.FILE_NAMES["hf"]),
          "vocab_size": int(vocab),
          "special_tokens": {"eos": tok.eos_id, "pad": pad, "separator": tok.separator},
          "dtype": prepared.dtype_for(vocab), "layout": "packed", "seq_len": None,
          "splits": {}}


def make_config(imp: peers.Imported, data_path: str, seq_len: int
                ) -> ml_collections.ConfigDict:
  """The validated config of a converted checkpoint."""
  c = config_lib.default_config()
  c.data.name = "prepared"
  c.data.path = data_path
  c.data.seq_len = int(seq_len)
  c.process = imp.process
  c.schedule.name = imp.schedule["name"]
  for k, v in imp.schedule.items():
    if k != "name":
      c.schedule[k] = float(v)
  for k, v in imp.model.items():
    c.model[k] = v
  c.model.size = "tiny"                 # every dimension is overridden
  if imp.process == "uniform":
    c.sampling.sampler = "analytic"
  config_lib.validate(c)
  return c


def _empty_or_new(workdir: str) -> None:
  workdir_lib.check(workdir)
  if fs.exists(workdir) and fs.listdir(workdir):
    raise errors.WorkdirError(f"workdir {workdir!r} is not empty: convert into a new "
                              "directory")


def convert(kind: str, directory: str, workdir: str, tokenizer: str = "",
            data: str = "", seq_len: int = 0) -> Dict[str, Any]:
  """Writes the workdir of a peer checkpoint (module docstring); returns the record.

  Args:
    kind: ``mdlm`` | ``sedd`` | ``duo``.
    directory: the peer's checkpoint directory.
    workdir: a new or empty directory.
    tokenizer: the tokenizer JSON; default ``directory/tokenizer.json``.
    data: a prepared dataset with that tokenizer, recorded as ``data.path``
      (default: the workdir's tokenizer copy, no data).
    seq_len: ``data.seq_len``; default the peer's model length.
  Raises:
    UserError: a missing directory or file, a wrong format, an unknown key, a
      tokenizer of another vocabulary, a non-empty workdir.
  """
  imp = peers.read(kind, directory)
  tok_path = tokenizer or os.fspath(fs.join(directory, "tokenizer.json"))
  if not fs.exists(tok_path):
    raise errors.DataError(f"no tokenizer: {tok_path!r} does not exist (pass "
                           "--tokenizer=PATH/tokenizer.json, e.g. GPT-2's)")
  text = _tokenizer_json(tok_path, imp.vocab_size)
  seq_len = int(seq_len or imp.max_length)
  _empty_or_new(workdir)
  tok_dir = fs.join(workdir, TOKENIZER_DIR)
  tok = tok_lib.HuggingFace(text, tok_path)
  if data:
    m = prepared.read_manifest(data)
    if m["tokenizer"].get("sha256") != tok.sha256 or int(m["vocab_size"]) != \
        imp.vocab_size:
      raise errors.DataError(f"--data {data!r} is not tokenized with the model's "
                             f"tokenizer ({imp.vocab_size} ids, sha256 "
                             f"{tok.sha256[:12]}...)")
  config = make_config(imp, data or os.fspath(tok_dir), seq_len)
  created = not fs.exists(workdir)
  try:
    fs.makedirs(tok_dir)
    fs.write_text_atomic(fs.join(tok_dir, tok_lib.FILE_NAMES["hf"]), text)
    fs.write_text_atomic(fs.join(tok_dir, prepared.MANIFEST), json.dumps(
        tokenizer_manifest(tok, f"{kind} tokenizer"), indent=2) + "\n")
    dataset = prepared.tokenizer_only(os.fspath(tok_dir))
    exp = experiment_lib.build(config, dataset, workdir=workdir)
    _, optimizer, _ = experiment_lib.state_factory(exp)
    shapes = jax.eval_shape(exp.init_params, jax.random.PRNGKey(0))
    got = jax.tree_util.tree_structure(imp.params)
    if got != jax.tree_util.tree_structure(shapes):
      raise AssertionError(f"mapped tree {got} is not the DiT's")
    for (path, want), have in zip(jax.tree_util.tree_leaves_with_path(shapes),
                                  jax.tree_util.tree_leaves(imp.params)):
      if tuple(want.shape) != tuple(np.shape(have)):
        raise peers.CheckpointFormatError(
            f"{directory!r}: {jax.tree_util.keystr(path)} has shape {np.shape(have)}, "
            f"the DiT of this config needs {tuple(want.shape)}")
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), imp.params)
    # What state_factory's create() builds, with the peer's parameters (EMA = raw).
    state = state_lib.create(params, optimizer,
                             jax.random.split(jax.random.PRNGKey(config.seed))[1])
    record = {"kind": kind, "source": os.fspath(directory), "files": imp.files,
              "weights_dtype": imp.weights_dtype, "peer_config": imp.peer_config,
              "tokenizer": {"path": tok_path, "sha256": tok.sha256,
                            "vocab_size": tok.vocab_size},
              "vocab_size": imp.vocab_size, "rows": imp.rows, "process": imp.process,
              "schedule": imp.schedule, "model": imp.model,
              "converted": datetime.datetime.now(datetime.timezone.utc).isoformat(
                  timespec="seconds")}
    meta = {"config": json.loads(config_lib.to_json(config)),
            "dataset": {"vocab_size": int(imp.vocab_size),
                        "tokenizer_sha256": tok.sha256},
            "dataset_name": f"imported:{kind}", "imported": record, "pins": {},
            "pin_changes": []}
    ckpt = ckpt_lib.Checkpointer(fs.join(workdir, "checkpoints"), async_save=False)
    ckpt.save(0, state, meta, good=True)
    ckpt.wait()
    ckpt.close()
    workdir_lib.save_config(workdir, config, 0)
    fs.write_text_atomic(fs.join(workdir, RECORD), json.dumps(record, indent=2) + "\n")
  except BaseException:
    if created and not fs.is_remote(workdir):      # leave no half-written workdir
      shutil.rmtree(os.fspath(workdir), ignore_errors=True)
    raise
  return record
