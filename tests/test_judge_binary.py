"""experiments.judge: any text under any judge (the committed tiny GPT-2 fixture).
Bad flags are one line `error: ...` and exit 2: the table's cases run as the binary's
own `cli.run(main)` with their argv, one after another in one subprocess (one jax
start-up instead of one per case)."""

import json
import os
import subprocess
import sys

import pytest

from tcsm_jax.posttrain import judges

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(REPO, "tests", "fixtures", "gpt2_tiny")
TEXT = ("in the beginning god created the heaven and the earth\n\n"
        "and the earth was without form\nand void\n")


DRIVER = r"""
import contextlib, io, json, sys
from absl import flags
from experiments import cli
from experiments import judge as binary
out = {}
for name, args in json.loads(sys.argv[1]).items():
  flags.FLAGS.unparse_flags()
  sys.argv = ["experiments.judge"] + args
  so, se, code = io.StringIO(), io.StringIO(), 0
  with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
    try:
      cli.run(binary.main)
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  out[name] = [code, so.getvalue(), se.getvalue()]
print("RESULTS" + json.dumps(out))
"""


def _run_all(cases):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(cases)], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=600)
  line = [l for l in r.stdout.splitlines() if l.startswith("RESULTS")]
  assert line, r.stderr[-3000:]
  return json.loads(line[-1][len("RESULTS"):])


def _cases(root):
  text, empty, missing = (os.path.join(root, n) for n in ("t.txt", "empty.txt", "no"))
  j = f"--judge=hf:{FIX}"
  return {
      "no judge": ([f"--text_file={text}"], "--judge is required"),
      "no text_file": ([j], "--text_file is required"),
      "text_file missing": ([j, f"--text_file={missing}"],
                            f"--text_file '{missing}' does not exist"),
      "text_file is a dir": ([j, f"--text_file={root}"], "is a directory"),
      "empty text": ([j, f"--text_file={empty}"], "holds no sample"),
      "bad convention": ([j, f"--text_file={text}", "--gen_ppl_convention=md4"],
                         "flag --gen_ppl_convention=md4: value should be one of"),
      "bad separator": ([j, f"--text_file={text}", "--separator=comma"],
                        "flag --separator=comma: value should be one of"),
      "negative max_length": ([j, f"--text_file={text}", "--max_length=-1"],
                              "--max_length must be >= 0, got -1"),
      "judge dir missing": ([f"--judge=hf:{missing}", f"--text_file={text}"],
                            f"judge directory '{missing}' does not exist"),
      "judge workdir missing": ([f"--judge_workdir={missing}", f"--text_file={text}"],
                                f"--judge '{missing}' does not exist"),
      "ok mdlm": ([j, f"--text_file={text}", f"--json={root}/mdlm.json"], None),
      "ok sedd blank": ([j, f"--text_file={text}", "--separator=blank",
                         "--gen_ppl_convention=sedd", f"--json={root}/sedd.json"], None),
  }


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("judge"))
  with open(os.path.join(root, "t.txt"), "w") as f:
    f.write(TEXT)
  with open(os.path.join(root, "empty.txt"), "w") as f:
    f.write("\n  \n")
  cases = _cases(root)
  got = _run_all({n: a for n, (a, _) in cases.items()})
  out = {"root": root}
  for n, (rc, so, se) in got.items():
    out[n] = (rc, so, se, cases[n][1])
  return out


@pytest.mark.parametrize("name", [n for n, (_, e) in _cases("/r").items() if e])
def test_bad_flags_are_one_line_exit_2(results, name):
  rc, _, stderr, expected = results[name]
  lines = [l for l in stderr.splitlines() if l.startswith("error") or
           (l.strip() and not l[:1] in "IWEF")]
  assert rc == 2 and "Traceback" not in stderr, stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-2000:]
  assert expected in lines[0], lines[0]


def test_scores_text_as_the_library_does(results):
  judge = judges.load_judge(f"hf:{FIX}")
  lines = [l for l in TEXT.splitlines() if l.strip()]
  blocks = [b.strip("\n") for b in TEXT.split("\n\n")]
  for name, samples, conv in (("ok mdlm", lines, "mdlm"),
                              ("ok sedd blank", blocks, "sedd")):
    rc, stdout, stderr, _ = results[name]
    assert rc == 0, stderr[-2000:]
    rep = json.load(open(os.path.join(results["root"], f"{conv}.json")))
    want = judge.score_texts(samples, convention=conv)
    assert rep["gen_ppl_convention"] == conv and rep["num_samples"] == len(samples)
    assert rep["gen_perplexity"] == pytest.approx(want["gen_perplexity"], rel=1e-6)
    assert rep["gen_ppl_tokens"] == want["gen_ppl_tokens"] > 0
    assert f"perplexity         {want['gen_perplexity']:.4f}" in stdout
    assert f"tokens scored      {want['gen_ppl_tokens']}" in stdout
    assert f"convention         {conv}:" in stdout
