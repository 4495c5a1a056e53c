"""Every measured result names its date, machine and commit (../shared/DESIGN.md, Results).

A file in ``experiments/results`` speaks of the project, never of a working period of
the people who made it ("this session", "today"): such a phrase means nothing to a
reader of the clone. Every markdown report and text table there names the commit
(a short hash) its numbers come from. Run directories (``runs/``) and compile caches
(``jax_cache/``) are not results and are skipped; CSV and JSON files are read back by
code and carry their provenance in ``experiments/results/README.md`` and their
directory's ``REPORT.md`` instead.
"""

import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
SKIPPED_DIRS = {"runs", "jax_cache"}

# "this session", "the session(s)", "earlier session", "the fifth session", "today".
WORKING_PERIOD = re.compile(
    r"\b(?:this|the|that|earlier|previous|last|next|first|second|third|fourth|fifth|"
    r"sixth|seventh|eighth|ninth|tenth)\s+sessions?(?:'s)?\b|\btoday\b", re.IGNORECASE)
# A short (or full) hash standing alone: not part of a longer word or number.
HASH = re.compile(r"(?<![0-9A-Za-z])[0-9a-f]{7,40}(?![0-9A-Za-z])")


def result_texts():
  """Markdown and text files under experiments/results, without run dirs and caches."""
  files = []
  for path in sorted(RESULTS.rglob("*")):
    rel = path.relative_to(RESULTS)
    if SKIPPED_DIRS.intersection(rel.parts[:-1]) or not path.is_file():
      continue
    if path.suffix in (".md", ".txt"):
      files.append(path)
  return files


def known_commits(candidates):
  """The candidates that name a commit of this clone, or None when that cannot be
  asked (no git, no repository, a shallow clone without the old history)."""
  try:
    shallow = subprocess.run(
        ["git", "rev-parse", "--is-shallow-repository"], cwd=ROOT,
        capture_output=True, text=True, timeout=10)
    if shallow.returncode != 0 or shallow.stdout.strip() != "false":
      return None
    out = subprocess.run(
        ["git", "cat-file", "--batch-check"], cwd=ROOT, input="".join(
            f"{c}^{{commit}}\n" for c in candidates),
        capture_output=True, text=True, timeout=20)
  except (OSError, subprocess.SubprocessError):
    return None
  if out.returncode != 0:
    return None
  lines = out.stdout.splitlines()
  return {c for c, line in zip(candidates, lines) if line.split()[1:2] == ["commit"]}


def test_result_files_exist():
  names = {p.relative_to(RESULTS).as_posix() for p in result_texts()}
  assert "README.md" in names and "study_objectives/REPORT.md" in names, names


def test_no_working_period_phrases():
  bad = []
  for path in result_texts():
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
      for m in WORKING_PERIOD.finditer(line):
        bad.append(f"{path.relative_to(ROOT)}:{n}: {m.group(0)!r}")
  assert not bad, ("results speak of a working period; name the date, machine and "
                   "commit instead:\n" + "\n".join(bad))


def test_every_report_and_table_names_a_commit():
  candidates = {}
  for path in result_texts():
    candidates[path] = sorted(set(HASH.findall(path.read_text(errors="replace"))))
  everything = sorted({c for cs in candidates.values() for c in cs})
  known = known_commits(everything) if everything else set()
  missing = []
  for path, cs in candidates.items():
    if known is None:  # no history to ask: a hash with a digit and a letter a-f
      ok = any(re.search(r"\d", c) and re.search(r"[a-f]", c) for c in cs)
    else:
      ok = any(c in known for c in cs)
    if not ok:
      missing.append(str(path.relative_to(ROOT)))
  assert not missing, ("these results name no commit of this repository (a short hash, "
                       "e.g. 'at commit abc1234'):\n" + "\n".join(missing))


