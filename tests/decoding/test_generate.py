"""Autoregressive generation: equals a naive greedy loop, per-row EOS and budget, sharding,
the public round (init / step / result), bad values under jit, no retracing."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lookahead_jax
from lookahead_jax import drafting, models, sharding
from lookahead_jax.decoding import (
    GenerationConfig,
    generate,
    generation_init,
    generation_result,
    generation_run,
    generation_step,
)
from lookahead_jax.drafting import constant as _always_draft
from lookahead_jax.sampling import Sampling
from tests import helpers

# These tests exercise drafting itself: every round drafts (the default controller may not).
ALWAYS_DRAFT = _always_draft()

CONFIG = models.TransformerConfig(
    vocab_size=16, num_layers=2, num_heads=2, d_model=16, max_length=32
)
MAX_NEW = 9


@pytest.fixture(scope="module")
def target():
    return models.Model(CONFIG, models.init_params(CONFIG, jax.random.key(0)))


@functools.partial(jax.jit, static_argnames=("sampling", "eos_id"))
def run(target, prompt, prompt_lengths, key, sampling=Sampling(), eos_id=None):
    return generate(
        target,
        prompt,
        prompt_lengths,
        key,
        max_new_tokens=MAX_NEW,
        sampling=sampling,
        eos_id=eos_id,
    )


@jax.jit
def full_logits(target, padded):
    return target(padded)[0]


def naive_greedy(target, prompt_row, max_new, eos_id):
    """A full forward pass per step and argmax: the definition of greedy decoding."""
    sequence = list(prompt_row)
    for _ in range(max_new):
        # Right padding cannot change earlier logits (causal), so one compiled shape serves all.
        padded = jnp.asarray([sequence + [0] * (CONFIG.max_length - len(sequence))], jnp.int32)
        token = int(jnp.argmax(full_logits(target, padded)[0, len(sequence) - 1]))
        sequence.append(token)
        if token == eos_id:
            break
    return sequence


def ragged_prompts(batch, width, seed):
    return helpers.ragged_prompts(CONFIG.vocab_size, batch, width, seed)


@pytest.mark.parametrize("eos_id", [None, 3])
def test_greedy_equals_naive_loop_on_ragged_batch(target, eos_id):
    prompt, lengths = ragged_prompts(4, 6, seed=1)
    out = run(target, prompt, lengths, jax.random.key(0), eos_id=eos_id)
    for row in range(4):
        expected = naive_greedy(target, np.asarray(prompt[row, : lengths[row]]), MAX_NEW, eos_id)
        length = int(out.lengths[row])
        assert out.tokens[row, :length].tolist() == expected
        assert np.all(np.asarray(out.tokens[row, length:]) == 0)
        assert int(out.num_generated[row]) == len(expected) - int(lengths[row])
        assert int(out.stats.target_calls[row]) == int(out.num_generated[row])
    np.testing.assert_array_equal(out.stats.drafted, 0)


def test_eos_stops_rows_independently(target):
    prompt, lengths = ragged_prompts(4, 6, seed=2)
    free = run(target, prompt, lengths, jax.random.key(0))
    # Make the third generated token of row 1 the EOS id: that row must stop there.
    eos = int(free.tokens[1, int(lengths[1]) + 2])
    stopped = run(target, prompt, lengths, jax.random.key(0), eos_id=eos)
    assert int(stopped.num_generated[1]) <= 3
    assert int(stopped.tokens[1, stopped.lengths[1] - 1]) == eos


def test_sampling_is_reproducible_and_uses_key(target):
    prompt, lengths = ragged_prompts(4, 5, seed=3)
    sampling = Sampling(temperature=1.0, top_k=8)
    a = run(target, prompt, lengths, jax.random.key(1), sampling=sampling)
    b = run(target, prompt, lengths, jax.random.key(1), sampling=sampling)
    c = run(target, prompt, lengths, jax.random.key(2), sampling=sampling)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)
    np.testing.assert_array_equal(a.num_generated, MAX_NEW)


@pytest.mark.parametrize(
    "sampling",
    [
        pytest.param(Sampling(), marks=pytest.mark.slow),  # the sampled case covers greedy's path
        Sampling(temperature=0.8, top_p=0.9),
    ],
)
def test_sharded_batch_equals_single_device(target, sampling):
    prompt, lengths = ragged_prompts(8, 6, seed=4)
    key = jax.random.key(5)
    single = run(target, prompt, lengths, key, sampling=sampling)
    mesh = sharding.make_mesh()
    assert mesh.devices.size == 8
    sharded_prompt, sharded_lengths = sharding.shard((prompt, lengths), mesh)
    sharded = run(
        sharding.replicate(target, mesh), sharded_prompt, sharded_lengths, key, sampling=sampling
    )
    assert len(sharded.tokens.sharding.device_set) == 8
    np.testing.assert_array_equal(sharded.tokens, single.tokens)
    np.testing.assert_array_equal(sharded.lengths, single.lengths)


def test_bad_prompt_raises(target):
    with pytest.raises(ValueError, match="prompt_lengths"):
        generate(
            target,
            jnp.zeros((2, 4), jnp.int32),
            jnp.array([0, 4]),
            jax.random.key(0),
            max_new_tokens=2,
        )
    with pytest.raises(ValueError, match="max_length"):
        generate(
            target,
            jnp.zeros((1, 30), jnp.int32),
            jnp.array([3]),
            jax.random.key(0),
            max_new_tokens=5,
        )


# ---- bad values: eager and under lookahead_jax.checked (issue 15) --------------------------


def _generate_plain(target, prompt, prompt_lengths, key):
    return generate(target, prompt, prompt_lengths, key, max_new_tokens=3)


CHECKED_GENERATE = lookahead_jax.checked(_generate_plain)
BAD_VALUES = [
    ("prompt", [[1, 2, 16, 0], [3, 4, 5, 6]], [3, 4], r"`prompt` must lie in \[0, 16\)"),
    ("prompt", [[1, 2, -1, 0], [3, 4, 5, 6]], [3, 4], r"`prompt` must lie in \[0, 16\)"),
    ("lengths 0", [[1, 2, 3, 0], [3, 4, 5, 6]], [0, 4], r"`prompt_lengths` must lie in \[1, 5\)"),
    ("lengths > width", [[1, 2, 3, 0], [3, 4, 5, 6]], [3, 5], r"`prompt_lengths` must lie"),
]


@pytest.mark.parametrize("what, prompt, lengths, match", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_prompt_values_raise_eagerly_and_under_checked(target, what, prompt, lengths, match):
    prompt = jnp.asarray(prompt, jnp.int32)
    lengths = jnp.asarray(lengths, jnp.int32)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=match):
        _generate_plain(target, prompt, lengths, key)
    # Under jit the values are traced: before issue 15 ids were clamped and lengths gave garbage.
    with pytest.raises(ValueError, match=match):
        CHECKED_GENERATE(target, prompt, lengths, key)


def test_checked_generate_passes_good_input_unchanged(target):
    prompt, lengths = ragged_prompts(2, 4, seed=6)
    key = jax.random.key(0)
    out = CHECKED_GENERATE(target, prompt, lengths, key)
    plain = jax.jit(_generate_plain)(target, prompt, lengths, key)
    np.testing.assert_array_equal(out.tokens, plain.tokens)


@pytest.mark.parametrize("eos_id", [16, -1])
def test_eos_outside_vocabulary_raises_eagerly_and_under_checked(target, eos_id):
    prompt, lengths = ragged_prompts(2, 4, seed=6)

    def call(target, prompt, lengths, key):
        return generate(target, prompt, lengths, key, max_new_tokens=3, eos_id=eos_id)

    match = r"`eos_id` must lie in the target's vocabulary \[0, 16\)"
    with pytest.raises(ValueError, match=match):
        call(target, prompt, lengths, jax.random.key(0))
    with pytest.raises(ValueError, match=match):
        lookahead_jax.checked(call)(target, prompt, lengths, jax.random.key(0))
    with pytest.raises(ValueError, match="eos_id"):
        GenerationConfig(max_new_tokens=3, eos_id=3.0)


# ---- the public round: a Python loop of steps equals generate ------------------------------


def _drafter(kind, draft):
    if kind == "trie":  # a tree drafter that learns committed tokens in batches
        # observe every 4 committed tokens (branch_length + 2 - 1)
        return drafting.trie_retrieval(CONFIG.vocab_size, num_nodes=4, branch_length=3, capacity=64)
    return None if kind == "ar" else drafting.draft_model(draft)


# Drafting rarely pays under this cost model: the cost-aware controller runs stretches of
# plain rounds between probes.
RARELY_PAYS = drafting.cost_aware(
    drafting.CostModel(
        target_tokens=(1, 8), target_seconds=(1.0, 1.6), draft_tokens=(1,), draft_seconds=(0.3,)
    ),
    probe_overhead=0.4,
)


@functools.partial(jax.jit, static_argnames=("config", "kind"))
def init_fn(key, target, draft, prompt, lengths, config, kind):
    return generation_init(key, target, prompt, lengths, config, _drafter(kind, draft))


@functools.partial(jax.jit, static_argnames=("config", "kind"))
def step_fn(key, state, target, draft, config, kind):
    return generation_step(key, state, target, config, _drafter(kind, draft))


@functools.partial(jax.jit, static_argnames=("config", "kind"))
def generate_fn(key, target, draft, prompt, lengths, config, kind):
    return generate(
        target,
        prompt,
        lengths,
        key,
        max_new_tokens=config.max_new_tokens,
        sampling=config.sampling,
        drafter=_drafter(kind, draft),
        max_draft_tokens=config.max_draft_tokens,
        controller=config.controller,
        eos_id=config.eos_id,
    )


@functools.partial(jax.jit, static_argnames=("config", "kind"))
def run_fn(key, target, draft, prompt, lengths, config, kind):
    return generation_run(key, target, prompt, lengths, config, _drafter(kind, draft))


@pytest.mark.parametrize(
    ("kind", "sampling", "controller"),
    [
        ("ar", Sampling(), None),
        pytest.param("ar", Sampling(temperature=1.0), None, marks=pytest.mark.slow),
        pytest.param("model", Sampling(), None, marks=pytest.mark.slow),
        # Speculative sampling, both sub-keys: slow tier, as "stretches" below samples with
        # the same drafter and adds the plain stretches between probes.
        pytest.param("model", Sampling(temperature=1.0), None, marks=pytest.mark.slow),
        # Plain stretches between probes; a memory that learns every few tokens.
        ("model", Sampling(temperature=1.0), RARELY_PAYS),
        # A tree drafter: two trie programs to compile, slow tier; the chain cases cover the loop.
        pytest.param("trie", Sampling(temperature=1.0), RARELY_PAYS, marks=pytest.mark.slow),
        pytest.param("model", Sampling(), drafting.constant(0), marks=pytest.mark.slow),
    ],
    ids=["ar-greedy", "ar-t1", "model-greedy", "model-t1", "stretches", "trie", "never"],
)
def test_python_loop_of_steps_equals_generate(target, kind, sampling, controller):
    draft = models.Model(CONFIG, models.init_params(CONFIG, jax.random.key(9)))
    config = GenerationConfig(
        max_new_tokens=MAX_NEW if controller is None else 2 * MAX_NEW,
        sampling=sampling,
        max_draft_tokens=3,
        controller=controller,
        eos_id=3 if controller is None else None,
    )
    prompt, lengths = ragged_prompts(4, 6, seed=7)
    key = jax.random.key(4)
    expected = generate_fn(key, target, draft, prompt, lengths, config, kind)
    if kind == "ar":
        # The contract's run (key first, one config) is generate. Checked on the cheapest
        # program only: generate passes its drafter through unchanged whatever it is, and
        # each check compiles a whole second generation loop.
        run_out = run_fn(key, target, draft, prompt, lengths, config, kind)
        np.testing.assert_array_equal(run_out.tokens, expected.tokens)

    key, init_key = jax.random.split(key)
    state = init_fn(init_key, target, draft, prompt, lengths, config, kind)
    emitted = np.zeros(4, np.int64)
    rounds = 0
    while not bool(jnp.all(state.finished)):
        state, info = step_fn(key, state, target, draft, config, kind)
        key = jax.random.split(key, 3)[0]
        emitted += np.asarray(info.num_emitted)
        assert np.all(np.asarray(info.num_accepted) <= np.asarray(info.num_drafted))
        rounds += 1
        assert rounds <= config.max_new_tokens
    out = generation_result(state)
    np.testing.assert_array_equal(out.tokens, expected.tokens)
    np.testing.assert_array_equal(out.lengths, expected.lengths)
    for field in ("target_calls", "drafted", "accepted", "accept_histogram"):
        np.testing.assert_array_equal(getattr(out.stats, field), getattr(expected.stats, field))
    np.testing.assert_array_equal(emitted + 1, out.num_generated)  # + the prefill's token
    for got, want in zip(
        jax.tree.leaves(out.drafter_state), jax.tree.leaves(expected.drafter_state), strict=True
    ):
        np.testing.assert_array_equal(got, want)
    # A finished state is a fixed point of the step.
    again, info = step_fn(key, state, target, draft, config, kind)
    np.testing.assert_array_equal(again.tokens, state.tokens)
    np.testing.assert_array_equal(info.num_emitted, 0)


def test_generate_and_step_compile_once(target):
    chex.clear_trace_counter()
    config = GenerationConfig(max_new_tokens=4)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def whole(target, prompt, lengths, key):
        return generate(target, prompt, lengths, key, max_new_tokens=4)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(key, state, target):
        return generation_step(key, state, target, config)

    init = jax.jit(functools.partial(generation_init, config=config))
    for seed in range(2):
        prompt, lengths = ragged_prompts(2, 5, seed=seed)
        whole(target, prompt, lengths, jax.random.key(seed))
        state = init(jax.random.key(seed), target, prompt, lengths)
        for _ in range(2):
            state, _ = step(jax.random.key(seed), state, target)


@pytest.mark.parametrize("kind", ["trie", "model"])
def test_generate_traces_each_drafter_hook_once(target, kind):
    # The loop holds one drafting round and one call of the drafter's memory update: each
    # copy is compiled again (a trie's update is most of its program).
    draft = models.Model(CONFIG, models.init_params(CONFIG, jax.random.key(9)))
    drafter = _drafter(kind, draft)
    calls = {"propose": 0, "observe": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    fields = {"propose": counted("propose", drafter.propose)}
    if kind == "trie":
        fields["observe"] = counted("observe", drafter.observe)
    drafter = drafter._replace(**fields)
    prompt, lengths = ragged_prompts(2, 6, seed=1)
    jax.eval_shape(
        lambda prompt, lengths: generate(
            target, prompt, lengths, jax.random.key(0), max_new_tokens=6, drafter=drafter
        ),
        prompt,
        lengths,
    )
    assert calls == {"propose": 1, "observe": int(kind == "trie")}


# A property of the compiled program's speed, not of its values, checked on the HLO XLA
# generates by default (a subprocess compiling three generation loops, ~20-30 s of a fast-tier
# run): slow tier, with the benchmarks.
@pytest.mark.slow
@pytest.mark.default_compiler
@pytest.mark.parametrize("kind", ["model", "tree", "trie"])
def test_rounds_never_copy_a_cache(target, kind):
    """In the compiled loop, no copy of a whole KV cache (the target's; the draft model's of a
    chain) is made inside the loop: a plain or drafting round writes the committed entries
    in place. (Were a cache written inside the round's conditionals, XLA would copy it in
    and out of each one every round, which made a round that drafts nothing cost ~1.3 plain
    steps at batch 16.)"""
    draft = models.Model(CONFIG, models.init_params(CONFIG, jax.random.key(9)))
    batch, width, max_new = 3, 6, 8
    prompt, lengths = ragged_prompts(batch, width, seed=2)

    def run_loop(target, draft, prompt, lengths):
        if kind == "model":
            drafter = drafting.draft_model(draft)
        elif kind == "tree":
            drafter = drafting.token_recycling(CONFIG.vocab_size)
        else:  # a memory the loop updates between rounds (`observe`)
            drafter = drafting.trie_retrieval(
                CONFIG.vocab_size, num_nodes=4, branch_length=3, capacity=64
            )
        return generate(
            target, prompt, lengths, jax.random.key(0), max_new_tokens=max_new, drafter=drafter
        )

    text = jax.jit(run_loop).lower(target, draft, prompt, lengths).compile().as_text()
    cache_shape = f"f32[{CONFIG.num_layers},{batch},"
    computation, copies = None, []
    for line in text.splitlines():
        if line and not line.startswith(" ") and "{" in line:
            computation = line.split()[0]
        # (copies of a broadcast fill padded new-entry buffers; they copy no cache)
        copied = " copy(" in line and " copy(%wrapped_broadcast" not in line
        if computation != "ENTRY" and copied and f"= {cache_shape}" in line:
            # [L, B, T, KV, Dh] with T the cache's slot count (not a few new entries)
            shape = line.split("= ")[1].split("{")[0]
            slots = int(shape.split(",")[2])
            if slots >= width + max_new:
                copies.append(line.strip()[:160])
    assert not copies, copies
