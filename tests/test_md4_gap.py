"""``experiments.benchmarks.md4_gap`` runs at a tiny size without MD4 (so it cannot rot),
and its measurement-only MLP swaps build the networks they say."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.benchmarks import md4_gap

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_md4_mlp_hidden_is_md4s_formula():
  # md4/networks/transformer.py::FeedForward: int(2 * 4 * dim / 3), up to a multiple of 32.
  assert md4_gap.md4_mlp_hidden(384) == 1024
  assert md4_gap.md4_mlp_hidden(256) == 704
  assert md4_gap.md4_mlp_hidden(768) == 2048


def test_swapped_networks_have_the_swapped_mlp():
  apply_fn, params = md4_gap._model(1, 32, 16, "md4_mlp")
  block = params["trunk"]["block_0"]
  assert block["mlp_in"]["kernel"].shape == (32, 96)
  assert block["mlp_gate"]["kernel"].shape == (32, 96)
  x = jnp.zeros((2, 16), jnp.int32)
  out = apply_fn(params, x, jnp.ones((2,)))
  assert out.shape == (2, 16, 27) and np.all(np.isfinite(np.asarray(out)))
  # Without the GELU the MLP is linear: a different function from the default's.
  f_plain, p = md4_gap._model(1, 32, 16)
  f_lin, _ = md4_gap._model(1, 32, 16, "no_gelu")
  a, b = (np.asarray(jax.jit(f)(p, x, jnp.ones((2,)))) for f in (f_plain, f_lin))
  assert a.shape == b.shape and not np.allclose(a, b)


def test_tiny_run_prints_every_table(capsys):
  best = md4_gap.run("1x32:16:2:4", repeats=1, md4=False)
  out = capsys.readouterr().out
  for title in ("null network", "forward", "loops (4 steps)"):
    assert title in out, out
  assert set(best) == {"tcsm", "tcsm gumbel32", "tcsm no_gelu", "tcsm md4_mlp"}
  assert all(0 < t < 60 for t in best.values()), best


@pytest.mark.parametrize("flags_", [["--setting=abc"], ["--setting=1x32:16:2:0"],
                                    ["--repeats=0"]])
def test_bad_flags_are_one_line_and_status_2(flags_):
  proc = subprocess.run([sys.executable, "-m", "experiments.benchmarks.md4_gap"] + flags_,
                        capture_output=True, text=True, timeout=120, cwd=_REPO,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: --"), proc.stderr[-2000:]
