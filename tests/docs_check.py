"""Docs check: run the README's code blocks marked as runnable, with tiny overrides.

A fenced block whose info string is ``bash runnable`` (GitHub renders the first word
only) holds commands a newcomer can paste as they are. This module extracts them and
runs them in order, in one scratch directory, so that ``train -> evaluate -> sample``
chains work, each command adapted to take seconds:

* a leading ``pip install ... &&`` is dropped (the test environment is installed);
* ``python`` is this interpreter, with the repository on ``PYTHONPATH``;
* arguments naming a file or folder of the repository (``--config=experiments/...``,
  ``launch/local.sh``) become absolute paths; every other relative path (workdirs,
  output folders) therefore lands in the scratch directory. Flags whose name ends with
  ``dir``/``out`` are outputs and are never redirected to the repository;
* a command that takes ``--config`` gets ``TINY_CONFIG`` appended (the last value of a
  flag wins): a one-layer model on 32 characters for a few steps;
* binaries listed in ``BINARY_FLAGS`` get small values of their own flags appended
  (sample counts, steps);
* commands that cannot run here are skipped with a reason (``skip_reason``): the test
  suite itself, servers (TensorBoard, Jupyter), cluster launchers, buckets, and data
  that is not in the repository (the text8/OpenWebText configs, tfds sources, a
  ``--config.data.path``/``--data``/``--source`` that neither the repository nor an
  earlier command provides).

Only ``&&`` chains, ``\\`` line continuations, ``# comments``, leading ``VAR=value``
assignments and ``cd DIR &&`` are understood; any other shell syntax (pipes,
redirections, ``;``) raises ``ValueError`` so that a README block is never half-run.

Blocks that are not marked runnable are synopses (``DIR``, ``[--optional]``,
``a|b|c``) or need what a test machine lacks; ``written_commands`` lists every command
of every shell block so that ``tests/test_readme.py`` can require each one to be run
(``expand_synopsis`` makes a synopsis a command: placeholders filled, optional groups
kept, one alternative of each ``a|b|c``) or listed with the reason it cannot run.

``python tests/docs_check.py [README.md]`` runs the check from the command line.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time
from typing import Dict, Iterable, List, Optional, Sequence

REPO = pathlib.Path(__file__).resolve().parent.parent
RUNNABLE_TAG = "runnable"
SHELL_LANGS = ("bash", "sh", "shell", "console")

# Mirrors tests/helpers.py tiny_config (plus the eval and fine-tuning sizes).
TINY_CONFIG: Dict[str, str] = {
    "data.seq_len": "64",            # room for the README's prompts and templates
    "model.num_layers": "1",
    "model.width": "32",
    "model.num_heads": "2",
    "model.cond_width": "32",
    "train.batch_size": "16",
    "train.num_steps": "3",
    "train.log_every": "1",
    "train.eval_every": "1000",
    "train.eval_batches": "1",
    "train.checkpoint_every": "1000",
    "train.async_checkpoint": "false",
    "optim.warmup_steps": "1",
    "eval.num_batches": "1",
    "eval.batch_size": "16",
    "eval.num_t": "1",
    "finetune.classifier_steps": "2",
    "finetune.num_pairs": "4",
    "finetune.pair_sample_steps": "2",
}

# Small values of each binary's own flags (only flags the binary defines: absl rejects
# unknown ones). Binaries not listed run with their own defaults.
BINARY_FLAGS: Dict[str, Sequence[str]] = {
    "experiments.train": ("--summary_samples=1",),
    "experiments.evaluate": ("--num_t=1", "--num_batches=1"),
    "experiments.sample": ("--num_samples=2", "--steps=4", "--batch_size=2"),
    "experiments.finetune": ("--num_samples=2", "--sample_steps=2"),
    "experiments.reward_sweep": ("--num_samples=2", "--sample_steps=2"),
    "experiments.compare_targets": ("--num_samples=2", "--sample_steps=2"),
}

SKIP_PROGRAMS = {
    "tensorboard": "starts a server", "jupyter": "starts a server",
    "sbatch": "needs a SLURM cluster", "srun": "needs a SLURM cluster",
    "gcloud": "needs Google Cloud", "docker": "needs docker",
    "launch/tpu_pod.sh": "needs a TPU pod", "launch/slurm.sbatch": "needs a SLURM cluster",
}
# Flags naming input data; a command whose data does not exist (in the repository or
# made by an earlier command) is skipped.
DATA_FLAGS = ("--config.data.path", "--data")
EXTERNAL_DATA = re.compile(r"text8|owt|openwebtext|lm1b", re.IGNORECASE)
OUTPUT_FLAG = re.compile(r"(dir|out|output)$")
UNSUPPORTED = ("|", ";", ">", "<", ">>", "2>", "&", "||", "$(", "`")


@dataclasses.dataclass
class Block:
  line: int            # 1-based line of the opening fence
  info: str            # the info string after the fence
  text: str            # the block's contents

  @property
  def runnable(self) -> bool:
    words = self.info.split()
    return bool(words) and words[0] in SHELL_LANGS and RUNNABLE_TAG in words[1:]


@dataclasses.dataclass
class Command:
  source: str          # the command as written (continuations joined)
  argv: List[str]      # what runs
  env: Dict[str, str]
  skip: Optional[str] = None
  # Input data the command reads (``DATA_FLAGS``, ``--source=kind:PATH``): checked when
  # it is about to run, relative to the scratch directory (an earlier command may have
  # made it; repository paths are absolute by then).
  needs: List[str] = dataclasses.field(default_factory=list)
  cwd: Optional[str] = None    # ``cd DIR &&`` before it (relative: to the scratch dir)


def extract_blocks(markdown: str) -> List[Block]:
  """Fenced code blocks (``` or ~~~, possibly indented in lists) with their info."""
  blocks, lines = [], markdown.splitlines()
  i = 0
  while i < len(lines):
    m = re.match(r"^(\s*)(`{3,}|~{3,})(.*)$", lines[i])
    if not m:
      i += 1
      continue
    indent, fence, info = m.group(1), m.group(2), m.group(3).strip()
    body, j = [], i + 1
    while j < len(lines) and not re.match(
        rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[j]):
      line = lines[j]
      body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
      j += 1
    blocks.append(Block(i + 1, info, "\n".join(body)))
    i = j + 1
  return blocks


