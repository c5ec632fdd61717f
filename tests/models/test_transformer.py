"""The reference transformer: cache exactness, ragged rows, tree masks, errors, retracing."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lookahead_jax
from lookahead_jax import models
from tests.helpers import naive_ancestor_mask, root_path

CONFIG = models.TransformerConfig(
    vocab_size=48, num_layers=2, num_heads=2, d_model=16, max_length=40
)
CAPACITY = 24


@pytest.fixture(scope="module")
def params():
    params = models.init_params(CONFIG, jax.random.key(0))
    # Non-trivial LayerNorms and biases, so a wrong wiring cannot hide behind zeros/ones.
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(treedef, leaves)


@functools.partial(jax.jit, static_argnames=("return_hidden",))
def full_forward(params, tokens, return_hidden=False):
    return models.apply(CONFIG, params, tokens, return_hidden=return_hidden)


def last_logits(params, sequence):
    """Logits after ``sequence [1, S]``, computed at one fixed width (one compiled program
    for every path length: right padding cannot reach earlier positions of a causal model)."""
    length = sequence.shape[1]
    padded = jnp.zeros((1, CAPACITY), jnp.int32).at[:, :length].set(sequence)
    return full_forward(params, padded)[0][0, length - 1]


@jax.jit
def cached_step(params, tokens, cache):
    return models.apply(CONFIG, params, tokens, cache)


@jax.jit
def tree_step(params, tokens, cache, tree_mask):
    return models.apply(CONFIG, params, tokens, cache, tree_mask=tree_mask)


def random_tokens(seed, shape):
    return jax.random.randint(jax.random.key(seed), shape, 0, CONFIG.vocab_size, jnp.int32)


def test_incremental_decoding_matches_full_forward(params):
    tokens = random_tokens(2, (3, 12))
    full_logits, _ = full_forward(params, tokens)
    cache = models.init_cache(CONFIG, 3, CAPACITY)
    pieces = []
    for start, stop in [(0, 5), (5, 6), (6, 9), (9, 10), (10, 12)]:
        logits, cache = cached_step(params, tokens[:, start:stop], cache)
        pieces.append(logits)
    np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full_logits, atol=2e-5, rtol=0)
    np.testing.assert_array_equal(cache.lengths, [12, 12, 12])


def test_hidden_states_end_in_logits(params):
    tokens = random_tokens(3, (2, 7))
    logits, _, hidden = full_forward(params, tokens, return_hidden=True)
    chex.assert_shape(hidden, (CONFIG.num_layers + 1, 2, 7, CONFIG.d_model))
    np.testing.assert_allclose(
        models.logits_from_hidden(CONFIG, params, hidden[-1]), logits, atol=1e-5, rtol=0
    )


def test_ragged_rows_match_rows_run_alone(params):
    prompt_lengths = np.array([3, 9, 6])
    tokens = random_tokens(4, (3, 9))
    continuation = random_tokens(5, (3, 4))
    # Prefill the padded batch, rewind each row to its own length, then decode on.
    cache = models.init_cache(CONFIG, 3, CAPACITY)
    prefill_logits, cache = cached_step(params, tokens, cache)
    cache = models.rewind(cache, jnp.asarray(prompt_lengths, jnp.int32))
    step_logits, cache = cached_step(params, continuation, cache)
    np.testing.assert_array_equal(cache.lengths, prompt_lengths + 4)
    for row, length in enumerate(prompt_lengths):
        alone = jnp.concatenate([tokens[row : row + 1, :length], continuation[row : row + 1]], 1)
        alone_logits, _ = full_forward(params, alone)
        np.testing.assert_allclose(
            prefill_logits[row, :length], alone_logits[0, :length], atol=2e-5, rtol=0
        )
        np.testing.assert_allclose(step_logits[row], alone_logits[0, length:], atol=2e-5, rtol=0)


def random_tree(rng, num_nodes):
    """Parents of a random tree in topological order (parent index < node index, -1 = root)."""
    parents = [-1] + [int(rng.integers(0, node)) for node in range(1, num_nodes)]
    return np.array(parents)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), num_nodes=st.integers(2, 8))
def test_tree_mask_logits_equal_path_logits(params, seed, num_nodes):
    rng = np.random.default_rng(seed)
    batch = 2
    prefix_lengths = np.array([4, 7])
    parents = [random_tree(rng, num_nodes) for _ in range(batch)]
    mask = jnp.asarray(np.stack([naive_ancestor_mask(p) for p in parents]))
    prefix = jnp.asarray(rng.integers(0, CONFIG.vocab_size, (batch, 7)), jnp.int32)
    nodes = jnp.asarray(rng.integers(0, CONFIG.vocab_size, (batch, num_nodes)), jnp.int32)
    cache = models.init_cache(CONFIG, batch, CAPACITY)
    _, cache = cached_step(params, prefix, cache)
    cache = models.rewind(cache, jnp.asarray(prefix_lengths, jnp.int32))
    tree_logits, tree_cache = tree_step(params, nodes, cache, mask)
    for row in range(batch):
        for node in range(num_nodes):
            path = root_path(parents[row], node)
            sequence = jnp.concatenate(
                [prefix[row, : prefix_lengths[row]], nodes[row, jnp.asarray(path)]]
            )[None]
            path_logits = last_logits(params, sequence)
            np.testing.assert_allclose(tree_logits[row, node], path_logits, atol=2e-5)

    # Keeping one root-to-leaf path leaves a cache equal to decoding that path as a chain.
    leaf = [num_nodes - 1, int(rng.integers(0, num_nodes))]
    paths = [root_path(parents[row], leaf[row]) for row in range(batch)]
    path_array = np.zeros((batch, num_nodes), np.int32)
    for row, path in enumerate(paths):
        path_array[row, : len(path)] = path
    path_lengths = jnp.asarray([len(p) for p in paths], jnp.int32)
    kept = models.keep_path(
        tree_cache, jnp.asarray(prefix_lengths, jnp.int32), jnp.asarray(path_array), path_lengths
    )
    np.testing.assert_array_equal(kept.lengths, prefix_lengths + np.array([len(p) for p in paths]))
    probe = random_tokens(seed + 1, (batch, 1))
    probe_logits, _ = cached_step(params, probe, kept)
    for row in range(batch):
        sequence = jnp.concatenate(
            [prefix[row, : prefix_lengths[row]], nodes[row, jnp.asarray(paths[row])], probe[row]]
        )[None]
        chain_logits = last_logits(params, sequence)
        np.testing.assert_allclose(probe_logits[row, 0], chain_logits, atol=2e-5)


def test_chain_tree_mask_equals_causal(params):
    tokens = random_tokens(6, (2, 5))
    cache = models.init_cache(CONFIG, 2, CAPACITY)
    chain = jnp.broadcast_to(jnp.tril(jnp.ones((5, 5), bool)), (2, 5, 5))
    tree_logits, _ = tree_step(params, tokens, cache, chain)
    causal_logits, _ = cached_step(params, tokens, cache)
    np.testing.assert_allclose(tree_logits, causal_logits, atol=1e-6)


def test_cached_step_compiles_once_per_shape(params):
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, tokens, cache):
        return models.apply(CONFIG, params, tokens, cache)

    cache = models.init_cache(CONFIG, 2, CAPACITY)
    for seed in range(4):
        _, cache = step(params, random_tokens(seed, (2, 1)), cache)
    np.testing.assert_array_equal(cache.lengths, [4, 4])


def test_forward_prefill_and_model_call_compile_once_per_shape(params):
    """Forward pass, prefill and ``Model.__call__``: new values at fixed shapes never retrace."""
    chex.clear_trace_counter()

    @functools.partial(jax.jit, static_argnames="return_hidden")
    @chex.assert_max_traces(n=1)
    def forward(params, tokens, return_hidden=False):
        return models.apply(CONFIG, params, tokens, return_hidden=return_hidden)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def prefill(model, tokens, cache):
        return model(tokens, cache)

    model = models.Model(CONFIG, params)
    other = models.Model(CONFIG, jax.tree.map(lambda x: 2 * x, params))
    for seed, m in [(0, model), (1, other)]:
        forward(m.params, random_tokens(seed, (2, 3)))
        _, cache = prefill(m, random_tokens(seed, (2, 3)), models.init_cache(CONFIG, 2, CAPACITY))
        # A second prefill on the filled cache: same shapes, new lengths.
        _, cache = prefill(m, random_tokens(seed + 2, (2, 3)), cache)
    np.testing.assert_array_equal(cache.lengths, [6, 6])
    # The library's own module-level jits (scoring) compile once per shape too.
    before = models.next_token_nll._cache_size()
    for seed in range(2):
        models.next_token_nll(model, random_tokens(seed, (2, 5)))
    assert models.next_token_nll._cache_size() - before <= 1


def test_overflow_inside_jit_is_dropped_and_reported(params):
    cache = models.init_cache(CONFIG, 2, 4)
    cache = cache._replace(lengths=jnp.array([1, 3], jnp.int32))
    _, new_cache = cached_step(params, random_tokens(7, (2, 2)), cache)
    np.testing.assert_array_equal(models.overflowed(new_cache), [False, True])
    # Slot 3 of row 1 was written; nothing wrapped around into committed slots.
    np.testing.assert_array_equal(new_cache.keys[:, 1, :3], cache.keys[:, 1, :3])


@pytest.mark.parametrize(
    ("make_call", "match"),
    [
        (lambda p, c: models.apply(CONFIG, p, jnp.zeros((2, 3), jnp.float32), c), "integers"),
        (lambda p, c: models.apply(CONFIG, p, jnp.zeros((3,), jnp.int32), c), "rank 2"),
        (lambda p, c: models.apply(CONFIG, p, jnp.full((2, 3), 48, jnp.int32), c), r"\[0, 48\)"),
        (lambda p, c: models.apply(CONFIG, p, jnp.zeros((3, 3), jnp.int32), c), "cache.keys"),
        (lambda p, c: models.apply(CONFIG, p, jnp.zeros((2, 30), jnp.int32), c), "slots"),
        (
            lambda p, c: models.apply(
                CONFIG, p, jnp.zeros((2, 3), jnp.int32), c._replace(lengths=jnp.array([0, 22]))
            ),
            "overflow",
        ),
        (
            lambda p, c: models.apply(
                CONFIG, p, jnp.zeros((2, 3), jnp.int32), c, tree_mask=jnp.ones((2, 3, 3))
            ),
            "boolean",
        ),
        (
            lambda p, c: models.apply(
                CONFIG, p, jnp.zeros((2, 3), jnp.int32), c, positions=jnp.zeros((2, 2), jnp.int32)
            ),
            "positions",
        ),
        (lambda p, c: models.init_cache(CONFIG, 2, 41), "max_length"),
        (lambda p, c: models.TransformerConfig(d_model=10, num_heads=4), "num_heads"),
    ],
)
def test_bad_input_raises_clear_value_error(params, make_call, match):
    cache = models.init_cache(CONFIG, 2, CAPACITY)
    with pytest.raises(ValueError, match=match):
        make_call(params, cache)


def test_bad_input_raises_at_trace_time_under_jit(params):
    cache = models.init_cache(CONFIG, 2, CAPACITY)
    with pytest.raises(ValueError, match="integers"):
        cached_step(params, jnp.zeros((2, 3), jnp.float32), cache)


def test_out_of_range_tokens_raise_eagerly_and_under_checked(params):
    bad = jnp.array([[1, 48], [-1, 2]], jnp.int32)
    with pytest.raises(
        ValueError, match=r"`tokens` must lie in \[0, 48\); got values in \[-1, 48\]"
    ):
        models.apply(CONFIG, params, bad)
    checked_apply = lookahead_jax.checked(models.apply, static_argnums=0)
    with pytest.raises(ValueError, match=r"`tokens` must lie in \[0, 48\)"):
        checked_apply(CONFIG, params, bad)
    logits, _ = checked_apply(CONFIG, params, jnp.array([[1, 47], [0, 2]], jnp.int32))
    assert logits.shape == (2, 2, CONFIG.vocab_size)


def test_num_params_matches_pytree():
    for config in [CONFIG, models.TransformerConfig(mlp_dim=100)]:
        counted = sum(x.size for x in jax.tree.leaves(models.param_shapes(config)))
        assert counted == config.num_params()


@jax.jit
def exact_step(params, tokens, cache):
    return models.apply(CONFIG, params, tokens, cache, exact=True)


# Exact mode's bitwise claims hold for the code XLA generates by default, so these tests
# run in a subprocess compiling under XLA's default emitters (~20 s of a fast-tier run):
# slow tier. The fast tier keeps exact mode's end-to-end claims (exact-mode speculative
# greedy equals exact greedy, tests/decoding/test_speculative.py and test_precision.py;
# `logits_at` bitwise, below).
@pytest.mark.slow
@pytest.mark.default_compiler
def test_exact_mode_logits_do_not_depend_on_call_width(params):
    """Bitwise: scoring 5 tokens at once equals scoring them one by one (and 3 + 2)."""
    tokens = random_tokens(8, (3, 14))
    cache = models.init_cache(CONFIG, 3, CAPACITY)
    _, cache = exact_step(params, tokens[:, :9], cache)
    together, _ = exact_step(params, tokens[:, 9:14], cache)
    one_by_one = []
    step_cache = cache
    for i in range(9, 14):
        logits, step_cache = exact_step(params, tokens[:, i : i + 1], step_cache)
        one_by_one.append(logits)
    np.testing.assert_array_equal(together, jnp.concatenate(one_by_one, axis=1))
    # Prefill in other chunkings leaves a bitwise identical cache.
    split_cache = models.init_cache(CONFIG, 3, CAPACITY)
    _, split_cache = exact_step(params, tokens[:, :4], split_cache)
    _, split_cache = exact_step(params, tokens[:, 4:9], split_cache)
    np.testing.assert_array_equal(split_cache.keys[:, :, :9], cache.keys[:, :, :9])
    # Exact mode computes the same function as the fast mode (up to rounding).
    fast, _ = cached_step(params, tokens[:, 9:14], cache)
    np.testing.assert_allclose(together, fast, atol=2e-5)


@functools.partial(jax.jit, static_argnames=("exact",))
def prefill_at(params, tokens, cache, logits_at, exact=False):
    return models.apply(CONFIG, params, tokens, cache, logits_at=logits_at, exact=exact)


@pytest.mark.parametrize("exact", [False, True])
def test_logits_at_selects_positions_and_leaves_the_cache_alone(params, exact):
    tokens = random_tokens(9, (3, 10))
    cache = models.init_cache(CONFIG, 3, CAPACITY)
    at = jnp.asarray([[9, 0], [4, 4], [2, 7]], jnp.int32)
    every, full_cache = (exact_step if exact else cached_step)(params, tokens, cache)
    some, some_cache = prefill_at(params, tokens, cache, at, exact=exact)
    chex.assert_shape(some, (3, 2, CONFIG.vocab_size))
    want = jnp.take_along_axis(every, at[..., None], axis=1)
    if exact:  # exact mode: per-token logits do not depend on what else is computed
        np.testing.assert_array_equal(some, want)
    else:
        np.testing.assert_allclose(some, want, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(some_cache.keys, full_cache.keys)
    np.testing.assert_array_equal(some_cache.lengths, full_cache.lengths)
    with pytest.raises(ValueError, match=r"`logits_at` must lie in \[0, 10\)"):
        models.apply(CONFIG, params, tokens, cache, logits_at=at + 3)


@pytest.mark.slow
@pytest.mark.default_compiler
def test_exact_mode_works_through_rows_in_blocks_without_changing_a_bit(params, monkeypatch):
    """A small product budget makes exact mode map over row blocks: same bits, same cache."""
    from lookahead_jax.models import transformer

    tokens = random_tokens(10, (3, 11))
    cache = models.init_cache(CONFIG, 3, CAPACITY)
    cache = models.apply(CONFIG, params, tokens[:, :4], cache, exact=True)[1]

    def call(params, tokens, cache):
        return models.apply(CONFIG, params, tokens, cache, exact=True)

    def loops():  # a fresh function each time: traces are cached per function
        fresh = jax.make_jaxpr(lambda *args: call(*args))
        return str(fresh(params, tokens[:, 4:], cache)).count("scan")

    whole = jax.jit(call)(params, tokens[:, 4:], cache)
    unblocked_loops = loops()
    # Budget below one row's products: every dense and attention call goes row by row.
    monkeypatch.setattr(transformer, "_EXACT_BLOCK_ELEMENTS", 100)
    blocked = jax.jit(lambda *args: call(*args))(params, tokens[:, 4:], cache)  # a new trace
    assert loops() > unblocked_loops  # the row blocks are loops inside the layer scan
    np.testing.assert_array_equal(blocked[0], whole[0])
    np.testing.assert_array_equal(blocked[1].keys, whole[1].keys)
    np.testing.assert_array_equal(blocked[1].values, whole[1].values)


@functools.partial(jax.jit, static_argnames=("exact",))
def deferred_step(params, tokens, cache, tree_mask=None, exact=False):
    return models.apply(
        CONFIG, params, tokens, cache, tree_mask=tree_mask, exact=exact, defer_write=True
    )


@jax.jit
def append_path(cache, entries, keep, count):
    return models.append(cache, entries, keep, count)


@pytest.mark.slow
@pytest.mark.default_compiler
@pytest.mark.parametrize("exact", [False, True])
def test_defer_write_returns_what_a_written_call_appends(params, exact):
    """Same logits as a written call; the entries are the slots it writes; the cache is
    untouched; appending them all gives the written call's cache (bitwise)."""
    tokens = random_tokens(10, (3, 12))
    cache = models.init_cache(CONFIG, 3, CAPACITY)
    step = exact_step if exact else cached_step
    _, cache = step(params, tokens[:, :7], cache)
    cache = models.rewind(cache, jnp.asarray([7, 4, 6], jnp.int32))  # ragged rows
    written_logits, written = step(params, tokens[:, 7:12], cache)
    logits, entries = deferred_step(params, tokens[:, 7:12], cache, exact=exact)
    chex.assert_shape(entries.keys, (CONFIG.num_layers, 3, 5, CONFIG.num_heads, 8))
    if exact:
        np.testing.assert_array_equal(logits, written_logits)
    else:
        np.testing.assert_allclose(logits, written_logits, atol=1e-6, rtol=0)
    appended = models.append(cache, entries)
    np.testing.assert_array_equal(appended.lengths, written.lengths)
    for row, start in enumerate([7, 4, 6]):
        np.testing.assert_array_equal(
            appended.keys[:, row, : start + 5], written.keys[:, row, : start + 5]
        )
        np.testing.assert_array_equal(
            appended.values[:, row, : start + 5], written.values[:, row, : start + 5]
        )


