"""Hugging Face GPT-2 sequence classifiers as rewards (tcsm_jax/posttrain/hf_reward.py):
differentiable with a shared tokenizer (exact and first-order neighbour differences,
guidance), a retokenizing black box otherwise (exact differences, L V + 1 classifier
calls per sequence). Tiny random weights; brute force by direct classifier calls."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tcsm_jax as tj
from tcsm_jax import errors
from tcsm_jax.data import tokenizer as tokenizer_lib
from tcsm_jax.models import gpt2
from tcsm_jax.posttrain import finetune, guidance, hf_reward
from tcsm_jax.posttrain import reward as reward_lib

FIX = os.path.join(os.path.dirname(__file__), "fixtures")
V, L = 5, 3
X0 = np.array([[0, 4, 2], [3, 3, 4], [1, 2, 3]])


@pytest.fixture(scope="module")
def shared():
  cfg = gpt2.tiny_config(vocab_size=V, n_positions=8, n_embd=16, n_head=2, n_layer=1,
                         num_labels=3, pad_token_id=V - 1, eos_token_id=V - 1)
  pt = gpt2.Pretrained("", cfg, gpt2.GPT2Classifier(cfg), gpt2.init_params(cfg, 5, 0.5),
                       None)
  return pt


_JIT = {}


def _direct(pt, row, label):
  """The classifier's log p(label | row), one jitted call on exactly ``row``."""
  key = id(pt)
  if key not in _JIT:
    _JIT[key] = jax.jit(lambda x: pt.model.apply({"params": pt.params}, x))
  logits = np.asarray(_JIT[key](jnp.asarray([row], jnp.int32))[0], np.float64)
  logits -= logits.max()
  return (logits - np.log(np.exp(logits).sum()))[label]


def test_shared_tokenizer_reward_exact_and_taylor(shared):
  pt = shared
  hard, soft = hf_reward.shared_tokenizer_reward(pt, label=2)
  want = np.zeros((len(X0), L, V))
  for b, x in enumerate(X0):
    base = _direct(pt, x, 2)
    for i in range(L):
      for y in range(V):
        z = x.copy()
        z[i] = y
        want[b, i, y] = _direct(pt, z, 2) - base
  exact = np.asarray(jax.jit(lambda x: reward_lib.sequence_reward_deltas(
      hard, x, V, "exact"))(jnp.asarray(X0)))
  np.testing.assert_allclose(exact, want, atol=1e-5)
  # Row 1 ends with the pad token: HF pools at the rightmost non-pad token, so changing
  # the last position to pad or not moves the pooled position (and the reward).
  assert abs(want[1, 2, 0]) > 1e-4
  oh = jax.nn.one_hot(jnp.asarray(X0), V)
  np.testing.assert_allclose(np.asarray(jax.jit(soft)(oh)),
                             np.asarray(jax.jit(hard)(jnp.asarray(X0))), atol=1e-6)
  tay = np.asarray(jax.jit(lambda x: reward_lib.sequence_reward_deltas(
      hard, x, V, "taylor", soft))(jnp.asarray(X0)))
  eps = 2e-3
  e = eps * np.eye(L * V).reshape(L * V, L, V)
  vals = np.asarray(jax.jit(soft)(jnp.concatenate([oh[:1] + e, oh[:1] - e])), np.float64)
  fd = ((vals[:L * V] - vals[L * V:]) / (2 * eps)).reshape(L, V)
  fd -= fd[np.arange(L), X0[0]][:, None]
  np.testing.assert_allclose(tay[0], fd, atol=5e-3)
  # Guidance tilts with the same differences (gamma times, at the point estimate).
  tilt = guidance.reward_tilt(lambda x: reward_lib.sequence_reward_deltas(
      hard, x, V, "taylor", soft), 2.0, mask_id=V)
  lp = jnp.log(jnp.full((len(X0), L, V), 1.0 / V))
  np.testing.assert_allclose(np.asarray(jax.jit(lambda x, l: tilt(x, None, l))(
      jnp.asarray(X0), lp)), 2 * tay,
                             atol=1e-5)


def test_retokenized_reward_is_exact_and_costs_lv_plus_1_calls():
  pt = gpt2.load(f"hf:{FIX}/gpt2_tiny_cls")              # byte-level BPE, 300 tokens
  char = tokenizer_lib.CharTokenizer()                   # the model's: 27 symbols
  rows_seen = []

  def decode(ids):
    rows_seen.append(len(ids))
    return char.decode(ids)

  reward = hf_reward.retokenized_reward(pt, decode, label=1, batch_size=32)
  x0 = np.array([[8, 9, 0, 1], [20, 15, 0, 4]])           # "hi a", "to d"
  got = np.asarray(jax.jit(lambda x: reward_lib.sequence_reward_deltas(
      reward, x, 27, "exact"))(jnp.asarray(x0)))
  assert sum(rows_seen) == len(x0) * (4 * 27 + 1)         # b (L V + 1) sequences

  def direct(ids):
    toks = pt.tokenizer.encode(char.decode(np.asarray(ids)))
    return _direct(pt, toks, 1)

  for b, x in enumerate(x0):
    base = direct(x)
    for i in range(4):
      for y in (0, 5, 26):
        z = x.copy()
        z[i] = y
        assert got[b, i, y] == pytest.approx(direct(z) - base, abs=1e-5)
    assert np.all(got[b, np.arange(4), x] == 0)


class _Data:
  def __init__(self, v, decode=None):
    self.vocab_size, self.decode, self.name = v, decode, "toy"
    self.tokenizer, self.info, self.encode = None, {}, None


def _cfg(spec, mode):
  c = tj.default_config()
  c.finetune.kind, c.finetune.reward = "reward", "classifier"
  c.finetune.classifier_dir, c.finetune.reward_mode = spec, mode
  c.data.seq_len = L
  return c


def test_make_reward_routes_hf_classifiers(shared, tmp_path):
  pt = shared
  gpt2.save(str(tmp_path / "c"), pt.config, pt.params)
  fn, deltas = finetune.make_reward(_cfg(f"hf:{tmp_path}/c", "taylor"), _Data(V), "")
  np.testing.assert_allclose(np.asarray(jax.jit(fn)(jnp.asarray(X0))),
                             [_direct(pt, x, 1) for x in X0], atol=1e-5)
  assert np.asarray(jax.jit(deltas)(jnp.asarray(X0))).shape == (3, L, V)
  char = tokenizer_lib.CharTokenizer()
  with pytest.raises(errors.ConfigError) as e:
    finetune.make_reward(_cfg(f"hf:{FIX}/gpt2_tiny_cls", "taylor"), _Data(27, char.decode),
                         "")
  assert "finetune.reward_mode='exact'" in str(e.value) and "\n" not in str(e.value)
  fn, _ = finetune.make_reward(_cfg(f"hf:{FIX}/gpt2_tiny_cls", "exact"),
                               _Data(27, char.decode), "")
  assert np.asarray(fn(jnp.asarray([[8, 9, 0, 1]]))).shape == (1,)
  with pytest.raises(gpt2.PretrainedError, match="not a GPT2ForSequenceClassification"):
    finetune.make_reward(_cfg(f"hf:{FIX}/gpt2_tiny", "exact"), _Data(300), "")
  c = _cfg(f"hf:{tmp_path}/c", "exact")
  c.finetune.classifier_label = 7
  with pytest.raises(errors.ConfigError, match="not a class"):
    finetune.make_reward(c, _Data(V), "")