def runnable_blocks(markdown: str) -> List[Block]:
  return [b for b in extract_blocks(markdown) if b.runnable]


def split_commands(text: str) -> List[str]:
  """Commands of a block: continuations joined, comments and blank lines dropped."""
  out, current = [], ""
  for raw in text.splitlines():
    line = raw.rstrip()
    if not current and (not line.strip() or line.lstrip().startswith("#")):
      continue
    if line.lstrip().startswith("$ ") and not current:
      line = line.lstrip()[2:]
    if line.endswith("\\"):
      current += line[:-1] + " "
      continue
    out.append((current + line).strip())
    current = ""
  if current.strip():
    out.append(current.strip())
  return out


def _segments(command: str) -> List[List[str]]:
  lex = shlex.shlex(command, posix=True, punctuation_chars="|&;<>")
  lex.whitespace_split = True
  tokens = list(lex)
  for t in tokens:
    if t in UNSUPPORTED or t.startswith(("$(", "`")):
      raise ValueError(f"unsupported shell syntax {t!r} in runnable command: {command}")
  segs, cur = [], []
  for t in tokens:
    if t == "&&":
      segs.append(cur)
      cur = []
    else:
      cur.append(t)
  segs.append(cur)
  if any(not s for s in segs):
    raise ValueError(f"empty command in: {command}")
  return segs


def _is_pip(argv: Sequence[str]) -> bool:
  return (argv[0] in ("pip", "pip3") or
          (argv[0] in ("python", "python3") and argv[1:3] == ["-m", "pip"]))


def _flag(arg: str):
  """``('--name', 'value')`` for ``--name=value``, else ``(None, arg)``."""
  if arg.startswith("-") and "=" in arg:
    name, _, value = arg.partition("=")
    return name, value
  return None, arg


def _in_repo(value: str) -> Optional[str]:
  """``value`` with a repository path made absolute, or None if it names none.

  Also ``path:argument`` (config_flags) and ``kind:path`` (``--source=text:PATH``).
  """
  if not value or "://" in value:
    return None
  head, sep, tail = value.partition(":")
  for prefix, path, suffix in ((("", value, "")),
                               ("", head, sep + tail) if sep else (None, None, None),
                               (head + sep, tail, "") if sep else (None, None, None)):
    if path and not os.path.isabs(path) and (REPO / path).exists():
      return prefix + str(REPO / path) + suffix
  return None


