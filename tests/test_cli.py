"""The binaries' user-facing errors: one line ``error: ...``, status 2, no traceback.

One tiny workdir is trained in-process per module; the binaries run against it as
subprocesses, all started at once (each pays ~3-5 s of jax start-up). Flag rules,
prompt encoding and the error classification are also checked in-process.

Every flag of every binary with a bad value (``tests/flag_table.py``): the table runs
in ONE extra process that imports jax once and runs the binaries one after the other
through ``experiments.cli``'s own parser and guard (about 15 s for 130 rows on the
2-core CPU, against ~4 s per row as separate processes); one row per binary also runs
as a real ``python -m`` subprocess in the slow suite.
"""

import dataclasses
import json
import os
import re
import signal
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

import flag_table
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
      # A reference trained on other data (an in-memory slice): refused inside the
      # trainer, after it made the new workdir (test_refused_run_leaves_no_workdir).
      "run: refused finetune": (["experiments.finetune",
                                 "--config=experiments/configs/kjv_reward.py",
                                 f"--workdir={os.path.join(root, 'ft_new')}",
                                 f"--config.finetune.ref_workdir={wd}"],
                                "was trained on other data"),
  }


def _places(root):
  return dict(wd=os.path.join(root, "run"), root=root, afile=os.path.join(root, "a_file"),
              missing=os.path.join(root, "missing"),
              corpus=os.path.join(root, "corpus.txt"),
              gpt2=os.path.join(REPO, "tests", "fixtures", "gpt2_tiny"),
              mdlm=os.path.join(REPO, "tests", "fixtures", "mdlm_tiny"))


