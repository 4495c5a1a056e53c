"""The persistent compilation cache every binary turns on (``experiments/cli.py``)."""

import os

import jax
import jax.numpy as jnp
import pytest
from absl import flags
from jax import monitoring
from jax._src import compilation_cache

from experiments import cli


@pytest.fixture
def clean_env(monkeypatch):
  for k in ("TCSM_JAX_CACHE", "TCSM_COMPILE_CACHE", "JAX_COMPILATION_CACHE_DIR",
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"):
    monkeypatch.delenv(k, raising=False)
  return monkeypatch


def test_cache_dir_default_env_and_off(clean_env, tmp_path):
  assert cli.compile_cache_dir() == os.path.expanduser(
      os.path.join("~", ".cache", "tcsm_jax", "jax_cache"))
  clean_env.setenv("TCSM_JAX_CACHE", str(tmp_path / "c"))
  assert cli.compile_cache_dir() == str(tmp_path / "c")
  clean_env.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))  # JAX's wins
  assert cli.compile_cache_dir() == str(tmp_path / "jax")
  for off in ("0", "false", "no"):
    clean_env.setenv("TCSM_COMPILE_CACHE", off)
    assert cli.compile_cache_dir() == ""
  # experiments.study defines its own --compile_cache; when a test in this process
  # imported it first, define_compile_cache_flag leaves that flag alone.
  before = flags.FLAGS["compile_cache"] if "compile_cache" in flags.FLAGS else None
  cli.define_compile_cache_flag()
  if before is None:
    assert flags.FLAGS["compile_cache"].default is True
  else:
    assert flags.FLAGS["compile_cache"] is before


def test_a_second_compilation_loads_from_the_cache(clean_env, tmp_path):
  """What a second process sees: the executable written by the first compilation is
  loaded from the cache directory (in-process, with JAX's in-memory caches cleared;
  two real processes of the main job: the slow test below)."""
  saved = {k: getattr(jax.config, k) for k in (
      "jax_enable_compilation_cache", "jax_compilation_cache_dir",
      "jax_persistent_cache_min_compile_time_secs",
      "jax_persistent_cache_min_entry_size_bytes")}
  hits = []
  listener = lambda event, **kw: hits.append(event)
  monitoring.register_event_listener(listener)
  clean_env.setenv("TCSM_JAX_CACHE", str(tmp_path / "cache"))
  clean_env.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  try:
    compilation_cache.reset_cache()
    assert cli.use_compile_cache() == str(tmp_path / "cache")
    f = lambda x: jnp.sin(x) * 3.0 + jnp.cos(x) ** 2
    x = jnp.arange(7.0)
    want = jax.jit(f)(x)
    assert os.listdir(tmp_path / "cache"), "nothing written"
    jax.clear_caches()
    got = jax.jit(f)(x)
    assert "/jax/compilation_cache/cache_hits" in hits
    assert bool(jnp.all(got == want))
    clean_env.setenv("TCSM_COMPILE_CACHE", "0")
    assert cli.use_compile_cache() == ""
    assert not jax.config.jax_enable_compilation_cache
  finally:
    monitoring.unregister_event_listener(listener)
    for k, v in saved.items():
      jax.config.update(k, v)
    compilation_cache.reset_cache()


def test_second_start_of_the_main_job_hits_the_cache(tmp_path):
  from experiments.benchmarks import compile_cache  # pylint: disable=g-import-not-at-top
  cache = str(tmp_path / "cache")
  first = compile_cache.run_once(str(tmp_path / "a"), cache, 3)
  second = compile_cache.run_once(str(tmp_path / "b"), cache, 3)
  assert first["misses"] > 0 and first["hits"] == 0, first
  assert second["hits"] >= first["misses"] and second["misses"] == 0, second
  assert second["backend_s"] < first["backend_s"], (first, second)
