"""The binaries' user-facing errors: one line ``error: ...``, status 2, no traceback.

One tiny workdir is trained in-process per module; the binaries run against it as
subprocesses, all started at once (each pays ~3-5 s of jax start-up). Flag rules,
prompt encoding and the error classification are also checked in-process.
"""

import dataclasses
import json
import os
import re
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest

from experiments import cli, common
from tcsm_jax import errors, fs
from tcsm_jax.data import prepared, sources, text8, tokenizer
from tcsm_jax.training import trainer

from helpers import small_dataset, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ABSL_LOG = re.compile(r"^[IWEF]\d{4} ")     # absl's log lines (allowed around the error)


def _env():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu")
  env.pop("TCSM_TRACEBACK", None)
  return env


def _cases(root):
  """``name -> (binary and flags, expected part of the error line)``; ``run:`` marks
  the cases that need the trained workdir (the others fail before reading it)."""
  wd, afile, missing = (os.path.join(root, n) for n in ("run", "a_file", "missing"))
  tiny = "--config=experiments/configs/kjv_tiny.py"
  return {
      "num_samples=0": (["experiments.sample", f"--workdir={wd}", "--num_samples=0"],
                        "--num_samples must be >= 1, got 0"),
      "workdir is a file": (["experiments.sample", f"--workdir={afile}"],
                            f"--workdir '{afile}' is a file, not a directory"),
      "workdir missing": (["experiments.evaluate", f"--workdir={missing}"],
                          f"--workdir '{missing}' does not exist"),
      "missing config file": (["experiments.evaluate", f"--workdir={wd}",
                               "--config=no/such_config.py"],
                              "--config: cannot load config file 'no/such_config.py': "
                              "No such file or directory"),
      "unknown config key": (["experiments.evaluate", f"--workdir={wd}", tiny,
                              "--config.train.no_such_key=1"],
                             "unknown config key 'no_such_key' in "
                             "--config.train.no_such_key"),
      "hf judge missing": (["experiments.frontier", f"--workdir={wd}",
                            f"--judge=hf:{missing}", f"--outdir={missing}"],
                           f"judge directory '{missing}' does not exist"),
      "hf teacher, other vocabulary": (
          ["experiments.distill", tiny, f"--workdir={missing}_student",
           "--teacher=hf:tests/fixtures/gpt2_tiny", "--config.train.num_steps=1"],
          "the teacher hf:tests/fixtures/gpt2_tiny predicts 300 tokens (its vocab_size), "
          "the student's data has a vocabulary of 27"),
      "run: snowman prompt": (["experiments.sample", f"--workdir={wd}",
                               "--prompt=☃☃☃!!!"],
                              "--prompt has characters the tokenizer cannot encode: "
                              "'☃' '!'"),
  }


