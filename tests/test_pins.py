"""Issue 22 item 3: borrowed references are pinned (``tcsm_jax/training/pins.py``).

The default tests check the rules on records; the slow ones (``conftest``) go through
``build``, ``load_run`` and the trainer, with runs "trained" by saving one initialized
state as a checkpoint (no train step is compiled).
"""

import json
import os

import jax
import numpy as np
import pytest

import tcsm_jax  # noqa: F401  (registers the fine-tuning builders and teachers)
from helpers import small_dataset, tiny_config
from tcsm_jax import errors
from tcsm_jax.data import pipeline
from tcsm_jax.training import checkpoint as ckpt_lib
from tcsm_jax.training import experiment as experiment_lib
from tcsm_jax.training import pins, restore, trainer
from tcsm_jax.training import workdir as workdir_lib

SMALL = {"data.seq_len": 16, "train.batch_size": 8, "train.num_steps": 3}


_STATE = {}


def _fake_run(wd, cfg, ds, step, seed, exp=None):
  """A workdir holding ``cfg`` and an initialized state (+ ``seed``) saved as ``step``,
  with the meta a trainer writes (its data identity, the experiment's pins). The
  fine-tuning correction of these configs has the reference's structure."""
  exp = exp or trainer.build(cfg, ds)
  if not _STATE:
    _STATE[0] = jax.jit(experiment_lib.state_factory(exp)[0])(jax.random.PRNGKey(0))
  state = jax.tree.map(lambda a: a + seed if a.dtype.kind == "f" else a, _STATE[0])
  ck = ckpt_lib.Checkpointer(os.path.join(wd, "checkpoints"), async_save=False)
  ck.save(step, state, {"dataset": pipeline.stats(ds), "dataset_name": ds.name,
                        "pins": exp.pins, "pin_changes": []}, good=True)
  ck.close()
  workdir_lib.save_config(wd, cfg, step)
  return exp


def _ft_config(ref, **kw):
  return tiny_config(**SMALL, **{"finetune.kind": "reward", "finetune.ref_workdir": ref,
                                 "finetune.reward": "token", **kw})


def test_check_unchanged_refuses_or_records():
  a = {"reference": {"workdir": "R", "step": 3, "fingerprint": "aa"}}
  b = {"reference": {"workdir": "R", "step": 6, "fingerprint": "bb"}}
  assert pins.check_unchanged(a, a, False, "W") == []
  assert pins.check_unchanged(None, a, False, "W") == []       # nothing recorded yet
  with pytest.raises(errors.ConfigError, match=r"fine-tuning reference R changed since W "
                     r"was trained on it \(step 3, parameters aa -> step 6, parameters "
                     r"bb\): refusing to resume.*allow_reference_change"):
    pins.check_unchanged(a, b, False, "W")
  assert pins.check_unchanged(a, b, True, "W") == [{"role": "reference", "from": a[
      "reference"], "to": b["reference"]}]
  assert pins.digest({".params['w']": "01", ".ema_params['w']": "02"}, ".params") != \
      pins.digest({".params['w']": "01", ".ema_params['w']": "02"}, ".ema_params")


def test_require_same_data_names_what_differs():
  ds = small_dataset(6000, 2000)
  rec = pins.identity(ds)
  assert rec == {"data": ds.name, "train_tokens": 6000, "validation_tokens": 2000,
                 "vocab_size": 27}
  pins.require_same_data("teacher", "T", rec, ds)
  pins.require_same_data("teacher", "T", None, ds)          # not recorded: not checked
  for change, msg in [({"vocab_size": 40}, r"\(vocabulary: a vocabulary of 40, the "
                       "config's data 27\)"),
                      ({"tokenizer_sha256": "ab" * 32}, r"\(tokenizer: tokenizer sha256 "
                       r"abababababab\.\.\., the config's data None\.\.\.\)"),
                      ({"data": "text8", "train_tokens": 9}, r"\(data: data 'text8' "
                       r"\(config's data: 'kjv-slice'\); train_tokens 9")]:
    with pytest.raises(errors.ConfigError, match=r"^the teacher T was trained on other "
                       "data " + msg + ".*set data.* to the data it was trained on"):
      pins.require_same_data("teacher", "T", dict(rec, **change), ds)


