"""README docs check: every block marked ```` ```bash runnable ```` runs (tiny overrides).

``docs_check.py`` extracts the README's fenced blocks whose info string is
``bash runnable`` and runs their commands in order in one scratch directory (train ->
evaluate -> sample chains), each with tiny config overrides; see its docstring for the
rewriting rules. The checker itself is tested on a synthetic README first, so these
tests mean something whatever the README holds.
"""

import pathlib
import sys

import pytest

import docs_check as dc

SYNTHETIC = r"""
# Title

Plain shell, not runnable:

```bash
python -m experiments.train --config=experiments/configs/kjv_tiny.py --workdir=DIR
```

```bash runnable
pip install -r requirements.txt -e . && python -m experiments.train \
    --config=experiments/configs/kjv_tiny.py --workdir=workdirs/run  # trains
# a comment line
python -m experiments.evaluate --workdir=workdirs/run
python -m experiments.sample --workdir=workdirs/run --prompt="in the beginning"
```

* In a list:

  ~~~bash runnable
  python -m pytest -q
  tensorboard --logdir=workdirs/run/tensorboard
  python -m experiments.train --config=experiments/configs/text8.py --workdir=w8
  ~~~

```python runnable
print("not shell: never run")
```

```bash runnable extra words
XLA_FLAGS=--foo python -m experiments.prepare_data --source=text:tcsm_jax/data/bundled/kjv_text8.txt.xz --out=workdirs/prep && python -m experiments.evaluate --workdir=workdirs/run --data=workdirs/prep
```
"""


def test_extracts_only_shell_blocks_marked_runnable():
  blocks = dc.extract_blocks(SYNTHETIC)
  assert [b.info for b in blocks] == ["bash", "bash runnable", "bash runnable",
                                      "python runnable", "bash runnable extra words"]
  runnable = dc.runnable_blocks(SYNTHETIC)
  assert [b.line for b in runnable] == [10, 20, 30]
  # The indented (list) block is de-indented.
  assert runnable[1].text.splitlines()[0] == "python -m pytest -q"


def test_commands_joined_comments_dropped():
  text = dc.runnable_blocks(SYNTHETIC)[0].text
  cmds = dc.split_commands(text)
  assert len(cmds) == 3
  assert cmds[0].startswith("pip install -r requirements.txt -e . && python -m "
                            "experiments.train")
  assert "--workdir=workdirs/run" in cmds[0] and "\\" not in cmds[0]


def test_rewrites_for_a_tiny_run_in_a_scratch_directory():
  cmds = dc.commands_of(SYNTHETIC)
  train, evaluate, sample = cmds[:3]
  # pip install dropped; python is this interpreter; repository inputs absolute;
  # outputs stay relative (they land in the scratch directory).
  assert train.argv[:3] == [sys.executable, "-m", "experiments.train"]
  assert f"--config={dc.REPO}/experiments/configs/kjv_tiny.py" in train.argv
  assert "--workdir=workdirs/run" in train.argv
  # Tiny overrides come after the README's own flags (the last value wins).
  assert train.argv.index("--config.train.num_steps=3") > train.argv.index(
      "--workdir=workdirs/run")
  assert "--summary_samples=1" in train.argv
  # No --config: no config overrides, only the binary's own small flags.
  assert not any(a.startswith("--config") for a in evaluate.argv)
  assert evaluate.argv[-2:] == ["--num_t=1", "--num_batches=1"]
  assert "--prompt=in the beginning" in sample.argv and "--steps=4" in sample.argv
  assert all(c.skip is None for c in cmds[:3])


def test_skips_what_cannot_run_here():
  cmds = dc.commands_of(SYNTHETIC)
  reasons = [c.skip for c in cmds[3:6]]
  assert "test suite" in reasons[0]
  assert "server" in reasons[1]
  assert "not in the repository" in reasons[2]
  prep, ev = cmds[6:]
  assert prep.skip is None and prep.env == {"XLA_FLAGS": "--foo"}
  assert (f"--source=text:{dc.REPO}/tcsm_jax/data/bundled/kjv_text8.txt.xz"
          in prep.argv)
  assert "--out=workdirs/prep" in prep.argv          # an output: never redirected
  assert ev.needs == ["workdirs/prep"]               # made by the command before
  for line in ("sbatch launch/slurm.sbatch --config=x", "gcloud compute tpus list",
               "python -m experiments.train --config=c.py --workdir=gs://b/w",
               "python -m experiments.prepare_data --source=tfds:lm1b --out=o"):
    assert dc.prepare(line)[0].skip, line


@pytest.mark.parametrize("line", ["python -c 1 | head", "python -c 1 > out.txt",
                                  "python -c 1; python -c 2", "echo $(pwd)"])
def test_unsupported_shell_syntax_is_an_error(line):
  with pytest.raises(ValueError, match="unsupported shell syntax"):
    dc.prepare(line)


def test_runner_chains_in_one_directory_and_reports_failures(tmp_path):
  markdown = "\n".join([
      "```bash runnable",
      "python -c \"open('made_by_first', 'w').write('x')\"",
      "python -c \"assert open('made_by_first').read() == 'x'\"",
      "python -m experiments.evaluate --workdir=w --data=not_there",
      "python -c \"import sys; print('boom'); sys.exit(3)\"",
      "python -c \"print('never reached')\"",
      "```"])
  results = dc.run_commands(dc.commands_of(markdown), tmp_path)
  assert [r.returncode for r in results] == [0, 0, None, 3]
  assert "not_there" in results[2].output
  msg = dc.describe_failure(results[3])
  assert "exit 3" in msg and "boom" in msg and "sys.exit(3)" in msg


def test_readme_runnable_blocks_run(tmp_path):
  readme = (dc.REPO / "README.md").read_text()
  commands = dc.commands_of(readme)
  if not commands:
    pytest.skip("README.md has no ```bash runnable block")
  results = dc.run_commands(commands, tmp_path)
  for r in results:
    status = "skipped: " + r.output if r.returncode is None else f"exit {r.returncode}"
    print(f"{r.seconds:5.1f} s  {r.command.source}  [{status}]")
  failed = [r for r in results if r.returncode not in (0, None)]
  assert not failed, dc.describe_failure(failed[0])
  assert any(r.returncode == 0 for r in results), "every runnable command was skipped"
