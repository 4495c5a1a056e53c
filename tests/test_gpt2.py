"""GPT-2 from a Hugging Face directory (tcsm_jax/models/gpt2.py), against the committed
fixtures made by transformers (tests/fixtures/make_gpt2_tiny.py)."""

import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tcsm_jax.models import gpt2
from tcsm_jax.training import partition

FIX = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.mark.parametrize("name", ["gpt2_tiny", "gpt2_tiny_cls"])
def test_fixture_logits_match_transformers(name):
  pt = gpt2.load(f"hf:{FIX}/{name}")
  tokens = np.load(f"{FIX}/{name}/reference_tokens.npy")
  ref = np.load(f"{FIX}/{name}/reference_logits.npy")
  out = np.asarray(pt.model.apply({"params": pt.params}, jnp.asarray(tokens)))
  assert out.shape == ref.shape
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
  assert pt.tokenizer.vocab_size == 300 and pt.bos_id == pt.tokenizer.eos_id


def test_bf16_compute_close_to_float32():
  pt32 = gpt2.load(f"hf:{FIX}/gpt2_tiny")
  pt16 = gpt2.load(f"hf:{FIX}/gpt2_tiny", dtype="bfloat16")
  tokens = jnp.asarray(np.load(f"{FIX}/gpt2_tiny/reference_tokens.npy"))
  a = np.asarray(pt32.model.apply({"params": pt32.params}, tokens))
  b = pt16.model.apply({"params": pt16.params}, tokens)
  assert b.dtype == jnp.bfloat16
  assert jax.tree.leaves(pt16.params)[0].dtype == jnp.float32
  err = np.abs(np.asarray(b, np.float32) - a).max()
  assert 0 < err < 0.05 * np.abs(a).max()


def test_keys_without_transformer_prefix_and_sharded(tmp_path):
  d = tmp_path / "noprefix"
  shutil.copytree(f"{FIX}/gpt2_tiny", d)
  t = load_file(str(d / "model.safetensors"))
  save_file({k.removeprefix("transformer."): v for k, v in t.items()},
            str(d / "model.safetensors"))
  pt = gpt2.load(str(d))
  tokens = jnp.asarray(np.load(d / "reference_tokens.npy"))
  # FSDP over 8 CPU devices with a zero byte threshold: every divisible array split.
  mesh = partition.make_mesh(fsdp=8)
  sh = partition.state_shardings(pt.params, mesh, min_bytes=0)
  params = jax.device_put(pt.params, sh)
  assert "fsdp" in tuple(params["transformer"]["wte"]["embedding"].sharding.spec)
  out = jax.jit(lambda p, x: pt.model.apply({"params": p}, x))(params, tokens)
  np.testing.assert_allclose(np.asarray(out), np.load(d / "reference_logits.npy"),
                             atol=1e-4, rtol=0)


def _broken(tmp_path, what):
  d = tmp_path / what
  shutil.copytree(f"{FIX}/gpt2_tiny", d)
  if what == "no_config":
    os.remove(d / "config.json")
  elif what == "bad_config":
    (d / "config.json").write_text("{not json")
  elif what == "no_weights":
    os.remove(d / "model.safetensors")
  elif what == "corrupt_weights":
    (d / "model.safetensors").write_bytes(b"\x00" * 100)
  elif what == "missing_key":
    t = load_file(str(d / "model.safetensors"))
    del t["transformer.h.1.mlp.c_fc.bias"]
    save_file(t, str(d / "model.safetensors"))
  elif what == "wrong_shape":
    cfg = json.loads((d / "config.json").read_text())
    cfg["n_embd"] = 64
    (d / "config.json").write_text(json.dumps(cfg))
  elif what == "no_tokenizer":
    os.remove(d / "tokenizer.json")
  elif what == "bad_activation":
    cfg = json.loads((d / "config.json").read_text())
    cfg["activation_function"] = "relu"
    (d / "config.json").write_text(json.dumps(cfg))
  return str(d)


@pytest.mark.parametrize("what,needle", [
    ("no_config", "config.json' does not exist"),
    ("bad_config", "not a readable JSON"),
    ("no_weights", "model.safetensors' does not exist"),
    ("corrupt_weights", "not a readable safetensors"),
    ("missing_key", "missing tensor 'h.1.mlp.c_fc.bias'"),
    ("wrong_shape", "has shape"),
    ("no_tokenizer", "tokenizer.json' does not exist"),
    ("bad_activation", "activation_function 'relu'"),
])
def test_bad_directory_is_one_line_user_error(tmp_path, what, needle):
  with pytest.raises(gpt2.PretrainedError) as e:
    gpt2.load(f"hf:{_broken(tmp_path, what)}")
  assert needle in str(e.value) and "\n" not in str(e.value)


def test_missing_dir_and_hub_id_without_huggingface_hub(tmp_path, monkeypatch):
  with pytest.raises(gpt2.PretrainedError, match="does not exist"):
    gpt2.load(f"hf:{tmp_path}/nothing/here")
  monkeypatch.setitem(sys.modules, "huggingface_hub", None)      # import fails
  with pytest.raises(gpt2.PretrainedError, match="needs huggingface_hub"):
    gpt2.load("hf:gpt2-large")
  with pytest.raises(gpt2.PretrainedError, match="not a Hugging Face"):
    gpt2.load(f"hf:{FIX}/gpt2_tiny/config.json")
  with pytest.raises(gpt2.PretrainedError, match="not a language model"):
    gpt2.load(f"hf:{FIX}/gpt2_tiny_cls", classifier=False)


def test_local_looking_paths_never_reach_the_hub(monkeypatch, tmp_path):
  class NoHub:
    @staticmethod
    def snapshot_download(*a, **k):
      raise AssertionError("hub called")
  monkeypatch.setitem(sys.modules, "huggingface_hub", NoHub)
  monkeypatch.chdir(tmp_path)
  os.makedirs("models")
  for spec in ("hf:models/gpt2", "hf:./gpt2", f"hf:{tmp_path}/x", "hf:a/b/c"):
    with pytest.raises(gpt2.PretrainedError, match="does not exist"):
      gpt2.load(spec)


def test_hub_id_offline_is_one_line(monkeypatch):
  class FakeHub:
    @staticmethod
    def snapshot_download(repo, allow_patterns=None):
      raise ConnectionError("Failed to resolve 'huggingface.co'\nmore lines")
  monkeypatch.setitem(sys.modules, "huggingface_hub", FakeHub)
  with pytest.raises(gpt2.PretrainedError) as e:
    gpt2.load("hf:gpt2-large")
  assert "could not be fetched" in str(e.value) and "\n" not in str(e.value)