def _start(args):
  return subprocess.Popen([sys.executable, "-m"] + args, cwd=REPO, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  """Trains the tiny run and runs every subprocess case; the cases that do not need
  the run start before the training. ``name -> (status, stdout, stderr, expected)``."""
  root = str(tmp_path_factory.mktemp("cli"))
  wd = os.path.join(root, "run")
  with open(os.path.join(root, "a_file"), "w") as f:
    f.write("not a workdir")
  cases = _cases(root)
  cases["verbose"] = (["experiments.evaluate", f"--workdir={wd}", "--num_t=0",
                       "--verbose"], "--num_t must be >= 1, got 0")
  cases["run: zero-shot"] = (["experiments.evaluate", f"--workdir={wd}",
                              f"--data={os.path.join(root, 'heldout')}", "--split=test",
                              "--num_t=1", "--num_batches=2"], None)
  procs = {n: _start(a) for n, (a, _) in cases.items() if not n.startswith("run:")}
  # A 4-step run of a 1-layer, width-32 model. Its validation split is shorter than
  # one eval batch, so the trainer compiles no eval step.
  cfg = tiny_config(**{"train.num_steps": 4, "train.batch_size": 8,
                       "eval.batch_size": 8})
  ds = small_dataset(5000, 100)
  trainer.train_and_evaluate(cfg, wd, experiment=trainer.build(cfg, ds))
  # A prepared set with only train + test splits, for zero-shot evaluation on "test".
  text = " " + text8.decode(ds.train[:1800])
  zpath = os.path.join(root, "t8.zip")
  with zipfile.ZipFile(zpath, "w") as zf:
    zf.writestr("text8", text)
  src = sources.text8_source(zpath, {"train": (0, 200), "test": (200, 1800)})
  prepared.prepare(os.path.join(root, "heldout"), src, tokenizer.CharTokenizer(),
                   progress=False)
  procs.update({n: _start(a) for n, (a, _) in cases.items() if n.startswith("run:")})
  out = {"root": root}
  for name, p in procs.items():
    stdout, stderr = p.communicate(timeout=600)
    out[name] = (p.returncode, stdout, stderr, cases[name][1])
  return out


@pytest.fixture(scope="module")
def workdir(results):
  return os.path.join(results["root"], "run")


@pytest.mark.parametrize("name", list(_cases("/root")))
def test_bad_input_is_one_line_and_status_2(results, name):
  rc, _, stderr, expected = results[name]
  lines = [l for l in stderr.splitlines() if l.strip() and not _ABSL_LOG.match(l)]
  assert rc == 2, stderr[-3000:]
  assert "Traceback" not in stderr, stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
  assert expected in lines[0], lines[0]


def test_verbose_shows_the_traceback_of_a_user_error(results):
  rc, _, stderr, expected = results["verbose"]
  assert rc == 2 and "Traceback" in stderr and "FlagError" in stderr, stderr[-3000:]
  assert stderr.strip().splitlines()[-1] == "error: --num_t must be >= 1, got 0"


def test_zero_shot_evaluation_on_a_prepared_split(results, workdir):
  rc, stdout, stderr, _ = results["run: zero-shot"]
  assert rc == 0, stderr[-3000:]
  rep = json.loads(fs.read_text(os.path.join(workdir, "eval_heldout.json")))
  assert rep["split"] == "test" and rep["seq_len"] == 32      # the training layout
  assert rep["num_sequences"] == 16 and rep["eval_batch_size"] == 8
  assert rep["layout"] == "packed" and rep["data_path"].endswith("heldout")
  assert 0 < rep["nats_per_token"] < 6 and rep["stderr"] > 0
  assert rep["perplexity"] == pytest.approx(np.exp(rep["nats_per_token"]))
  assert "perplexity" in stdout and "eval_heldout.json" in stdout


# ----------------------------------------------------------------- in-process


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_samples=0), "--num_samples must be >= 1"),
    (dict(steps=0), "--steps must be >= 1"),
    (dict(top_p=0.0), "--top_p must be in (0, 1]"),
    (dict(top_p=1.5), "--top_p must be in (0, 1]"),
    (dict(top_p=float("nan")), "--top_p must be in (0, 1]"),
    (dict(temperature=-1.0), "--temperature must be > 0"),
    (dict(temperature=0.0), "--temperature must be > 0"),
    (dict(batch_size=0), "--batch_size must be >= 1"),
    (dict(seq_len=-1), "--seq_len must be >= 0"),
])
def test_sample_flags(kwargs, message):
  good = dict(num_samples=1, steps=1, top_p=1.0, temperature=1.0, batch_size=1,
              seq_len=0)
  common.validate_sample_flags(**good)
  with pytest.raises(errors.FlagError) as e:
    common.validate_sample_flags(**dict(good, **kwargs))
  assert str(e.value).startswith(message)


def test_evaluate_flags():
  common.validate_eval_flags(None, None)
  common.validate_eval_flags(1, 0)
  for args, message in [((0, None), "--num_t must be >= 1, got 0"),
                        ((None, -1), "--num_batches must be >= 0"),
                        ((None, None, "", "x"), "--name is only used with --data"),
                        ((None, None, "", "", "test"), "--split must be validation")]:
    with pytest.raises(errors.FlagError, match=re.escape(message)):
      common.validate_eval_flags(*args)
  common.validate_eval_flags(None, None, "D", "ptb", "test")
  assert common.eval_report_name("gs://b/sets/ptb test/") == "eval_ptb_test.json"


def test_prompts_refuse_what_the_tokenizer_changes_unless_cleaned():
  enc, dec = text8.encode_text, text8.decode
  ids, note = common.encode_text_flag("prompt", "in the beginning", enc, dec, False)
  assert dec(ids) == "in the beginning" and note is None
  with pytest.raises(errors.FlagError, match=r"--prompt has characters the tokenizer "
                     r"cannot encode: '☃' '!'"):
    common.encode_text_flag("prompt", "☃☃☃!!!", enc, dec, False)
  with pytest.raises(errors.FlagError, match="empty after cleaning"):
    common.encode_text_flag("prompt", "☃☃☃!!!", enc, dec, True)
  with pytest.raises(errors.FlagError, match="'I'"):
    common.encode_text_flag("prompt", "In the beginning", enc, dec, False)
  with pytest.raises(errors.FlagError, match="does not survive tokenization"):
    common.encode_text_flag("suffix", "amen  amen", enc, dec, False)   # a double space
  ids, note = common.encode_text_flag("prompt", "In the Beginning 7!", enc, dec, True)
  assert note == ("--prompt cleaned: 'In the Beginning 7!' -> "
                  "'in the beginning seven'")
  # Templates: one token per character, positions kept.
  tpl, notes = common.build_template(enc, dec, 10, template="a_B_", clean=True)
  assert list(tpl[:4]) == [1, -1, 2, -1] and (tpl[4:] == -1).all()
  assert notes == ["--template cleaned: 'a_B_' -> 'a_b_'"]
  with pytest.raises(errors.FlagError, match="'B'"):
    common.build_template(enc, dec, 10, template="a_B_")
  with pytest.raises(errors.FlagError, match=r"'!' are not one token even after"):
    common.build_template(enc, dec, 10, template="a_!_", clean=True)
  with pytest.raises(errors.FlagError, match="encode to 5 \\+ 6 tokens"):
    common.build_template(enc, dec, 10, prompt="hello", suffix=" world")
  with pytest.raises(errors.FlagError, match="needs a text dataset"):
    common.build_template(None, dec, 10, prompt="hello")
  tpl, _ = common.build_template(enc, dec, 8, prompt="ab", suffix=" z")
  assert list(tpl) == [1, 2, -1, -1, -1, -1, 0, 26]


