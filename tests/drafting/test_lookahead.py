"""Jacobi lookahead decoding and prompt-seeded memories: layout, pool, losslessness, errors."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import lookahead_jax
from lookahead_jax import drafting, models
from lookahead_jax.decoding import generate
from lookahead_jax.drafting import constant as _always_draft
from lookahead_jax.drafting import jacobi_lookahead
from lookahead_jax.drafting.stochastic_ngram import lookup as ngram_lookup
from lookahead_jax.sampling import Sampling
from tests import helpers
from tests.helpers import continuation_codes, exact_continuation_law, perturbed

# These tests exercise drafting itself: every round drafts (the default controller may not).
ALWAYS_DRAFT = _always_draft()

CONFIG = models.TransformerConfig(
    vocab_size=16, num_layers=2, num_heads=2, d_model=16, max_length=64
)
MAX_NEW = 16
SMALL = (("window", 3), ("ngram", 3), ("guesses", 2))


@pytest.fixture(scope="module")
def target():
    params = jax.jit(lambda key: perturbed(models.init_params(CONFIG, key), 0.3, 4))
    return models.Model(CONFIG, params(jax.random.key(0)))


def make(kind, memory=None):
    if kind == "ar":
        return None
    if kind == "lookahead":
        return drafting.lookahead(CONFIG.vocab_size, memory=memory, **dict(SMALL))
    if kind == "lookahead_default":
        return drafting.lookahead(CONFIG.vocab_size, memory=memory)
    if kind == "recycling_seeded":
        return drafting.token_recycling(CONFIG.vocab_size)
    if kind == "recycling_cold":
        return drafting.token_recycling(CONFIG.vocab_size, seed_from_prompt=False)
    if kind == "ngram_seeded":
        return drafting.stochastic_ngram(CONFIG.vocab_size)
    if kind == "ngram_cold":
        return drafting.stochastic_ngram(CONFIG.vocab_size, seed_from_prompt=False)
    raise ValueError(kind)


@functools.partial(jax.jit, static_argnames=("kind", "eos_id", "max_new"))
def run(target, prompt, lengths, memory=None, *, kind, eos_id=None, max_new=MAX_NEW):
    return generate(
        target,
        prompt,
        lengths,
        jax.random.key(0),
        max_new_tokens=max_new,
        drafter=make(kind, memory),
        controller=ALWAYS_DRAFT,
        eos_id=eos_id,
    )


def prompts(batch, width, seed, period=None):
    return helpers.ragged_prompts(
        CONFIG.vocab_size, batch, width, seed, min_length=2, period=period
    )


# ---------------------------------------------------------------------------------------
# Layout and pool


def test_window_nodes_see_one_token_per_depth_of_their_column_path():
    window, ngram, guesses = 4, 3, 2
    parent, depth, mask = jacobi_lookahead._layout(window, ngram, guesses)
    rest = ngram - 1
    num_chain = guesses * rest
    # A block token's position is the number of tokens it sees (root included) minus one.
    np.testing.assert_array_equal(mask.sum(1)[1:] - 1, depth)
    for r in range(rest):
        for j in range(window):
            node = num_chain + r * window + j
            assert depth[node] == j + 1 + r
            seen = {int(depth[k - 1]) for k in np.flatnonzero(mask[node + 1]) if k > 0}
            assert seen == set(range(1, j + 2 + r))  # every depth once, up to its own
            # Its column's path: row 0 up to column j, then column j's rows.
            path = [num_chain + jj for jj in range(j + 1)]
            path += [num_chain + rr * window + j for rr in range(1, r + 1)]
            np.testing.assert_array_equal(np.flatnonzero(mask[node + 1, 1:]), sorted(path))
    # The verification chains see the root and their own chain only.
    for g in range(guesses):
        for d in range(rest):
            node = g * rest + d
            assert parent[node] == (-1 if d == 0 else node - 1)
            np.testing.assert_array_equal(
                np.flatnonzero(mask[node + 1, 1:]), np.arange(g * rest, node + 1)
            )


def reference_pool(items, vocab, guesses):
    """A dict of lists: per first token, the distinct continuations, oldest evicted."""
    pool = {t: [] for t in range(vocab)}
    stored = {t: 0 for t in range(vocab)}
    slots = {t: [None] * guesses for t in range(vocab)}
    for item in items:
        first, rest = item[0], tuple(item[1:])
        if rest in [s for s in slots[first] if s is not None]:
            continue
        slots[first][stored[first] % guesses] = rest
        stored[first] += 1
    for t in range(vocab):
        pool[t] = slots[t]
    return pool, stored


def test_pool_insertion_dedupes_and_replaces_the_oldest():
    vocab, guesses, ngram = 5, 3, 3
    rng = np.random.default_rng(0)
    sequences = rng.integers(0, 3, (4, 30))  # few distinct n-grams: duplicates and eviction
    lengths = np.array([30, 7, 0, 18])
    pool = jax.jit(drafting.insert_ngrams)(
        jacobi_lookahead.empty_pool(vocab, guesses, ngram), sequences, lengths
    )
    items = [sequences[s, i : i + ngram] for s in range(4) for i in range(lengths[s] - ngram + 1)]
    want, stored = reference_pool([list(map(int, x)) for x in items], vocab, guesses)
    np.testing.assert_array_equal(pool.num_stored, [stored[t] for t in range(vocab)])
    for t in range(vocab):
        for g in range(min(stored[t], guesses)):
            assert tuple(np.asarray(pool.ngrams[t, g]).tolist()) == want[t][g]
    assert max(stored.values()) > guesses  # the oldest were replaced


def test_documents_seed_every_n_gram_memory():
    vocab = CONFIG.vocab_size
    document = jnp.asarray([[3, 7, 1, 9, 3, 7, 2, 0]], jnp.int32)
    length = jnp.asarray([8], jnp.int32)
    pool = drafting.lookahead_pool(vocab, document, length, ngram=3, guesses=2)
    np.testing.assert_array_equal(pool.ngrams[3], [[7, 1], [7, 2]])
    table = drafting.seed_table(drafting.initial_table(vocab, 4), document, length)
    assert int(table[3, 0]) == 7 and int(table[7, 0]) == 2 and int(table[7, 1]) == 1
    memory = drafting.seed_memory(drafting.empty_memory(2, 64, 3), document, length, vocab)
    tokens, log_probs, found = jax.jit(ngram_lookup)(
        memory, jnp.asarray([[9, 3], [-1, 7]], jnp.int32)
    )
    assert bool(found.all()) and tokens[:, 0].tolist() == [7, 2]
    np.testing.assert_array_equal(log_probs[:, 0], [0.0, 0.0])


# ---------------------------------------------------------------------------------------
# Generation


@pytest.mark.parametrize("eos_id", [None, 5])
@pytest.mark.parametrize(
    "kind",
    [
        "lookahead",
        # The defaults (31 scored nodes) compile slowly; seeded Token Recycling is also
        # the default in tests/drafting/test_tree_drafters.py.
        pytest.param("lookahead_default", marks=pytest.mark.slow),
        pytest.param("recycling_seeded", marks=pytest.mark.slow),
    ],
)
def test_greedy_equals_plain_greedy_on_ragged_batches(target, kind, eos_id):
    prompt, lengths = prompts(4, 12, seed=1, period=4)
    plain = run(target, prompt, lengths, kind="ar", eos_id=eos_id)
    spec = run(target, prompt, lengths, kind=kind, eos_id=eos_id)
    np.testing.assert_array_equal(spec.lengths, plain.lengths)
    np.testing.assert_array_equal(spec.tokens, plain.tokens)
    assert np.all(spec.stats.accepted <= spec.stats.drafted)
    if eos_id is None:
        assert int(spec.stats.accepted.sum()) > 0
        assert int(spec.stats.target_calls.sum()) < int(plain.stats.target_calls.sum())


@pytest.mark.slow  # four more compilations; greedy equality on the batch stays fast
def test_each_row_equals_the_row_alone(target):
    prompt, lengths = prompts(4, 12, seed=1, period=4)  # the greedy test's shape
    batch = run(target, prompt, lengths, kind="lookahead")
    for row in range(4):
        alone = run(target, prompt[row : row + 1], lengths[row : row + 1], kind="lookahead")
        np.testing.assert_array_equal(alone.tokens[0], batch.tokens[row])


@pytest.mark.parametrize("kind", ["recycling", "ngram"])
def test_prompt_seeding_drafts_the_prompt_from_the_first_round(kind):
    # A periodic prompt: after ...3 7 1 9 3 the prompt says 7 1 9 3 7 comes next.
    prompt = jnp.asarray([[3, 7, 1, 9, 3, 7, 1, 9, 3]], jnp.int32)
    lengths = jnp.asarray([9], jnp.int32)
    want = [7, 1, 9, 3, 7]
    for seeded in (True, False):
        if kind == "recycling":
            drafter = drafting.token_recycling(16, seed_from_prompt=seeded)
        else:
            drafter = drafting.stochastic_ngram(16, widths=(2, 1, 1, 1, 1), seed_from_prompt=seeded)
        state = drafter.init(prompt, lengths, 32)
        _, draft = drafter.propose(state, jax.random.key(0), prompt, lengths, sampling=Sampling())
        tree = draft.tree
        # The best-ranked chain below the root: each node's first child.
        path, node = [], -1
        for _ in range(len(want)):
            children = np.flatnonzero(np.asarray(tree.valid[0] & (tree.parent[0] == node)))
            if children.size == 0:
                break
            node = int(children[0])
            path.append(int(tree.token[0, node]))
        if seeded:
            assert path == want
        else:
            assert path != want


@jax.jit
@chex.assert_max_traces(n=1)
def serve(target, prompt, lengths, pool):
    """One request of a stream, the pool carried in and out (one compilation)."""
    # 8 guesses per key: with 16 tokens every key is crowded, 2 would forget at once.
    drafter = drafting.lookahead(CONFIG.vocab_size, window=3, ngram=3, guesses=8, memory=pool)
    return generate(
        target,
        prompt,
        lengths,
        jax.random.key(0),
        max_new_tokens=40,
        drafter=drafter,
        controller=ALWAYS_DRAFT,
    )


def test_memory_across_requests_accepts_a_repeated_request(target):
    chex.clear_trace_counter()
    prompt, lengths = prompts(1, 6, seed=7)
    pool = jacobi_lookahead.empty_pool(CONFIG.vocab_size, 8, 3)
    first = serve(target, prompt, lengths, pool)
    other_prompt, other_lengths = prompts(1, 6, seed=8)
    # The pool is the request-independent part of the state (same pytree every call).
    between = serve(target, other_prompt, other_lengths, drafting.memory_of(first.drafter_state))
    again = serve(target, prompt, lengths, drafting.memory_of(between.drafter_state))
    np.testing.assert_array_equal(again.tokens, first.tokens)
    # The loop showed the drafter every committed token (its observe hook).
    np.testing.assert_array_equal(first.drafter_state.num_seen, first.lengths)
    assert int(again.stats.target_calls[0]) < int(first.stats.target_calls[0])
    assert int(again.stats.accepted[0]) > int(first.stats.accepted[0])


# Slow tier: the drafts are fixed tokens (one-hot), whose losslessness the verifier's own
# law test proves in the fast tier; this one runs the whole drafter through it.
@pytest.mark.slow
def test_sampled_lookahead_has_the_target_law():
    """Exact law of 3-token continuations vs samples (chi-square), candidates from a pool."""
    config = models.TransformerConfig(
        vocab_size=4, num_layers=1, num_heads=1, d_model=8, max_length=24
    )
    target = models.Model(config, perturbed(models.init_params(config, jax.random.key(3)), 0.5, 4))
    prompt = jnp.asarray([[1, 2, 3]], jnp.int32)
    exact = exact_continuation_law(target, prompt, 3)
    rng = np.random.default_rng(0)
    documents = jnp.asarray(rng.integers(0, 4, (1, 64)), jnp.int32)
    pool = drafting.lookahead_pool(4, documents, jnp.asarray([64]), ngram=3, guesses=2)
    num = 20000
    out = jax.jit(
        lambda t, pool, key: generate(
            t,
            jnp.broadcast_to(prompt, (num, 3)),
            jnp.full((num,), 3, jnp.int32),
            key,
            max_new_tokens=3,
            sampling=Sampling(temperature=1.0),
            drafter=drafting.lookahead(4, window=2, ngram=3, guesses=2, memory=pool),
            controller=ALWAYS_DRAFT,
        )
    )(target, pool, jax.random.key(8))
    assert 0 < int(out.stats.accepted.sum()) < int(out.stats.drafted.sum())
    counts = np.bincount(continuation_codes(out.tokens[:, 3:6], 4), minlength=64)
    statistic = np.sum((counts - exact * num) ** 2 / (exact * num))
    assert stats.chi2.sf(statistic, df=63) > 1e-4


# ---------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window": 0}, "`window`"),
        ({"ngram": 1}, "`ngram`"),
        ({"guesses": 0}, "`guesses`"),
        ({"window": 2.5}, "`window`"),
        ({"memory": jacobi_lookahead.empty_pool(8, 5, 4)}, "`memory.ngrams`"),
        ({"memory": jacobi_lookahead.empty_pool(16, 3, 4)}, "`memory.ngrams`"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        drafting.lookahead(16, **kwargs)


def test_out_of_vocabulary_documents_raise_eagerly_and_under_checked():
    bad = jnp.asarray([[1, 2, 16]], jnp.int32)
    length = jnp.asarray([3], jnp.int32)
    with pytest.raises(ValueError, match="`sequences` must lie in"):
        drafting.lookahead_pool(16, bad, length)
    with pytest.raises(ValueError, match="`sequences` must lie in"):
        drafting.seed_table(drafting.initial_table(16, 4), bad, length)
    with pytest.raises(ValueError, match="`sequences` must lie in"):
        drafting.seed_memory(drafting.empty_memory(2, 64, 3), bad, length, 16)
    checked = lookahead_jax.checked(lambda s, n: drafting.lookahead_pool(16, s, n))
    with pytest.raises(ValueError, match="`sequences` must lie in"):
        checked(bad, length)
    # Past each sequence's length, ids are ignored.
    drafting.lookahead_pool(16, bad, jnp.asarray([2], jnp.int32))


@pytest.mark.slow  # five drafters initialised eagerly; memory_of is also in the stream test
def test_memory_of_returns_what_each_drafter_takes_as_memory():
    prompt = jnp.asarray([[3, 7, 1, 9, 3]], jnp.int32)
    lengths = jnp.asarray([5], jnp.int32)
    for build in (
        lambda memory: drafting.token_recycling(16, memory=memory),
        lambda memory: drafting.stochastic_ngram(16, memory=memory),
        lambda memory: drafting.lookahead(16, memory=memory),
        lambda memory: drafting.trie_retrieval(16, capacity=256, memory=memory),
        lambda memory: drafting.suffix_decoding(16, capacity=256, memory=memory),
    ):
        state = build(None).init(prompt, lengths, 16)
        memory = drafting.memory_of(state)
        again = build(memory).init(prompt, lengths, 16)  # accepted, and seeded once more
        assert jax.tree.structure(drafting.memory_of(again)) == jax.tree.structure(memory)
    with pytest.raises(ValueError, match="`drafter_state`"):
        drafting.memory_of(drafting.PromptLookupState())


@functools.partial(jax.jit, static_argnames=("block_sizes",))
def trie_run(target, prompt, lengths, block_sizes):
    drafter = drafting.trie_retrieval(CONFIG.vocab_size, num_nodes=8, block_sizes=block_sizes)
    return generate(
        target,
        prompt,
        lengths,
        jax.random.key(0),
        max_new_tokens=MAX_NEW,
        drafter=drafter,
        controller=ALWAYS_DRAFT,
    )


@pytest.mark.slow  # three compilations of the trie drafter; its fast tests use the defaults
def test_scoring_only_the_used_block_changes_nothing_but_the_cost(target):
    prompt, lengths = prompts(4, 12, seed=1, period=4)
    plain = run(target, prompt, lengths, kind="ar")
    full = trie_run(target, prompt, lengths, (8,))
    sized = trie_run(target, prompt, lengths, (0, 2, 8))
    np.testing.assert_array_equal(sized.tokens, plain.tokens)
    np.testing.assert_array_equal(full.tokens, plain.tokens)
    for field in ("target_calls", "drafted", "accepted"):
        np.testing.assert_array_equal(getattr(sized.stats, field), getattr(full.stats, field))
    # One compiled forward per size, chosen by lax.switch.
    jaxpr = str(
        jax.make_jaxpr(lambda *a: trie_run.__wrapped__(*a, (0, 2, 8)))(target, prompt, lengths)
    )
    assert "switch" in jaxpr or "cond" in jaxpr


@pytest.mark.parametrize("sizes", [(0, 4), (4, 2, 8), (-1, 8), (0, 2.0, 8), ()])
def test_bad_block_sizes_raise(sizes):
    with pytest.raises(ValueError, match="`block_sizes`"):
        drafting.trie_retrieval(16, num_nodes=8, block_sizes=sizes)


@functools.partial(jax.jit, static_argnames="kind")
def serve_kind(target, prompt, lengths, memory, *, kind):
    drafter = {
        "lookahead": lambda: drafting.lookahead(16, window=3, ngram=3, guesses=4, memory=memory),
        "trie": lambda: drafting.trie_retrieval(16, num_nodes=8, capacity=256, memory=memory),
        "suffix": lambda: drafting.suffix_decoding(16, num_nodes=8, capacity=256, memory=memory),
    }[kind]()
    return generate(
        target,
        prompt,
        lengths,
        jax.random.key(0),
        max_new_tokens=24,
        drafter=drafter,
        controller=ALWAYS_DRAFT,
    )


@pytest.mark.parametrize(
    ("kind", "empty"),
    [
        pytest.param(
            "lookahead",
            lambda: drafting.lookahead_pool(16, ngram=3, guesses=4),
            marks=pytest.mark.slow,
        ),
        pytest.param("trie", lambda: drafting.trie_memory(256), marks=pytest.mark.slow),
        pytest.param("suffix", lambda: drafting.suffix_memory(256), marks=pytest.mark.slow),
    ],
)
def test_memory_round_trips_through_a_checkpoint(target, tmp_path, kind, empty):
    from lookahead_jax import checkpoint

    prompt, lengths = prompts(2, 10, seed=3, period=5)
    first = serve_kind(target, prompt, lengths, empty(), kind=kind)
    memory = drafting.memory_of(first.drafter_state)
    checkpoint.save(tmp_path / kind, 0, memory)
    restored = checkpoint.restore(tmp_path / kind, jax.tree.map(jnp.zeros_like, memory))
    chex.assert_trees_all_equal(restored, memory)
    again = serve_kind(target, prompt, lengths, restored, kind=kind)
    direct = serve_kind(target, prompt, lengths, memory, kind=kind)
    np.testing.assert_array_equal(again.tokens, first.tokens)
    chex.assert_trees_all_equal(again.stats, direct.stats)
    chex.assert_trees_all_equal(again.drafter_state, direct.drafter_state)
