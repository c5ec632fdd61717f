"""The draft model's proposal: its own greedy continuation, ragged rows, a lagging cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookahead_jax import drafting, models
from lookahead_jax.sampling import Sampling
from tests import helpers

CONFIG = models.TransformerConfig(
    vocab_size=16, num_layers=2, num_heads=2, d_model=16, max_length=48
)
MAX_DRAFT = 4


@pytest.fixture(scope="module")
def model():
    # Perturbed weights, so the greedy token depends on the context.
    params = helpers.perturbed(models.init_params(CONFIG, jax.random.key(1)), 0.5, 1)
    return models.Model(CONFIG, params)


@jax.jit
def _next_token(model, seq, position):
    logits, _ = model(seq[None], models.init_cache(CONFIG, 1, seq.shape[0]))
    return jnp.argmax(logits[0, position])


def _greedy_continuation(model, tokens, length, count):
    """The model's greedy tokens after ``tokens[:length]``: causal, so one fixed-width
    forward per token reads the next token at the last filled position."""
    seq = np.asarray(tokens).copy()
    for position in range(length - 1, length - 1 + count):
        seq[position + 1] = int(_next_token(model, jnp.asarray(seq), position))
    return seq[length : length + count]


# Slow tier: the fast tier's greedy-equals-plain-greedy generations with a draft model cover
# the proposal; this checks it on its own (ragged rows, a lagging cache, nothing drafted).
@pytest.mark.slow
def test_propose_drafts_the_greedy_continuation_per_row(model):
    drafter = drafting.draft_model(model)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, 16, size=(3, 40)), jnp.int32)
    prompt_lengths = jnp.asarray([5, 7, 6], jnp.int32)

    @jax.jit
    def propose(lengths, num_draft):
        state = drafter.init(tokens[:, :8], prompt_lengths, 40)
        _, draft = drafter.propose(
            state,
            jax.random.key(0),
            tokens,
            lengths,
            num_draft,
            max_draft=MAX_DRAFT,
            sampling=Sampling(),
        )
        return draft

    # Rows behind by 2, 9 and 14 committed tokens (plain rounds in between), ragged lengths.
    lengths = jnp.asarray([7, 16, 20], jnp.int32)
    draft = propose(lengths, jnp.asarray([4, 1, 3], jnp.int32))
    for row, (length, count) in enumerate(zip([7, 16, 20], [4, 1, 3], strict=True)):
        want = _greedy_continuation(model, tokens[row], length, count)
        np.testing.assert_array_equal(draft.tokens[row, :count], want)
        # The proposal's distribution is the model's: one-hot where greedy.
        np.testing.assert_array_equal(np.argmax(draft.probs[row, :count], -1), want)
    # A round in which no row drafts proposes nothing.
    nothing = propose(lengths, jnp.zeros((3,), jnp.int32))
    np.testing.assert_array_equal(nothing.tokens, 0)
    np.testing.assert_array_equal(nothing.probs, 0.0)
