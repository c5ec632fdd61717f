"""Tree masks, keep_path and early-exit hidden states on the non-GPT-2 switches.

Gemma 2 has them all at once: rotary positions (tree nodes share positions by
depth), a sliding window shorter than prefix + tree (the window must follow
positions, not slots), grouped KV heads in the cache, soft-capped final logits.
"""

import jax
import jax.numpy as jnp
import numpy as np

from lookahead_jax import drafting, models
from tests.helpers import naive_ancestor_mask, perturbed, root_path

CONFIG = models.gemma2(
    vocab_size=32, num_layers=3, num_heads=4, num_kv_heads=2, d_model=32, head_dim=8,
    mlp_dim=48, max_length=40, sliding_window=3, attn_logit_softcap=5.0,
    final_logit_softcap=3.0,
)  # fmt: skip
PARENTS = [[-1, 0, 0, 1, 3, 2], [-1, -1, 1, 2, 0, 4]]  # two 6-node trees (row 1: two roots)


@jax.jit
def _step(model, tokens, cache, mask=None):
    return model(tokens, cache, tree_mask=mask)


@jax.jit
def _full(model, tokens):
    return model(tokens, return_hidden=True)


def _last_logits(model, sequence):
    """Logits after ``sequence``; right-padded to one width (causal: padding cannot matter)."""
    padded = jnp.zeros((1, 16), jnp.int32).at[0, : len(sequence)].set(sequence)
    return _full(model, padded)[0][0, len(sequence) - 1]


def test_tree_logits_equal_path_logits_and_keep_path_equals_chain():
    model = models.Model(CONFIG, perturbed(models.init_params(CONFIG, jax.random.key(0)), 0.3, 1))
    rng = np.random.default_rng(0)
    prefix_lengths = np.array([5, 7])
    prefix = jnp.asarray(rng.integers(0, 32, (2, 7)), jnp.int32)
    nodes = jnp.asarray(rng.integers(0, 32, (2, 6)), jnp.int32)
    mask = jnp.asarray(np.stack([naive_ancestor_mask(p) for p in PARENTS]))
    cache = models.init_cache(CONFIG, 2, 20)
    _, cache = _step(model, prefix, cache)
    cache = models.rewind(cache, jnp.asarray(prefix_lengths, jnp.int32))
    tree_logits, tree_cache = _step(model, nodes, cache, mask)
    for row in range(2):
        for node in range(6):
            path = root_path(PARENTS[row], node)
            sequence = jnp.concatenate([prefix[row, : prefix_lengths[row]], nodes[row, path]])
            want = _last_logits(model, sequence)
            np.testing.assert_allclose(tree_logits[row, node], want, atol=2e-5)
    paths = [root_path(PARENTS[0], 4), root_path(PARENTS[1], 5)]
    path_array = np.zeros((2, 6), np.int32)
    for row, path in enumerate(paths):
        path_array[row, : len(path)] = path
    kept = models.keep_path(
        tree_cache, jnp.asarray(prefix_lengths, jnp.int32), jnp.asarray(path_array),
        jnp.asarray([len(p) for p in paths], jnp.int32),
    )  # fmt: skip
    probe = jnp.asarray([[3], [9]], jnp.int32)
    probe_logits, _ = _step(model, probe, kept)
    for row in range(2):
        sequence = jnp.concatenate(
            [prefix[row, : prefix_lengths[row]], nodes[row, paths[row]], probe[row]]
        )
        want = _last_logits(model, sequence)
        np.testing.assert_allclose(probe_logits[row, 0], want, atol=2e-5)


def test_hidden_states_and_early_exit():
    model = models.Model(CONFIG, perturbed(models.init_params(CONFIG, jax.random.key(2)), 0.3, 3))
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 32, (2, 9)), jnp.int32)
    logits, _, hidden = _full(model, tokens)
    assert hidden.shape == (4, 2, 9, 32)
    np.testing.assert_allclose(
        models.logits_from_hidden(CONFIG, model.params, hidden[-1]), logits, atol=1e-5
    )
    assert float(jnp.max(jnp.abs(logits))) <= CONFIG.final_logit_softcap
    # The first two blocks as a model of their own: its logits are the exit's.
    exit_model = drafting.early_exit_model(model, 2)
    assert exit_model.config.sliding_layers == (True, False)
    exit_logits = _full(exit_model, tokens)[0]
    np.testing.assert_allclose(
        exit_logits, models.logits_from_hidden(CONFIG, model.params, hidden[2]), atol=1e-5
    )
