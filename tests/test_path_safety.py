"""Nothing a manifest names and no symlink makes the project write outside its
directories (issue 27 item 0): names read from a prepared set's manifest must be plain
file names in that directory (``fs.child``), and every write under a workdir or output
directory stays in it (``fs.confine``/``fs.check_inside``)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tcsm_jax import errors, fs
from tcsm_jax.data import prepared, tokenizer
from tcsm_jax.training import workdir as workdir_lib

from helpers import tiny_train_cmd

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  env.pop("TCSM_TRACEBACK", None)
  return env


def _prepared(out, n=6000):
  rng = np.random.default_rng(0)
  prepared.write_shards(str(out), {"train": rng.integers(0, 27, n),
                                   "validation": rng.integers(0, 27, n // 4)},
                        tokenizer.CharTokenizer())
  return out


def _forge(out, **edits):
  """Rewrites ``out``'s manifest: ``tokenizer_file=...`` and/or ``train_file=...``."""
  mpath = out / prepared.MANIFEST
  m = json.loads(mpath.read_text())
  if "tokenizer_file" in edits:
    m["tokenizer"]["file"] = edits["tokenizer_file"]
  if "train_file" in edits:
    m["splits"]["train"]["file"] = edits["train_file"]
  mpath.write_text(json.dumps(m))


def _victims(tmp_path):
  """Files outside every directory of the test that a traversal could reach."""
  out = {}
  for d in (tmp_path / "victim", tmp_path / "x" / "victim"):
    d.mkdir(parents=True)
    (d / "target.txt").write_bytes(b"victim " + os.fsencode(str(d)))
    out[d / "target.txt"] = (d / "target.txt").read_bytes()
  return out


def _untouched(victims):
  for p, data in victims.items():
    assert p.read_bytes() == data, p


def _train_cmd(workdir, data):
  return tiny_train_cmd(workdir, data, 2)


