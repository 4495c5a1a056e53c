"""The notebooks in notebooks/ run top to bottom.

Each notebook is a jupytext percent-format ``.py`` file; the tests convert it to a
notebook in memory (jupytext) and execute it in a fresh ``python3`` kernel (nbclient +
ipykernel) with the notebook directory as the working directory. A failing cell fails
the test with that cell's source and traceback.

* Default suite: notebook 01 (the core as pure functions) in quick mode
  (``TCSM_NB_QUICK=1``: fewer Monte Carlo draws, smaller models).
* ``pytest -m slow``: notebooks 02 and 03 in quick mode, in two kernels at once, and
  each notebook in full.
* Default suite, no execution: each ``.py`` has its executed ``.ipynb`` next to it
  (``python notebooks/build.py`` writes them) with the same cells, every code cell run,
  a figure, and under 1 MiB.

Kernels see one CPU device (``XLA_FLAGS``, as a user's notebook would), write their
workdirs under pytest's temporary directory (``TCSM_NB_WORKDIR``) and get a
per-notebook persistent compilation cache there, which lets a subprocess reuse what its
notebook compiled (notebook 02 runs the training binary on the config it trained
with). ``TCSM_NB_SAVE=DIR`` writes the executed notebooks
(``.ipynb`` with outputs) to ``DIR``.
"""

import asyncio
import os
import pathlib
import time

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

REPO = pathlib.Path(__file__).resolve().parent.parent
NB_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(p.name for p in NB_DIR.glob("[0-9][0-9]_*.py"))
CELL_TIMEOUT = 600          # seconds per cell


def _env(quick: bool, tmp: pathlib.Path) -> dict:
  """The kernel's environment (``notebooks/build.py``'s): one CPU device, compilation
  cache and workdirs under ``tmp``."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("nb_build", NB_DIR / "build.py")
  build = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(build)
  return build.kernel_env(quick, tmp)


def _client(name: str) -> "nbclient.NotebookClient":
  nb = jupytext.read(NB_DIR / name)
  return nbclient.NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT,
                                 resources={"metadata": {"path": str(NB_DIR)}})


def run_notebooks(names, quick: bool, tmp: pathlib.Path) -> dict:
  """Executes ``names`` concurrently; ``{name: (notebook, error or None, seconds)}``."""
  clients = {n: _client(n) for n in names}

  async def one(name):
    t0 = time.time()
    try:
      await clients[name].async_execute(env=_env(quick, tmp / name[:-3]))
      err = None
    except Exception as e:  # noqa: BLE001  (reported by the test of that notebook)
      err = e
    return name, (clients[name].nb, err, time.time() - t0)

  async def all_of():
    return dict(await asyncio.gather(*(one(n) for n in names)))

  results = asyncio.run(all_of())
  save = os.environ.get("TCSM_NB_SAVE")
  if save:
    os.makedirs(save, exist_ok=True)
    for name, (nb, _, _) in results.items():
      nbformat.write(nb, os.path.join(save, name[:-3] + ".ipynb"))
  return results


def _check(name, result):
  nb, err, seconds = result
  print(f"{name}: {seconds:.1f} s")
  if err is not None:
    # CellExecutionError's message holds the failing cell's source and traceback.
    pytest.fail(f"notebooks/{name} failed after {seconds:.0f} s:\n{err}", pytrace=False)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code and all(c.get("execution_count") for c in code), "a cell did not run"
  errors = [o for c in code for o in c.get("outputs", []) if o.output_type == "error"]
  assert not errors, errors
  images = [o for c in code for o in c.get("outputs", [])
            if o.output_type in ("display_data", "execute_result")
            and "image/png" in o.get("data", {})]
  assert images, f"notebooks/{name} displayed no figure"


DEFAULT_QUICK = NOTEBOOKS[:1]     # the rest of the quick runs are slow (test budget)
SLOW_QUICK = NOTEBOOKS[len(DEFAULT_QUICK):]


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
  return run_notebooks(SLOW_QUICK, True, tmp_path_factory.mktemp("notebooks_quick"))


def test_notebooks_are_jupytext_percent_files():
  assert len(NOTEBOOKS) == 4, NOTEBOOKS
  readme = (NB_DIR / "README.md").read_text()
  for name in NOTEBOOKS:
    text = (NB_DIR / name).read_text()
    assert "formats: py:percent" in text and "# %%" in text, name
    assert "jupytext percent-format" in text, f"{name} must say what it is"
    assert name in readme, f"notebooks/README.md does not list {name}"
    nb = jupytext.reads(text, fmt="py:percent")
    kinds = {c.cell_type for c in nb.cells}
    assert kinds == {"code", "markdown"}, (name, kinds)
    nbformat.validate(nb)


def _cells(nb):
  return [(c.cell_type, c.source.strip()) for c in nb.cells]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_executed_notebook_matches_its_source(name):
  """The committed ``.ipynb`` is the ``.py`` executed: same cells, all run, small."""
  ipynb = NB_DIR / (name[:-3] + ".ipynb")
  rebuild = f"run `python notebooks/build.py {name[:2]}` and commit {ipynb.name}"
  assert ipynb.exists(), f"notebooks/{ipynb.name} is missing: {rebuild}"
  executed = nbformat.read(ipynb, as_version=4)
  assert _cells(executed) == _cells(jupytext.read(NB_DIR / name)), \
      f"notebooks/{ipynb.name} differs from notebooks/{name}: {rebuild}"
  code = [c for c in executed.cells if c.cell_type == "code"]
  assert all(c.get("execution_count") for c in code), f"{ipynb.name}: a cell did not run"
  assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs), ipynb.name
  assert ipynb.stat().st_size < 1 << 20, f"{ipynb.name} is over 1 MiB: lower --dpi"


def test_drift_is_caught(tmp_path):
  """One changed line in the source is a difference of cells."""
  nb = jupytext.read(NB_DIR / NOTEBOOKS[0])
  text = (NB_DIR / NOTEBOOKS[0]).read_text().replace("import numpy as np",
                                                     "import numpy as np  # edited", 1)
  assert _cells(jupytext.reads(text, fmt="py:percent")) != _cells(nb)


@pytest.mark.parametrize("name", DEFAULT_QUICK)
def test_notebook_quick(name, tmp_path):
  _check(name, run_notebooks([name], True, tmp_path)[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW_QUICK)
def test_notebook_quick_slow(name, quick_runs):
  _check(name, quick_runs[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_full(name, tmp_path):
  _check(name, run_notebooks([name], False, tmp_path)[name])


def test_a_failing_cell_fails_with_its_error(tmp_path):
  """The harness reports the failing cell's error (and does not hang on it)."""
  bad = tmp_path / "bad.py"
  bad.write_text("# %%\nx = 1\n\n# %%\nraise ValueError('boom from cell 2')\n")
  nb = jupytext.read(bad)
  client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=60,
                                   resources={"metadata": {"path": str(tmp_path)}})
  with pytest.raises(nbclient.exceptions.CellExecutionError, match="boom from cell 2"):
    client.execute(env=_env(True, tmp_path))