def skip_reason(argv: Sequence[str]) -> Optional[str]:
  """Why a command cannot run in the docs check (None: it runs)."""
  prog = argv[0]
  if prog in SKIP_PROGRAMS:
    return f"{prog} {SKIP_PROGRAMS[prog]}"
  for name, reason in SKIP_PROGRAMS.items():
    if "/" in name and prog.endswith(name):
      return reason
  if "pytest" in argv[:3] or prog == "pytest":
    return "the test suite (CI runs it)"
  for arg in argv[1:]:
    if "gs://" in arg or "s3://" in arg:
      return f"needs a bucket ({arg})"
    name, value = _flag(arg)
    if name == "--source" and value.startswith("tfds:"):
      return f"needs a tfds dataset prepared locally ({value})"
    if ((name == "--config" or value.endswith(".py"))
        and EXTERNAL_DATA.search(os.path.basename(value))
        and not any(a.startswith("--config.data.path=") for a in argv)):
      return f"needs data not in the repository ({value})"
  return None


def prepare(command: str) -> List[Command]:
  """The runnable commands of one README command line (``&&`` chain)."""
  out = []
  segs = _segments(command)
  while segs and _is_pip(segs[0]):
    segs = segs[1:]
  cwd = None
  for seg in segs:
    if seg[0] == "cd" and len(seg) == 2:
      cwd = _in_repo(seg[1]) or seg[1]
      continue
    env = {}
    while seg and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", seg[0]):
      k, _, v = seg.pop(0).partition("=")
      env[k] = v
    if not seg:
      continue
    skip = skip_reason(seg)
    argv = list(seg)
    if argv[0] in ("python", "python3"):
      argv[0] = sys.executable
    else:
      argv[0] = _in_repo(argv[0]) or argv[0]
    for k, arg in enumerate(argv[1:], 1):
      name, value = _flag(arg)
      if name is not None and OUTPUT_FLAG.search(name.lstrip("-").split(".")[-1]):
        continue
      moved = _in_repo(value)
      if moved is not None:
        argv[k] = moved if name is None else f"{name}={moved}"
    if any(_flag(a)[0] == "--config" for a in argv) or "--config" in argv:
      argv += [f"--config.{k}={v}" for k, v in TINY_CONFIG.items()]
    module = argv[argv.index("-m") + 1] if "-m" in argv[1:2] else None
    argv += list(BINARY_FLAGS.get(module, ()))
    needs = [_flag(a)[1] for a in argv if _flag(a)[0] in DATA_FLAGS]
    needs += [_flag(a)[1].partition(":")[2] for a in argv if _flag(a)[0] == "--source"]
    if cwd is not None:
      # A script argument of the directory cd'ed into (``cd notebooks && python x.py``).
      argv[1:] = [str(pathlib.Path(cwd) / a) if not a.startswith("-") and os.path.isabs(
          cwd) and (pathlib.Path(cwd) / a).exists() else a for a in argv[1:]]
    out.append(Command(command, argv, env, skip, needs, cwd))
  return out


@dataclasses.dataclass
class Result:
  command: Command
  returncode: Optional[int]       # None: skipped
  seconds: float
  output: str