def _one_line_refusal(r, *words):
  assert r.returncode == 2, r.stderr[-3000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "Traceback" not in r.stderr, r.stderr[-3000:]
  for w in words:
    assert w in last, last
  return last


@pytest.mark.parametrize("name", ["../../victim/target.txt", "ABSOLUTE", "sub/x.json",
                                  "..", ""])
def test_manifest_names_that_leave_their_directory_are_refused(tmp_path, name):
  victims = _victims(tmp_path)
  if name == "ABSOLUTE":
    name = str(tmp_path / "victim" / "target.txt")
  data = _prepared(tmp_path / "x" / "data")
  for edit in ("tokenizer_file", "train_file"):
    _prepared(data)
    _forge(data, **{edit: name})
    with pytest.raises(errors.PathEscapeError, match="not a plain file name") as e:
      prepared.load(str(data))
    assert "\n" not in str(e.value)
    with pytest.raises(errors.PathEscapeError):
      prepared.copy_tokenizer(str(data), str(tmp_path / "x" / "run" / "tokenizer"))
    with pytest.raises(errors.PathEscapeError):
      prepared.verify(str(data), progress=False)
  _untouched(victims)
  assert not (tmp_path / "x" / "run").exists()


def test_train_refuses_the_probes_manifest_and_leaves_the_victim(tmp_path):
  """The probe's exact case: ``"file": "../../victim/target.txt"`` in a prepared set's
  manifest; ``experiments.train`` (which copies the tokenizer into the workdir) ends
  in one line, and the files the path reaches from the data and the workdir are
  byte-identical."""
  victims = _victims(tmp_path)
  data = _prepared(tmp_path / "x" / "data", 20_000)
  _forge(data, tokenizer_file="../../victim/target.txt")
  r = subprocess.run(_train_cmd(tmp_path / "x" / "run", data), cwd=REPO, env=_env(),
                     capture_output=True, text=True, timeout=300)
  _one_line_refusal(r, "../../victim/target.txt", "not a plain file name")
  _untouched(victims)
  assert sorted(os.listdir(tmp_path)) == ["victim", "x"]
  # The refused run made its workdir and wrote nothing: it is removed
  # (common.removed_if_left_empty), so nothing new stands beside the data either.
  assert sorted(os.listdir(tmp_path / "x")) == ["data", "victim"]


def test_writes_do_not_follow_symlinks_out_of_a_confined_directory(tmp_path):
  outside = tmp_path / "outside"
  outside.mkdir()
  (outside / "target.txt").write_text("keep")
  wd = tmp_path / "wd"
  wd.mkdir()
  (wd / "samples").symlink_to(outside, target_is_directory=True)
  (wd / "metrics.jsonl").symlink_to(outside / "target.txt")
  (wd / "config.json").symlink_to(outside / "target.txt")
  (wd / "checkpoints").symlink_to(outside, target_is_directory=True)
  fs.confine(str(wd))
  attempts = [
      lambda: fs.write_text_atomic(fs.join(wd, "samples", "s.txt"), "x"),
      lambda: fs.write_text_atomic(fs.join(wd, "samples", "target.txt"), "x"),
      lambda: fs.append_text(fs.join(wd, "metrics.jsonl"), "x"),
      lambda: fs.write_text_atomic(fs.join(wd, "config.json"), "x"),
      lambda: fs.makedirs(fs.join(wd, "samples", "deeper")),
      lambda: fs.open_file(fs.join(wd, "samples", "new.bin"), "wb"),
      lambda: fs.check_inside(fs.join(wd, "checkpoints")),
      lambda: workdir_lib.check(str(wd)),
  ]
  for attempt in attempts:
    with pytest.raises(errors.PathEscapeError, match="symlink leads it out of") as e:
      attempt()
    assert "\n" not in str(e.value)
  assert sorted(os.listdir(outside)) == ["target.txt"]
  assert (outside / "target.txt").read_text() == "keep"
  # Removing a linked directory removes the link, never what it points to.
  fs.remove(fs.join(wd, "samples"))
  assert not (wd / "samples").exists() and (outside / "target.txt").exists()
  # Links that stay inside, and a root that is itself a link, are fine.
  (wd / "real").mkdir()
  (wd / "inner").symlink_to(wd / "real", target_is_directory=True)
  fs.write_text_atomic(fs.join(wd, "inner", "a.txt"), "ok")
  assert (wd / "real" / "a.txt").read_text() == "ok"
  alias = tmp_path / "alias"
  alias.symlink_to(wd, target_is_directory=True)
  fs.confine(str(alias))
  fs.write_text_atomic(fs.join(alias, "real", "b.txt"), "ok")
  assert (wd / "real" / "b.txt").read_text() == "ok"


@pytest.mark.parametrize("name", ["metrics.jsonl", "config.json", "samples"])
def test_train_refuses_a_workdir_whose_files_link_outside(tmp_path, name):
  """``experiments.train`` on a workdir with a symlinked ``metrics.jsonl``,
  ``config.json`` or ``samples/`` pointing outside: one line before any work,
  nothing written outside."""
  victims = _victims(tmp_path)
  data = _prepared(tmp_path / "x" / "data", 20_000)
  wd = tmp_path / "x" / "run"
  wd.mkdir()
  target = tmp_path / "victim" / ("" if name == "samples" else "target.txt")
  (wd / name).symlink_to(target, target_is_directory=name == "samples")
  r = subprocess.run(_train_cmd(wd, data), cwd=REPO, env=_env(), capture_output=True,
                     text=True, timeout=300)
  _one_line_refusal(r, name, "symlink leads it out of")
  _untouched(victims)
  assert sorted(os.listdir(tmp_path / "victim")) == ["target.txt"]
  assert sorted(os.listdir(wd)) == [name]


def test_sample_refuses_a_samples_directory_linking_outside(tmp_path):
  """The reading binaries check the workdir's layout before loading anything."""
  victims = _victims(tmp_path)
  wd = tmp_path / "x" / "run"
  wd.mkdir()
  (wd / "config.json").write_text("{}")
  (wd / "samples").symlink_to(tmp_path / "victim", target_is_directory=True)
  r = subprocess.run([sys.executable, "-m", "experiments.sample", f"--workdir={wd}",
                      "--num_samples=1", "--steps=2"], cwd=REPO, env=_env(),
                     capture_output=True, text=True, timeout=300)
  _one_line_refusal(r, "samples", "symlink leads it out of")
  _untouched(victims)
  assert sorted(os.listdir(tmp_path / "victim")) == ["target.txt"]