@pytest.mark.slow
@pytest.mark.default_compiler
def test_defer_write_fits_a_block_the_cache_has_no_room_for(params):
    """Exact mode scores a block past the cache's capacity (only its kept part is
    appended) with the bits of a cache that has room."""
    tokens = random_tokens(11, (2, 14))
    small = models.init_cache(CONFIG, 2, 10)
    roomy = models.init_cache(CONFIG, 2, CAPACITY)
    _, small = exact_step(params, tokens[:, :8], small)
    _, roomy = exact_step(params, tokens[:, :8], roomy)
    want, _ = exact_step(params, tokens[:, 8:14], roomy)  # 6 tokens: 8 + 6 > 10 slots
    got, entries = deferred_step(params, tokens[:, 8:14], small, exact=True)
    np.testing.assert_array_equal(got, want)
    kept = models.append(small, entries, count=jnp.asarray([2, 1], jnp.int32))
    np.testing.assert_array_equal(kept.lengths, [10, 9])
    np.testing.assert_array_equal(kept.keys[:, 0, 8:10], entries.keys[:, 0, :2])


def test_append_keeps_a_tree_path_like_keep_path(params):
    """Appending a path's entries equals writing the whole tree and keeping the path."""
    tokens = random_tokens(12, (2, 13))
    cache = models.init_cache(CONFIG, 2, CAPACITY)
    _, cache = cached_step(params, tokens[:, :8], cache)
    # Root (node 0) with children 1, 2; node 3 under 2; node 4 under 1.
    parent = jnp.asarray([-1, 0, 0, 2, 1])
    mask = jnp.asarray(naive_ancestor_mask(np.asarray(parent)))[None].repeat(2, 0)
    block = tokens[:, 8:13]
    _, whole = tree_step(params, block, cache, mask)
    _, entries = deferred_step(params, block, cache, mask)
    path = jnp.asarray([[0, 2, 3], [0, 1, 4]], jnp.int32)
    path_lengths = jnp.asarray([3, 2], jnp.int32)
    kept = models.keep_path(whole, cache.lengths, path, path_lengths)
    appended = append_path(cache, entries, path, path_lengths)
    np.testing.assert_array_equal(appended.lengths, kept.lengths)
    for row, length in enumerate([11, 10]):
        np.testing.assert_allclose(
            appended.keys[:, row, :length], kept.keys[:, row, :length], atol=1e-6, rtol=0
        )
    with pytest.raises(ValueError, match=r"`count` must lie in \[0, 4\)"):
        models.append(cache, entries, path, jnp.asarray([4, 1], jnp.int32))
    with pytest.raises(ValueError, match="`defer_write=True` needs a `cache`"):
        models.apply(CONFIG, params, block, defer_write=True)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), num_nodes=st.integers(3, 8))
