"""Parity of the Flax GPT-2 with transformers' own modules on random weights (float32,
1e-4), several sizes including odd head counts. Needs the `parity` extra
(`pip install -e .[parity]`: torch, transformers); skipped without it."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need the parity extra (torch)")
transformers = pytest.importorskip("transformers",
                                   reason="parity tests need the parity extra (transformers)")

import jax.numpy as jnp  # noqa: E402

from tcsm_jax.models import gpt2  # noqa: E402

SIZES = [  # (n_layer, n_embd, n_head, n_positions, vocab, n_inner, activation)
    (1, 16, 1, 8, 11, None, "gelu_new"),
    (2, 36, 3, 24, 37, None, "gelu_new"),       # odd head count, head dim 12
    (3, 40, 5, 16, 50, 72, "gelu_new"),         # 5 heads of 8, n_inner not 4x
    (2, 42, 7, 12, 29, None, "gelu"),           # 7 heads of 6, exact GELU
]


def _randomize(model, seed):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for _, p in model.named_parameters():
      p.copy_(0.1 * torch.randn(p.shape, generator=g))
  return model


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", ["lm", "cls"])
def test_logits_match_transformers(tmp_path, size, kind):
  n_layer, n_embd, n_head, n_pos, vocab, n_inner, act = size
  cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=n_pos, n_embd=n_embd,
                                n_layer=n_layer, n_head=n_head, n_inner=n_inner,
                                activation_function=act, layer_norm_epsilon=1e-5,
                                num_labels=3, pad_token_id=vocab - 1)
  cls = (transformers.GPT2LMHeadModel if kind == "lm"
         else transformers.GPT2ForSequenceClassification)
  model = _randomize(cls(cfg).eval(), seed=n_embd)
  model.save_pretrained(tmp_path, safe_serialization=True)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, vocab - 1, size=(3, n_pos)).astype(np.int64)
  tokens[1, n_pos // 2:] = vocab - 1                       # right padding (classifier)
  tokens[2, 3] = vocab - 1                                  # a pad id inside the text
  with torch.no_grad():
    ref = model(torch.as_tensor(tokens)).logits.numpy()
  # The tokenizer is not part of this comparison.
  pt = gpt2.load(str(tmp_path), need_tokenizer=False)
  out = np.asarray(pt.model.apply({"params": pt.params}, jnp.asarray(tokens, jnp.int32)))
  assert out.shape == ref.shape
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