@pytest.mark.parametrize("line, bad", [
    ("Run on this session's 2-core CPU", True),
    ("re-run in the fifth session", True),
    ("today the test command takes 399 s", True),
    ("an earlier session measured it", True),
    ("Measured 2026-11-26 on one NVIDIA H200 at commit ae8a9e4", False),
    ("the sessionless path", False),
])
def test_the_phrase_rule(line, bad):
  assert bool(WORKING_PERIOD.search(line)) == bad


def test_the_hash_pattern():
  assert HASH.findall("at commit ae8a9e4 with: cmd") == ["ae8a9e4"]
  assert HASH.findall("1,400,229 tokens/s; 2026-11-26; decaffeinated") == []


# ------------------------------------------- every result indexed, no machine's paths

# An absolute path of one machine: a user's home, root's, or a checkout under /work.
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|home|root|Users)/")
INDEX_NAMES = ("README.md", "REPORT.md")


def unindexed(root):
  """Entries under ``root`` that its ``README.md`` does not index: a top-level file or
  directory must be named in backticks there (`name` or `name/`); a file inside a
  directory must be named in its directory's README.md/REPORT*.md or in the index."""
  index = (root / "README.md").read_text()
  missing = []
  for path in sorted(root.rglob("*")):
    rel = path.relative_to(root)
    if SKIPPED_DIRS.intersection(rel.parts) or rel.as_posix() == "README.md":
      continue
    if len(rel.parts) == 1:
      if not re.search(rf"`{re.escape(rel.name)}/?`", index):
        missing.append(rel.as_posix())
    elif path.is_file() and not (path.name in INDEX_NAMES or
                                 path.name.startswith("REPORT")):
      texts = [index] + [p.read_text(errors="replace") for p in sorted(path.parent.glob(
          "*.md")) if p.name in INDEX_NAMES or p.name.startswith("REPORT")]
      if not any(path.name in t for t in texts):
        missing.append(rel.as_posix())
  return missing


def machine_paths(root):
  """``file:line`` of every absolute path of one machine in a file under ``root``."""
  bad = []
  for path in sorted(root.rglob("*")):
    rel = path.relative_to(root)
    if SKIPPED_DIRS.intersection(rel.parts) or not path.is_file() or (
        path.suffix in (".png", ".jpg", ".pdf", ".npz")):
      continue
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
      if MACHINE_PATH.search(line):
        bad.append(f"{rel.as_posix()}:{n}")
  return bad


def test_every_result_is_indexed_in_the_readme():
  missing = unindexed(RESULTS)
  assert not missing, ("experiments/results/README.md does not index these (add a row "
                       "with command, date, machine, commit):\n" + "\n".join(missing))


def test_no_result_cites_an_absolute_path_of_one_machine():
  bad = machine_paths(RESULTS)
  assert not bad, ("these results cite an absolute path of one machine (write it "
                   "relative to the repository, e.g. workdirs/kjv_tiny):\n" +
                   "\n".join(bad))


def test_the_index_and_path_rules_can_fail(tmp_path):
  (tmp_path / "README.md").write_text("| `a.txt` | cmd |\n| `d/` | (`x.csv`) |\n")
  (tmp_path / "a.txt").write_text("Measured at abc1234 with --workdir=workdirs/run\n")
  (tmp_path / "d").mkdir()
  (tmp_path / "d" / "x.csv").write_text("1\n")
  (tmp_path / "d" / "REPORT.md").write_text("see plot.png\n")
  (tmp_path / "d" / "plot.png").write_bytes(b"\x89PNG")
  assert unindexed(tmp_path) == [] and machine_paths(tmp_path) == []
  (tmp_path / "b.txt").write_text("cmd --out=/home/me/run\n")
  (tmp_path / "d" / "y.json").write_text('{"workdir": "/work/main/w"}\n')
  assert unindexed(tmp_path) == ["b.txt", "d/y.json"]
  assert machine_paths(tmp_path) == ["b.txt:1", "d/y.json:1"]
