"""experiments/lookahead_family.py: the workload builders, the targets, and a smoke run."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments.benchmarks import lookahead_family as lf
from lookahead_jax import models

_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", params=["tiny-target", "tiny-llama-target"])
def tokenizer(request):
    return models.load_tokenizer(request.param)


def test_pack_pads_and_keeps_lengths():
    prompt, lengths = lf.pack([[5, 6, 7], [8]], 4, pad_id=2)
    np.testing.assert_array_equal(prompt, [[5, 6, 7, 2], [8, 2, 2, 2]])
    np.testing.assert_array_equal(lengths, [3, 1])
    assert prompt.dtype == np.int32 and lengths.dtype == np.int32


def test_free_rows_are_held_out_windows_of_the_asked_lengths(tokenizer):
    rows = lf.free_rows(tokenizer, 4, 64, seed=0)
    assert len(rows) == 4 and all(48 <= len(r) <= 64 for r in rows)
    assert rows == lf.free_rows(tokenizer, 4, 64, seed=0)  # deterministic
    stream = lf._pairs.heldout_stream(tokenizer)
    text = " ".join(map(str, stream.tolist()))
    assert " ".join(map(str, rows[0])) in text


def test_copy_rows_fit_and_hold_the_text_they_ask_to_copy(tokenizer):
    rows, kinds = lf.copy_rows(tokenizer, 6, 128, seed=0)
    assert kinds == ["quote", "code", "edit"] * 2
    assert all(96 <= len(r) <= 128 for r in rows)
    for row, kind in zip(rows, kinds, strict=True):
        text = tokenizer.decode(np.asarray([row]), np.asarray([len(row)]))[0]
        if kind == "quote":
            passage, cue = text.split("\n\nRepeat the passage: ")
            assert passage.removeprefix("Passage: ").startswith(cue)
        elif kind == "edit":
            assert "replaced by" in text
        else:
            head, begun = text.rsplit("def ", 1)
            names = begun.split("(")[1].split(")")[0].split(", ")
            assert len(names) == 2 and all(head.count(n) >= 2 for n in names), text


def test_stream_requests_repeat_their_documents(tokenizer):
    passages, documents = lf.stream_documents(tokenizer, 3, 96, seed=0)
    assert len(passages) == len(documents) == 3
    rows = lf.stream_rows(tokenizer, passages, 10, 96)
    assert all(len(r) <= 96 for r in rows)
    # request i and i + 3 ask about the same passage with another question: same ending
    for i in range(7):
        assert rows[i][-10:] == rows[i + 3][-10:] and rows[i] != rows[i + 3]
    assert rows[0] == rows[0 + 3 * 3]  # the third template cycles back
    for passage, doc in zip(passages, documents, strict=True):
        text = tokenizer.decode(np.asarray([doc]), np.asarray([len(doc)]))[0]
        assert passage[:40] in text


def test_workload_calls_shapes_per_batch(tokenizer):
    config = lf._effective(lf.default_config())
    config.update(prompt_tokens=64, stream_requests=4, calls_at_batch_1=3)
    one = lf.workload_calls(config, tokenizer, 1)
    assert [len(one[w]["calls"]) for w in lf.WORKLOADS] == [3, 3, 4]
    eight = lf.workload_calls(config, tokenizer, 8)
    assert [len(eight[w]["calls"]) for w in lf.WORKLOADS] == [1, 1, 2]
    assert all(p.shape == (8, 64) for w in lf.WORKLOADS for p, _ in eight[w]["calls"])


def test_make_drafter_builds_every_drafter():
    target = models.Model(*models.load_pretrained("tiny-target"))
    config = lf.default_config()
    assert lf.make_drafter("plain", (target, target), 256, {}) is None
    for name in lf.DRAFTERS:
        settings = lf.settings_of(config, name, 256)
        memory = lf.empty_memory(name, 256, settings)
        drafter = lf.make_drafter(name, (target, target), 256, settings, memory)
        assert drafter.vocab_size == 256, name


def test_carried_memory_has_the_empty_memorys_type_and_shapes():
    # so the stream's first request and the later ones share one compiled program
    prompt, lengths = lf.pack([[1, 2, 3, 1, 2], [4, 5]], 6, pad_id=0)
    config = lf.default_config()
    for name in lf.WITH_MEMORY:
        settings = lf.settings_of(config, name, 256)
        empty = lf.empty_memory(name, 256, settings)
        if empty is None:
            continue
        drafter = lf.make_drafter(name, (None, None), 256, settings, empty)
        state = jax.eval_shape(lambda p, n, d=drafter: d.init(p, n, 32), prompt, lengths)
        carried = jax.eval_shape(lambda s, n=name: lf.carry_memory(n, s), state)
        assert jax.tree.structure(carried) == jax.tree.structure(empty), name
        assert [x.shape for x in jax.tree.leaves(carried)] == [
            x.shape for x in jax.tree.leaves(empty)
        ], name


def _row(method, workload, accepted, speedup, batch=1, pair="p"):
    return {
        "pair": pair,
        "workload": workload,
        "batch": batch,
        "method": method,
        "sweep": False,
        "accepted_per_call": accepted,
        "speedup_vs_plain": speedup,
    }


def test_targets_pass_and_fail_on_the_numbers():
    rows = [
        _row("prompt_lookup", "free", 0.5, 1.1),
        _row("lookahead", "free", 0.6, 0.9),
        _row("prompt_lookup", "stream", 1.0, 1.0),
        _row("trie_retrieval", "stream", 1.5, 0.96),
        _row("suffix_decoding", "stream", 1.49, 1.2),
        _row("trie_retrieval", "copy", 0.4, 1.0),
        _row("prompt_lookup", "copy", 0.4, 0.99),
    ]
    found = {(t["check"], t["workload"]): t for t in lf.targets(rows, ["p"], (1,))}
    assert found[("lookahead accepted/call > prompt_lookup accepted/call", "free")]["passed"]
    assert found[("trie_retrieval accepted/call >= 1.5x prompt_lookup's", "stream")]["passed"]
    assert not found[("suffix_decoding accepted/call >= 1.5x prompt_lookup's", "stream")]["passed"]
    assert found[("trie_retrieval tokens/s >= 1.0x plain", "copy")]["passed"]
    assert not found[("prompt_lookup tokens/s >= 1.0x plain", "copy")]["passed"]
    assert not found[("trie_retrieval tokens/s >= 0.97x plain", "stream")]["passed"]
    assert found[("trie_retrieval tokens/s >= 0.97x plain", "copy")]["passed"]
    assert found[("draft_model tokens/s >= 1.0x plain", "copy")]["passed"] is None  # not run


def test_unknown_drafter_or_workload_is_a_value_error():
    config = lf.default_config()
    config.drafters = ("lookahed",)
    with pytest.raises(ValueError, match="drafters"):
        lf._effective(config)
    config = lf.default_config()
    config.workloads = ("free", "copies")
    with pytest.raises(ValueError, match="workloads"):
        lf._effective(config)


@pytest.mark.slow  # a benchmark smoke run: the slow tier
def test_quick_run_end_to_end(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            str(_ROOT / "experiments" / "lookahead_family.py"),
            "--config.quick=True",
            "--config.pairs=(('tiny-target','tiny-draft'),)",
            f"--config.output_dir={out}",
        ],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "targets (issue 16)" in done.stdout
    saved = json.loads((out / "results.json").read_text())
    assert (out / "results.png").is_file()
    assert saved["config"]["quick"] and saved["papers"]["trie_retrieval"]
    rows = saved["rows"]
    ran = {r["method"] for r in rows}
    assert set(lf.DRAFTERS) | {"plain"} <= ran
    assert {r["workload"] for r in rows} == set(lf.WORKLOADS)
    for r in rows:
        assert r["tokens_per_s"] > 0 and r["target_calls_per_token"] > 0
        assert r["accepted_per_call"] >= 0 and len(r["seconds_all"]) == 1
        if r["method"] != "plain":
            assert r["same_tokens_as_plain"] is True, r  # greedy drafting is exact
    stream = [r for r in rows if r["workload"] == "stream" and r["method"] != "plain"]
    for r in stream:
        carries = r["method"] in (*lf.WITH_MEMORY, "trie_retrieval_documents")
        assert r["memory_across_requests"] == carries, r["method"]
    assert saved["all_same_tokens_as_plain"] is True
    assert saved["targets"] and all(t["passed"] in (True, False, None) for t in saved["targets"])