def test_reference_on_other_data_or_vocabulary_is_refused(tmp_path):
  ds = small_dataset(6000, 2000)
  ref = str(tmp_path / "ref")
  _fake_run(ref, tiny_config(**SMALL), ds, 3, 0)
  cfg = _ft_config(ref)
  other = small_dataset(8000, 2000)                        # another slice: other data
  with pytest.raises(errors.ConfigError, match=r"reference .*ref was trained on other "
                     r"data \(data: train_tokens 6000 \(config's data: 8000\)"):
    experiment_lib.build(cfg, other)
  wide = pipeline.TokenDataset(ds.train, ds.validation, 40, ds.decode, ds.name, ds.encode)
  with pytest.raises(errors.ConfigError, match=r"other data \(vocabulary: a vocabulary "
                     "of 27, the config's data 40\)"):
    experiment_lib.build(cfg, wide)
  sha = dict(ds.info, tokenizer_sha256="ab" * 32)
  with pytest.raises(errors.ConfigError, match=r"other data \(tokenizer: "):
    experiment_lib.build(cfg, pipeline.TokenDataset(ds.train, ds.validation, 27,
                                                    ds.decode, ds.name, info=sha))
  # A teacher likewise: pinned when it matches, refused on other data.
  tcfg = tiny_config(**SMALL, **{"teacher.kind": "mlm", "teacher.workdir": ref,
                                 "loss.teacher_weight": 0.5})
  assert experiment_lib.build(tcfg, ds).pins["teacher"]["step"] == 3
  with pytest.raises(errors.ConfigError, match=r"teacher .*ref was trained on other data"):
    experiment_lib.build(tcfg, other)


def test_token_reward_refuses_what_the_vocabulary_cannot_spell():
  from tcsm_jax.posttrain import finetune
  enc = lambda s: np.asarray([0 if c not in "ab" else "ab".index(c) + 1 for c in s])
  dec = lambda ids: "".join(["[UNK]", "a", "b"][int(i)] for i in ids)
  assert finetune._token_weights("ab=1", enc, 3, dec).tolist() == [0, 1, 1]
  with pytest.raises(errors.ConfigError, match=r"'e' is not a token of this vocabulary "
                     r"\(it encodes to '\[UNK\]'\)"):
    finetune._token_weights("ae=1", enc, 3, dec)


def test_reference_is_pinned_and_a_changed_one_refused(tmp_path):
  ds = small_dataset(6000, 2000)
  ref, wd = str(tmp_path / "ref"), str(tmp_path / "ft")
  ref_cfg = tiny_config(**SMALL)
  _fake_run(ref, ref_cfg, ds, 3, 0)
  cfg = _ft_config(ref)
  exp = experiment_lib.build(cfg, ds, wd)
  pin = exp.pins["reference"]
  saved = ckpt_lib.Checkpointer(os.path.join(ref, "checkpoints"))
  saved.restore(restore.abstract_state(exp.ref, restore.partition.make_mesh(1))[0])
  assert pin == {"workdir": ref, "step": 3, "params": "ema",
                 "fingerprint": pins.digest(saved.restored_fingerprints, ".ema_params"),
                 "data": ds.name, "train_tokens": 6000, "validation_tokens": 2000,
                 "vocab_size": 27}
  _fake_run(wd, cfg, ds, 2, 1, exp)                        # the fine-tuning checkpoint
  assert restore.load_run(wd, dataset=ds).step == 2
  _fake_run(ref, ref_cfg, ds, 6, 5)                        # retrained in place
  with pytest.raises(errors.ConfigError, match=r"fine-tuning reference .*ref changed "
                     r"since .*ft was trained on it \(step 3, .* -> step 6, .*refusing "
                     "to load it"):
    restore.load_run(wd, dataset=ds)
  with pytest.raises(errors.ConfigError, match="refusing to resume"):
    trainer.train_and_evaluate(cfg, wd, experiment=experiment_lib.build(cfg, ds, wd))
  assert not os.path.exists(os.path.join(wd, "references.json"))   # nothing written
  cfg.train.allow_reference_change = True
  trainer.train_and_evaluate(cfg, wd, experiment=experiment_lib.build(cfg, ds, wd),
                             stop_at_step=2)
  rec = json.load(open(os.path.join(wd, "references.json")))
  assert rec["pins"]["reference"]["step"] == 6
  assert [(c["role"], c["from"]["step"], c["to"]["step"], c["step"])
          for c in rec["changes"]] == [("reference", 3, 6, 2)]
  assert restore.load_run(wd, config=cfg, dataset=ds).step == 2