# Long generation past the model's data.seq_len (32) from the command line.
LONG = {
    "long prompt": ["--num_samples=3", "--batch_size=2", "--steps=4", "--length=100",
                    "--overlap=8", "--prompt=in the beginning"],
    "long": ["--num_samples=2", "--steps=4", "--length=70", "--overlap=-1"],
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
  for name, args in LONG.items():
    cases[name] = (["experiments.sample", f"--workdir={wd}"] + args, None)
    procs[name] = _start(cases[name][0])
  with open(os.path.join(root, "corpus.txt"), "w") as f:
    f.write("in the beginning god created the heaven and the earth\n\n" * 40)
  rows = [(b, flag_table.argv_of(b, args, _places(root)))
          for b, _, args, _ in flag_table.TABLE]
  table = subprocess.Popen([sys.executable, os.path.join(REPO, "tests", "flag_table.py")],
                           cwd=REPO, env=_env(), stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  table_out, table_err = table.communicate(json.dumps(rows), timeout=600)
  out = {"root": root}
  for name, p in procs.items():
    stdout, stderr = p.communicate(timeout=600)
    out[name] = (p.returncode, stdout, stderr, cases[name][1])
  assert table.returncode == 0, table_err[-3000:]
  out["flag table"] = json.loads(table_out.strip().splitlines()[-1])
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


def _one_error_line(stderr):
  lines = [l for l in stderr.splitlines() if l.strip() and not _ABSL_LOG.match(l)]
  return lines[0] if len(lines) == 1 and lines[0].startswith("error: ") else None


def _row_id(row):
  binary, flag, args, _ = row
  return f"{binary.split('.')[-1]}:{' '.join(args)}"


@pytest.mark.parametrize("index", range(len(flag_table.TABLE)),
                         ids=[_row_id(r) for r in flag_table.TABLE])
def test_bad_flag_value_is_one_line_naming_the_flag(results, index):
  """``tests/flag_table.py``: every row ends in one ``error:`` line naming its flag,
  status 2, no traceback."""
  binary, flag, args, expected = flag_table.TABLE[index]
  r = results["flag table"]["results"][index]
  line = _one_error_line(r["stderr"])
  assert r["status"] == 2 and line is not None, (r["status"], r["stderr"][-3000:])
  assert "Traceback" not in r["stderr"], r["stderr"][-3000:]
  assert expected in line, line


def test_every_flag_of_every_binary_has_a_bad_value_row(results):
  """A flag added to a binary without a row in ``tests/flag_table.py`` (or a reason in
  ``NO_BAD_VALUE``) fails here; so does a row naming a flag the binary lacks."""
  defined = results["flag table"]["flags"]
  assert sorted(defined) == sorted(flag_table.BINARIES)
  rows = {(b, f) for b, f, _, _ in flag_table.TABLE} | set(flag_table.NO_BAD_VALUE)
  missing = [f"{b} --{f}" for b, names in defined.items() for f in names
             if (b, f) not in rows]
  assert not missing, f"flags without a bad-value row in tests/flag_table.py: {missing}"
  unknown = [f"{b} --{f}" for b, f in rows if f not in defined[b]]
  assert not unknown, f"rows for flags the binary does not define: {unknown}"
  # Refused commands made none of their outputs.
  made = [n for n in ("frontier", "finetune", "distill", "prepared", "study", "train",
                      "sweep", "compare", "convert")
          if os.path.exists(os.path.join(results["root"], n))]
  assert not made, made


def test_every_binary_is_in_the_flag_table():
  """A new binary (a module ending in ``cli.run(main)``) needs its rows in
  tests/flag_table.py."""
  found = set()
  for dirpath, _, files in os.walk(os.path.join(REPO, "experiments")):
    for name in files:
      path = os.path.join(dirpath, name)
      if name.endswith(".py") and "cli.run(main)" in open(path).read():
        mod = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
        found.add(mod[:-len(".__main__")] if mod.endswith(".__main__") else mod)
  found.discard("experiments.cli")
  assert found == set(flag_table.BINARIES), sorted(found ^ set(flag_table.BINARIES))


@pytest.mark.parametrize("binary, flag", flag_table.SUBPROCESS_ROWS)
def test_bad_flag_rows_as_real_commands(results, binary, flag):
  """The in-process driver sees what a user sees: one row per binary as ``python -m``
  (slow: ~4 s of imports each; the table above is the default test)."""
  [(args, expected)] = [(a, e) for b, f, a, e in flag_table.TABLE[:]
                        if (b, f) == (binary, flag)][:1]
  p = subprocess.run([sys.executable, "-m", binary] + flag_table.argv_of(
      binary, args, _places(results["root"])), cwd=REPO, env=_env(),
      capture_output=True, text=True, timeout=300)
  line = _one_error_line(p.stderr)
  assert p.returncode == 2 and line is not None and expected in line, p.stderr[-3000:]


def test_refused_run_leaves_no_workdir(results):
  rc, _, stderr, _ = results["run: refused finetune"]
  assert rc == 2, stderr[-3000:]
  assert not os.path.exists(os.path.join(results["root"], "ft_new"))


def _samples_of(workdir, length):
  """``{stem: (lines, report)}`` of the sample reports of ``length``."""
  out, d = {}, os.path.join(workdir, "samples")
  for name in sorted(os.listdir(d)):
    if name.endswith(".json"):
      rep = json.loads(open(os.path.join(d, name)).read())
      if rep["length"] == length:
        lines = open(os.path.join(d, name[:-5] + ".txt")).read().splitlines()
        out[name[:-5]] = (lines, rep)
  return out


@pytest.mark.parametrize("name, length, num, overlap, prompt", [
    ("long prompt", 100, 3, 8, "in the beginning"), ("long", 70, 2, 8, "")])
def test_sample_past_the_training_length(results, workdir, name, length, num, overlap,
                                         prompt):
  """``experiments.sample --length`` above data.seq_len (32), with and without a
  prompt (``--overlap=-1``: seq_len // 4 = 8): every sample has the length, starts
  with the prompt, and the report names its settings (the window law itself:
  tests/test_long_generation.py::test_binary_draw_past_the_training_length)."""
  rc, stdout, stderr, _ = results[name]
  assert rc == 0, stderr[-3000:]
  [(stem, (lines, rep))] = _samples_of(workdir, length).items()
  assert stem.startswith("analytic_4steps_")
  assert len(lines) == num and all(len(l) == length for l in lines), lines
  assert all(l.startswith(prompt) for l in lines)
  assert all(f"[{i}] {l}" in stdout for i, l in enumerate(lines))
  s = rep["settings"]
  assert (s["length"], s["overlap"], s["prompt"], s["num_samples"]) == (
      length, overlap, prompt, num)
  blocks = len(__import__("tcsm_jax.sampling.long", fromlist=["x"]).windows(
      length, 32, overlap))
  assert rep["nfe_per_batch"] >= blocks * 4          # every window sampled, 4 steps
  if not prompt:            # free text: at least one token differs from the data's mode
    assert len(set("".join(lines))) > 3


def test_sigterm_during_imports_is_one_line_and_143():
  """SIGTERM while ``python -m experiments.X`` still imports jax: status 143 and the
  line ``terminated (SIGTERM)`` (experiments/__init__.py), not a silent kill. The
  signal is sent as soon as ``-X importtime`` reports the package imported."""
  p = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "experiments.sample",
                        "--workdir=nowhere"], cwd=REPO, env=_env(),
                       stderr=subprocess.PIPE, text=True)
  for line in p.stderr:
    if line.rstrip().endswith("| experiments"):
      break
  p.send_signal(signal.SIGTERM)
  rest = p.stderr.read()
  p.wait(timeout=60)
  assert p.returncode == 143, rest[-2000:]
  assert [l for l in rest.splitlines() if "import time" not in l] == [
      "terminated (SIGTERM)"], rest[-2000:]


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