def test_context_entries_score_a_tree_in_parts(params, seed, num_nodes):
    """Scoring a tree's later nodes against the earlier nodes' entries (``context``) gives
    the logits of scoring the whole tree in one call under its mask."""
    rng = np.random.default_rng(seed)
    batch, split = 2, int(rng.integers(1, num_nodes))
    parents = [random_tree(rng, num_nodes) for _ in range(batch)]
    mask = np.stack([naive_ancestor_mask(p) for p in parents])  # [B, N, N], self included
    tokens = random_tokens(seed, (batch, 6 + num_nodes))
    cache = models.init_cache(CONFIG, batch, CAPACITY)
    _, cache = cached_step(params, tokens[:, :6], cache)
    cache = models.rewind(cache, jnp.asarray([6, 4], jnp.int32))
    nodes = tokens[:, 6:]
    whole, _ = deferred_step(params, nodes, cache, jnp.asarray(mask))
    first, entries = deferred_step(
        params, nodes[:, :split], cache, jnp.asarray(mask[:, :split, :split])
    )
    depth = mask.sum(-1) - 1  # ancestors per node
    later, _ = models.apply(
        CONFIG,
        params,
        nodes[:, split:],
        cache,
        tree_mask=jnp.asarray(mask[:, split:, split:]),
        positions=cache.lengths[:, None] + jnp.asarray(depth[:, split:]),
        context=entries,
        context_mask=jnp.asarray(mask[:, split:, :split]),
        defer_write=True,
    )
    np.testing.assert_allclose(first, whole[:, :split], atol=2e-5, rtol=0)
    np.testing.assert_allclose(later, whole[:, split:], atol=2e-5, rtol=0)


@pytest.mark.parametrize(
    "given, message",
    [
        (("context", "positions"), "`context` and `context_mask` must be given together"),
        (("context", "context_mask"), "`context` needs `positions`"),
        (("context", "context_mask", "positions", "exact"), "not supported with `exact=True`"),
        (("context", "short_mask", "positions"), "context_mask"),
    ],
)
def test_bad_context_raises(params, given, message):
    tokens = random_tokens(13, (2, 3))
    cache = models.init_cache(CONFIG, 2, CAPACITY)
    _, entries = deferred_step(params, tokens, cache)
    visible = jnp.ones((2, 3, 3), bool)
    available = {
        "context": {"context": entries},
        "context_mask": {"context_mask": visible},
        "short_mask": {"context_mask": visible[:, :2]},  # one query row short
        "positions": {"positions": jnp.zeros((2, 3), jnp.int32)},
        "exact": {"exact": True},
    }
    kwargs = {k: v for name in given for k, v in available[name].items()}
    with pytest.raises(ValueError, match=message):
        models.apply(CONFIG, params, tokens, cache, **kwargs)