def test_zero_shot_mismatch_is_a_data_error(workdir):
  model_ds = dataclasses.replace(small_dataset(100, 100), vocab_size=50)
  run = types.SimpleNamespace(config=tiny_config(),
                              experiment=types.SimpleNamespace(dataset=model_ds))
  with pytest.raises(errors.DataError, match="vocabulary of 27 ids.*the model has 50"):
    common.load_prepared(os.path.join(os.path.dirname(workdir), "heldout"), run, "test")


def test_outputs_go_through_fs_to_a_bucket():
  from fake_bucket import fake_gcs, leaked_local_dirs
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  with fake_gcs():
    common.require_output_dir("gs://b/out")
    with pytest.raises(errors.WorkdirError, match="'gs://b/out' does not exist"):
      common.require_dir("gs://b/out", "outdir")
    common.write_json("gs://b/out/r.json", {"a": 1})
    common.write_csv("gs://b/out/c.csv", [{"x": 1, "y": 2}], ["x", "y"])
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    common.save_figure(fig, "gs://b/out/p.png")
    plt.close(fig)
    fs.write_text_atomic("gs://b/out/m.jsonl",
                         '{"step": 1, "a": 1}\n{"step": 1, "a": 2}\n')
    assert json.loads(fs.read_text("gs://b/out/r.json")) == {"a": 1}
    assert fs.read_text("gs://b/out/c.csv").splitlines() == ["x,y", "1,2"]
    assert fs.read_bytes("gs://b/out/p.png").startswith(b"\x89PNG")
    assert common.read_jsonl("gs://b/out/m.jsonl") == [{"step": 1, "a": 2}]
    common.require_dir("gs://b/out", "outdir")
    with pytest.raises(errors.WorkdirError, match="is a file"):
      common.require_output_dir("gs://b/out/r.json")
  assert not leaked_local_dirs(REPO) and not leaked_local_dirs()


def _guarded(monkeypatch, capsys, fn, env=None, argv=("prog",)):
  """Runs ``fn`` as a binary's main would; returns ``(exit status, stderr)``."""
  monkeypatch.setattr(sys, "argv", ["prog"])    # no --verbose from pytest's own argv
  monkeypatch.delenv("TCSM_TRACEBACK", raising=False)
  for k, v in (env or {}).items():
    monkeypatch.setenv(k, v)
  with pytest.raises(SystemExit) as e:
    cli._guarded(fn)(list(argv))                # pylint: disable=protected-access
  return e.value.code, capsys.readouterr().err


def _raise(exc):
  def main(argv):
    raise exc
  return main


def test_user_errors_bugs_and_ctrl_c(monkeypatch, capsys, tmp_path):
  code, err = _guarded(monkeypatch, capsys, _raise(errors.ConfigError("bad\nkey  x")))
  assert code == 2 and err == "error: bad key  x\n"
  code, err = _guarded(monkeypatch, capsys, _raise(errors.ConfigError("bad")),
                       {"TCSM_TRACEBACK": "1"})
  assert code == 2 and "Traceback" in err and err.endswith("error: bad\n")
  code, err = _guarded(monkeypatch, capsys, _raise(KeyboardInterrupt()))
  assert code == 130 and err == "interrupted (Ctrl-C)\n"
  # A missing file under a path the user gave is a user error; elsewhere it is a bug.
  monkeypatch.setattr(cli, "_extra_user_paths", [str(tmp_path)])
  missing = FileNotFoundError(2, "No such file or directory", str(tmp_path / "x.txt"))
  code, err = _guarded(monkeypatch, capsys, _raise(missing))
  assert code == 2 and err == f"error: No such file or directory: '{tmp_path}/x.txt'\n"
  with pytest.raises(FileNotFoundError):
    cli._guarded(_raise(FileNotFoundError(2, "gone", "/usr/lib/x.so")))(["prog"])
  with pytest.raises(RuntimeError):                       # a bug keeps its traceback
    cli._guarded(_raise(RuntimeError("bug")))(["prog"])
  code, err = _guarded(monkeypatch, capsys, lambda argv: None, argv=["prog", "16"])
  assert code == 2 and err.startswith("error: unexpected arguments ['16']")
  assert cli._guarded(lambda argv: 0)(["prog"]) == 0       # success passes through