def _strict_loads(text):
  def refuse(name):
    raise ValueError(f"not JSON: {name}")
  return json.loads(text, parse_constant=refuse)


def test_reports_and_metrics_are_strict_json(tmp_path):
  """A non-finite float is written as null (RFC 8259 has no NaN/Infinity): reports
  (``common.write_json``) and ``metrics.jsonl``, which reads a null back as NaN."""
  from tcsm_jax import strict_json
  from tcsm_jax.training import metrics as metrics_lib
  rep = {"a": float("inf"), "b": [np.float32("nan"), 1.5], "c": {"d": -np.inf},
         "e": np.int64(3), "f": "x"}
  path = common.write_json(str(tmp_path / "r.json"), rep)
  assert _strict_loads(open(path).read()) == {"a": None, "b": [None, 1.5],
                                              "c": {"d": None}, "e": 3, "f": "x"}
  with pytest.raises(ValueError):
    strict_json.json.dumps(float("nan"), allow_nan=False)   # the guard is on
  writer = metrics_lib.MetricWriter(str(tmp_path), tensorboard=False)
  writer.write(1, {"loss": float("nan"), "lr": 0.5})
  writer.close()
  text = open(tmp_path / "metrics.jsonl").read()
  assert _strict_loads(text) == {"step": 1, "loss": None, "lr": 0.5}
  [row] = metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert np.isnan(row["loss"]) and row["lr"] == 0.5
  [row] = common.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert np.isnan(row["loss"])


def test_sample_report_names_differ_by_every_setting():
  """Two sample runs share a report name only when every setting that changes the
  samples is the same (``generate.report_name``)."""
  from experiments import generate
  base = dict(generate.options(steps=8), step=4, length=32, seed=0, prompt="")
  name = generate.report_name(base)
  assert name.startswith("analytic_8steps_") and name == generate.report_name(dict(base))
  others = [dict(base, temperature=0.9), dict(base, seed=1), dict(base, prompt="in"),
            dict(base, length=64), dict(base, step=5), dict(base, top_p=0.9)]
  names = {generate.report_name(o) for o in others}
  assert len(names) == len(others) and name not in names


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