def run_commands(commands: Iterable[Command], workdir: pathlib.Path,
                 timeout: float = 600.0, stop_on_failure: bool = True) -> List[Result]:
  """Runs ``commands`` in order in ``workdir``."""
  base = dict(os.environ)
  base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), base.get("PYTHONPATH")]))
  base["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"   # a user's machine
  base.setdefault("JAX_PLATFORMS", "cpu")
  # Shared by the commands of one check: a second train/evaluate of the same shapes
  # loads the executables the first one compiled.
  base["JAX_COMPILATION_CACHE_DIR"] = str(workdir / ".jax_cache")
  results = []
  for cmd in commands:
    missing = [p for p in cmd.needs if not (workdir / p).exists()]
    if cmd.skip or missing:
      reason = cmd.skip or f"needs data not in the repository ({', '.join(missing)})"
      results.append(Result(cmd, None, 0.0, reason))
      continue
    t0 = time.time()
    try:
      p = subprocess.run(cmd.argv, cwd=workdir / (cmd.cwd or "."), env={**base, **cmd.env},
                         capture_output=True, text=True, timeout=timeout)
      rc, output = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
      rc = -1
      output = f"timed out after {timeout} s\n{e.stdout or ''}{e.stderr or ''}"
    except OSError as e:
      rc, output = -1, f"could not start: {e}"
    results.append(Result(cmd, rc, time.time() - t0, output))
    if rc != 0 and stop_on_failure:
      break
  return results


@dataclasses.dataclass
class Written:
  """A command as a doc writes it (continuations joined), with its block."""
  line: int            # the block's opening fence
  runnable: bool       # in a ``bash runnable`` block (run as written by the docs check)
  command: str


def _looks_like_commands(block: Block) -> bool:
  first = next((l.strip() for l in block.text.splitlines() if l.strip()), "")
  return first.startswith(("python -m ", "python ", "pip ", "$ ", "launch/"))


def written_commands(markdown: str) -> List[Written]:
  """Every command of every shell block (info ``bash``/``sh``/... or no info string
  but starting like a command line), runnable or not, in order."""
  out = []
  for b in extract_blocks(markdown):
    words = b.info.split()
    shell = (words[0] in SHELL_LANGS) if words else _looks_like_commands(b)
    if shell:
      out += [Written(b.line, b.runnable, re.sub(r"\s+#.*$", "", " ".join(c.split())))
              for c in split_commands(b.text)]
  return out


def expand_synopsis(command: str, places: Dict[str, str],
                    choose: Optional[Dict[str, int]] = None, narrow: bool = False) -> str:
  """A synopsis line as a command: ``[--flag=v]`` groups kept (a group holding ``...``
  dropped), ``--flag=a|b|c`` the alternative ``choose[flag]`` (default the first),
  ``=DIR``-style placeholders and ``<name>`` from ``places``; ``narrow`` cuts every
  comma list (``--steps=16,64,256``) to its first value."""
  choose = choose or {}
  cmd = re.sub(r"\s*\[[^\[\]]*\.\.\.[^\[\]]*\]", "", command)
  cmd = re.sub(r"\[([^\[\]]*)\]", r"\1", cmd)

  def alternative(m):
    options = m.group(2).split("|")
    return m.group(1) + options[choose.get(m.group(1)[2:-1], 0)]
  cmd = re.sub(r"(--[\w.]+=)([^\s\"|]+(?:\|[^\s\"|]+)+)", alternative, cmd)
  if narrow:
    cmd = re.sub(r"(--\w+=)([^\s\",]+)(?:,[^\s\",]+)+", r"\1\2", cmd)
  for name, value in places.items():
    if name.startswith("<"):
      cmd = cmd.replace(name, value)
    else:
      cmd = re.sub(rf"(?<==){re.escape(name)}(?![\w/])", value, cmd)
  return cmd


def commands_of(markdown: str) -> List[Command]:
  return [c for b in runnable_blocks(markdown) for line in split_commands(b.text)
          for c in prepare(line)]


def describe_failure(result: Result) -> str:
  tail = "\n".join(result.output.strip().splitlines()[-30:])
  return (f"README command failed (exit {result.returncode}, {result.seconds:.0f} s):\n"
          f"  as written: {result.command.source}\n"
          f"  ran:        {shlex.join(result.command.argv)}\n{tail}")


def main(argv: Sequence[str]) -> int:
  import tempfile
  path = pathlib.Path(argv[1]) if len(argv) > 1 else REPO / "README.md"
  commands = commands_of(path.read_text())
  with tempfile.TemporaryDirectory(prefix="docs_check_") as tmp:
    results = run_commands(commands, pathlib.Path(tmp))
  for r in results:
    status = "skip" if r.returncode is None else f"exit {r.returncode}"
    print(f"[{status:>7}] {r.seconds:5.1f} s  {shlex.join(r.command.argv)}"
          + (f"  ({r.output})" if r.returncode is None else ""))
  bad = [r for r in results if r.returncode not in (0, None)]
  for r in bad:
    print(describe_failure(r))
  print(f"{len(results) - len(bad)} passed, {len(bad)} failed")
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
