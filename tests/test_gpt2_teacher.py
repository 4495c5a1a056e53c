"""A Hugging Face GPT-2 as AR teacher (teacher.workdir = 'hf:DIR'): its concrete-score
targets equal brute-force enumeration on a tiny random GPT-2 with a 5-token vocabulary,
and the loader refuses a student whose vocabulary is not GPT-2's in one line."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tcsm_jax import errors, targets
from tcsm_jax.models import gpt2
from tcsm_jax.training import experiment as experiment_lib

V, L = 5, 3


@pytest.fixture(scope="module")
def tiny():
  cfg = gpt2.tiny_config(vocab_size=V, n_positions=8, n_embd=16, n_head=2, n_layer=1,
                         bos_token_id=V - 1, eos_token_id=V - 1)
  params = gpt2.init_params(cfg, seed=3, scale=0.5)        # far from uniform
  pt = gpt2.Pretrained("", cfg, gpt2.GPT2LM(cfg), params, None)
  # Brute force: log p(x) for every x in V^L, token by token, each factor from its own
  # forward pass on exactly [<|endoftext|>] + x[:t].
  fwd = jax.jit(lambda x: jax.nn.log_softmax(pt.model.apply({"params": params}, x), -1))
  seqs = np.array(list(itertools.product(range(V), repeat=L)))        # [V^L, L]
  total = np.zeros(len(seqs))
  for t in range(L):                   # rows are independent: one batch per length
    prefix = np.concatenate([np.full((len(seqs), 1), V - 1), seqs[:, :t]], 1)
    lp = np.asarray(fwd(jnp.asarray(prefix, jnp.int32))[:, -1], np.float64)
    total += lp[np.arange(len(seqs)), seqs[:, t]]
  return pt, {tuple(x): v for x, v in zip(seqs.tolist(), total)}


def _exact(logp, x0):
  out = np.zeros((len(x0), L, V))
  for b, x in enumerate(x0):
    for i in range(L):
      for y in range(V):
        z = list(x)
        z[i] = y
        out[b, i, y] = logp[tuple(z)] - logp[tuple(x)]
  return out


X0 = np.array([[0, 4, 2], [3, 3, 1], [4, 0, 0], [1, 2, 3]])


def test_exact_and_top_k_equal_enumeration(tiny):
  pt, logp = tiny
  lm = gpt2.causal_lm(pt)
  want = _exact(logp, X0)
  assert sum(np.exp(v) for v in logp.values()) == pytest.approx(1.0, abs=1e-5)
  got = np.asarray(jax.jit(targets.ar_teacher(lm, pt.params, "exact"))(jnp.asarray(X0)))
  np.testing.assert_allclose(got, want, atol=2e-5)
  top = np.asarray(jax.jit(targets.ar_teacher(lm, pt.params, "top_k", top_k=2))(
      jnp.asarray(X0)))
  kept = np.isfinite(top)
  assert ((kept.sum(-1) >= 2) & (kept.sum(-1) <= 3)).all()
  np.testing.assert_allclose(top[kept], want[kept], atol=2e-5)
  # The Top-K candidates are the teacher's own next-token ranking under BOS = EOS.
  nlp = np.asarray(targets.next_token_log_probs(lm, pt.params, jnp.asarray(X0)))
  first = {y: logp_prefix for y, logp_prefix in enumerate(nlp[0, 0])}
  marg = [np.log(sum(np.exp(v) for x, v in logp.items() if x[0] == y)) for y in range(V)]
  np.testing.assert_allclose([first[y] for y in range(V)], marg, atol=2e-5)


def test_top_k_tail_exact_at_last_position_and_taylor_is_the_gradient(tiny):
  pt, logp = tiny
  lm = gpt2.causal_lm(pt)
  want = _exact(logp, X0)
  tail = np.asarray(jax.jit(targets.ar_teacher(lm, pt.params, "top_k_tail", top_k=2,
                                               tail_samples=3))(jnp.asarray(X0),
                                                                jax.random.PRNGKey(0)))
  np.testing.assert_allclose(tail[:, -1], want[:, -1], atol=2e-5)
  assert np.isfinite(tail).all()
  # Taylor: the one-hot gradient of the soft log-probability, which equals the exact
  # log-probability at one-hot inputs; checked against central finite differences.
  soft = targets.ar_soft_log_prob_fn(lm, pt.params)
  hard = targets.ar_log_prob_fn(lm, pt.params)
  oh = jax.nn.one_hot(jnp.asarray(X0), V)
  np.testing.assert_allclose(np.asarray(soft(oh)), [logp[tuple(x)] for x in X0],
                             atol=2e-5)
  np.testing.assert_allclose(np.asarray(hard(jnp.asarray(X0))),
                             [logp[tuple(x)] for x in X0], atol=2e-5)
  tay = np.asarray(jax.jit(targets.ar_teacher(lm, pt.params, "taylor"))(
      jnp.asarray(X0)))
  eps = 2e-3
  e = eps * np.eye(L * V).reshape(L * V, L, V)                        # every direction
  vals = np.asarray(jax.jit(soft)(jnp.concatenate([oh[:1] + e, oh[:1] - e])), np.float64)
  fd = ((vals[:L * V] - vals[L * V:]) / (2 * eps)).reshape(1, L, V)
  fd -= np.take_along_axis(fd, X0[:1, :, None], -1)
  np.testing.assert_allclose(tay[:1], fd, atol=5e-3)


class _Data:
  def __init__(self, v, sha=None, tokenizer=None):
    self.vocab_size, self.tokenizer, self.info, self.name = v, tokenizer, {}, "toy"
    if sha:
      self.info = {"tokenizer_sha256": sha}


def _config(spec, mode="exact"):
  import tcsm_jax as tj
  c = tj.default_config()
  c.teacher.kind, c.teacher.workdir, c.teacher.mode = "ar", spec, mode
  c.loss.teacher_weight = 1.0
  c.data.seq_len = L
  return c


def test_loader_accepts_hf_dir_and_refuses_other_vocabularies(tiny, tmp_path):
  pt, logp = tiny
  gpt2.save(str(tmp_path / "g"), pt.config, pt.params)
  fn, frozen, pins = experiment_lib.load_teacher(_config(f"hf:{tmp_path}/g"), _Data(V))
  got = np.asarray(fn(frozen, jnp.asarray(X0)))
  np.testing.assert_allclose(got, _exact(logp, X0), atol=2e-5)
  assert pins["teacher"]["fingerprint"] == gpt2.fingerprint(str(tmp_path / "g"))
  with pytest.raises(errors.ConfigError) as e:
    experiment_lib.load_teacher(_config(f"hf:{tmp_path}/g"), _Data(27))
  msg = str(e.value)
  assert "predicts 5 tokens" in msg and "vocabulary of 27" in msg and "\n" not in msg
  with pytest.raises(gpt2.PretrainedError, match="does not exist"):
    experiment_lib.load_teacher(_config(f"hf:{tmp_path}/none"), _Data(V))


def test_loader_compares_tokenizers_by_vocabulary(tmp_path):
  """Same size, other tokenizer: refused; same vocabulary in other JSON bytes: taken."""
  import json
  import os
  from tcsm_jax.data import tokenizer as tokenizer_lib
  fix = os.path.join(os.path.dirname(__file__), "fixtures", "gpt2_tiny")
  c = _config(f"hf:{fix}", "top_k")
  with pytest.raises(errors.ConfigError) as e:
    experiment_lib.load_teacher(c, _Data(300, sha="0123456789abcdef"))
  assert "has tokenizer sha256" in str(e.value) and "0123456789ab" in str(e.value)
  text = json.dumps(json.load(open(os.path.join(fix, "tokenizer.json"))), indent=1)
  tok = tokenizer_lib.HuggingFace(text, "copy.json")
  assert tok.sha256 != tokenizer_lib.HuggingFace.from_file(
      os.path.join(fix, "tokenizer.json")).sha256
  fn, frozen, _ = experiment_lib.load_teacher(c, _Data(300, sha=tok.sha256,
                                                       tokenizer=tok))
  assert callable(fn) and frozen is not None
