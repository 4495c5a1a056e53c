"""Semi-autoregressive generation past the training length (tcsm_jax/sampling/long.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tcsm_jax import processes, schedules
from tcsm_jax.sampling import long, samplers


def test_windows_cover_the_length_with_the_overlap():
  for length, block, overlap in [(200, 64, 16), (64, 64, 8), (65, 64, 0), (1000, 32, 31)]:
    ws = long.windows(length, block, overlap)
    assert ws[0][0] == 0 and ws[-1][1] == length
    assert all(b - a == min(block, length) for a, b in ws)
    for (a0, b0), (a1, b1) in zip(ws, ws[1:]):
      assert a1 <= b0 - overlap and b1 > b0          # at least `overlap` tokens shared
  for bad in [(10, 8, 8), (10, 8, -1), (0, 8, 2)]:
    with pytest.raises(ValueError):
      long.windows(*bad)


def _recording_block_sampler(v, calls):
  """A stand-in block sampler: fills free positions with (call index + position) % v
  and records the clamps it was given."""
  def fn(key, tokens, mask):
    calls.append((np.array(tokens), np.array(mask)))
    k = len(calls)
    fill = (k + np.arange(tokens.shape[1])[None]) % v
    return np.where(mask, tokens, np.broadcast_to(fill, tokens.shape))
  return fn


def test_blocks_are_conditioned_on_the_previous_overlap_and_prompts_are_kept():
  v, b, block, overlap, length = 7, 3, 16, 4, 50
  calls = []
  prompt = np.full((b, length), -1)
  prompt[:, :20] = np.arange(20) % 5            # longer than one block
  tokens, mask = prompt.clip(0), prompt >= 0
  out, info = long.generate(jax.random.PRNGKey(0), _recording_block_sampler(v, calls), b,
                            length, block, overlap, tokens, mask)
  assert out.shape == (b, length)
  np.testing.assert_array_equal(out[:, :20], prompt[:, :20])          # prompt kept
  ws = long.windows(length, block, overlap)
  assert info["blocks"] == len(calls) == sum(1 for a, c in ws if c > 20)
  done = np.zeros(length, bool)
  done[:20] = True
  prev = None
  for (t, m), (a, c) in zip(calls, [w for w in ws if w[1] > 20]):
    np.testing.assert_array_equal(m[0], done[a:c])          # clamps = everything known
    if prev is not None:                                     # the previous block's tail
      np.testing.assert_array_equal(t[:, :prev - a], out[:, a:prev])
      assert prev - a >= overlap
    done[a:c] = True
    prev = c
  assert done.all()


def test_generation_stops_at_end_of_document():
  v, b, eos = 5, 2, 4
  def block_fn(key, tokens, mask):
    return np.where(mask, tokens, eos)                       # every free token is EOS
  out, info = long.generate(jax.random.PRNGKey(0), block_fn, b, 100, 10, 2, eos_id=eos)
  assert info["stopped_at_eos"] and info["blocks"] == 1
  assert (out[:, 10:] == eos).all()
  rows = long.truncate_at_eos(np.array([[1, 2, eos, 3], [1, 1, 1, 1]]), eos)
  assert [list(r) for r in rows] == [[1, 2], [1, 1, 1, 1]]


def test_long_generation_with_the_real_sampler():
  v, b, block, overlap = 6, 4, 12, 4
  proc, sched = processes.Absorbing(v), schedules.get("log_linear")
  w = jax.random.normal(jax.random.PRNGKey(1), (proc.num_states, v))
  apply_fn = lambda params, x, s: params[x]
  fn = samplers.jit_clamped_sampler(apply_fn, proc, sched, (b, block), steps=8)
  sample_block = lambda key, t, m: fn(w, key, jnp.asarray(t), jnp.asarray(m))[0]
  prompt = np.full((b, 30), -1)
  prompt[:, :5] = 3
  out, info = long.generate(jax.random.PRNGKey(2), sample_block, b, 30, block, overlap,
                            prompt.clip(0), prompt >= 0)
  assert out.shape == (b, 30) and out.max() < v and (out[:, :5] == 3).all()
  assert info["blocks"] == len(long.windows(30, block, overlap))


def _toy_run(v, block):
  """A loaded-run stand-in for ``experiments.generate.draw``: a table network over an
  absorbing process on ``v`` symbols whose training length is ``block``."""
  import types
  from ml_collections import ConfigDict
  proc, sched = processes.Absorbing(v), schedules.get("log_linear")
  w = jax.random.normal(jax.random.PRNGKey(1), (proc.num_states, v))
  exp = types.SimpleNamespace(
      config=ConfigDict({"data": {"seq_len": block}}), process=proc, schedule=sched,
      apply_fn=lambda params, x, s: params[x],
      dataset=types.SimpleNamespace(vocab_size=v))
  return types.SimpleNamespace(experiment=exp, params=w)


@pytest.mark.parametrize("prompt_len", [0, 5])
def test_binary_draw_past_the_training_length(monkeypatch, prompt_len):
  """``experiments.generate.draw`` (what ``experiments.sample --length`` runs) compiles
  the sampler for one window and feeds it the window clamps: each window's first
  ``overlap`` positions are clamped to the previous window's tail, the sampler keeps
  every clamp, and the samples are the windows stitched."""
  from experiments import generate
  v, block, overlap, length, num = 6, 12, 4, 30, 3
  calls = []
  real = long.generate

  def spy(key, block_fn, *args, **kw):
    def recorded(k, t, m):
      x = np.asarray(block_fn(k, t, m))
      calls.append((np.array(t), np.array(m), x))
      return x
    return real(key, recorded, *args, **kw)

  monkeypatch.setattr(long, "generate", spy)
  template = np.full((length,), -1, np.int32)
  template[:prompt_len] = 3
  opts = generate.options(steps=6)
  x, info = generate.draw(_toy_run(v, block), num, 2, length, opts, template=template,
                          overlap=overlap)
  assert x.shape == (num, length) and x.dtype == np.int32 and 0 <= x.min() < v > x.max()
  assert (x[:, :prompt_len] == 3).all()
  ws = long.windows(length, block, overlap)
  assert info["blocks"] == len(ws) and len(calls) == 2 * len(ws)   # two batches of 2
  for batch in (calls[:len(ws)], calls[len(ws):]):
    for k, ((w0, w1), (t, m, out)) in enumerate(zip(ws, batch)):
      assert t.shape == m.shape == out.shape == (2, block)
      assert (out[m] == t[m]).all()                   # the sampler keeps every clamp
      if k:
        p0, p1 = ws[k - 1]
        prev = batch[k - 1][2]
        shared = p1 - w0                              # >= overlap positions
        assert shared >= overlap and m[:, :shared].all()
        np.testing.assert_array_equal(t[:, :shared], prev[:, block - shared:])
  stitched = np.concatenate([calls[0][2][:, :block]] + [
      c[2][:, block - (w1 - p1):] for c, (p0, p1), (w0, w1)
      in zip(calls[1:len(ws)], ws, ws[1:])], axis=1)
  np.testing.assert_array_equal(x[:2], stitched)
