"""experiments/train_lm.py: an interrupted-then-resumed run equals an uninterrupted one."""

import json
import pathlib

import jax
import numpy as np
import pytest

from lookahead_jax import checkpoint
from lookahead_jax.models import Model, load_hf, load_hf_gpt2, load_tokenizer, next_token_nll
from tests.helpers import load_module, start_processes, wait_processes

_ROOT = pathlib.Path(__file__).resolve().parents[2]


train_lm = load_module("experiments_train_lm", _ROOT / "experiments" / "train_lm.py")
config_module = load_module("configs_train_lm", _ROOT / "configs" / "train_lm.py")


def _tiny_config():
    config = config_module.get_config()
    config.model = "draft"
    config.draft.update(num_layers=1, num_heads=2, d_model=16, max_length=32)
    config.update(
        seq_len=32,
        batch_size=4,
        num_steps=6,
        warmup_steps=2,
        eval_every=3,
        eval_max_windows=8,
        eval_batch_size=8,
        checkpoint_every=3,
        log_every=1,
        progress_bar=False,
    )
    return config


def _final_state(config, workdir):
    model = train_lm.model_config(config)
    like = train_lm.init_state(config, model, train_lm.make_optimizer(config))
    return checkpoint.restore(pathlib.Path(workdir) / "checkpoints", like, step=config.num_steps)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    config = _tiny_config()
    straight = tmp_path_factory.mktemp("straight")
    metrics = train_lm.train_and_evaluate(config, str(straight))
    resumed = tmp_path_factory.mktemp("resumed")
    # Interrupted after 3 steps: only the step-3 checkpoint survives the "crash".
    assert train_lm.train_and_evaluate(config, str(resumed), stop_after=3) is None
    assert checkpoint.latest_step(resumed / "checkpoints") == 3
    assert not (resumed / "metrics.json").exists()
    # A fresh call holds nothing in memory: it resumes from the workdir alone.
    resumed_metrics = train_lm.train_and_evaluate(config, str(resumed))
    return config, straight, metrics, resumed, resumed_metrics


@pytest.mark.slow  # trains tiny models end to end (~1.5 min): the slow tier
def test_resumed_run_equals_uninterrupted_run_bitwise(runs):
    config, straight, metrics, resumed, resumed_metrics = runs
    a, b = _final_state(config, straight), _final_state(config, resumed)
    assert int(a.step) == int(b.step) == 6
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    for x, y in zip(jax.tree.leaves(a.opt_state), jax.tree.leaves(b.opt_state), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    np.testing.assert_array_equal(jax.random.key_data(a.rng), jax.random.key_data(b.rng))
    assert metrics["train_loss_nats"] == resumed_metrics["train_loss_nats"]
    assert metrics["heldout_bpb_curve"] == resumed_metrics["heldout_bpb_curve"]


@pytest.mark.slow  # trains tiny models end to end (~1.5 min): the slow tier
def test_outputs_are_written(runs):
    config, straight, _, _, _ = runs
    on_disk = json.loads((straight / "metrics.json").read_text())
    assert on_disk["num_steps"] == 6 and len(on_disk["train_loss_nats"]) == 6
    assert [s for s, _ in on_disk["heldout_bpb_curve"]] == [0, 3, 6]
    assert 0 < on_disk["heldout_bpb"] < 9 and on_disk["wall_time_s"] > 0
    assert on_disk["num_params"] == train_lm.model_config(config).num_params()
    assert (straight / "loss.png").stat().st_size > 0
    hf_config, hf_params = load_hf_gpt2(straight / "hf")
    assert hf_config == train_lm.model_config(config)
    final = _final_state(config, straight)
    for x, y in zip(jax.tree.leaves(hf_params), jax.tree.leaves(final.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# _tiny_config() as command-line overrides, for the multi-process runs.
_TINY_FLAGS = [
    f"--config={_ROOT / 'configs' / 'train_lm.py'}", "--config.model=draft",
    "--config.draft.num_layers=1", "--config.draft.num_heads=2", "--config.draft.d_model=16",
    "--config.draft.max_length=32", "--config.seq_len=32", "--config.batch_size=4",
    "--config.num_steps=6", "--config.warmup_steps=2", "--config.eval_every=3",
    "--config.eval_max_windows=8", "--config.eval_batch_size=8", "--config.checkpoint_every=3",
    "--config.log_every=1", "--config.progress_bar=False",
]  # fmt: skip


def _launch(workdir, processes, devices, *extra):
    args = [_ROOT / "experiments" / "train_lm.py", f"--workdir={workdir}", *_TINY_FLAGS, *extra]
    return start_processes(args, processes, devices, workdir.parent, workdir.name)


@pytest.mark.slow  # four launches of the script, two of them as 2 processes (~40 s)
def test_two_processes_train_and_resume_like_one_process(tmp_path):
    one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
    # 1 x 4 devices and 2 x 2 devices, batch rows split over all 4 (data parallel).
    started = _launch(one, 1, 4, "--config.data_parallel=on") + _launch(two, 2, 2)
    started += _launch(killed, 2, 2, "--config.stop_after=3")
    wait_processes(started, "experiments/train_lm.py")
    assert checkpoint.latest_step(killed / "checkpoints") == 3
    assert not (killed / "metrics.json").exists()
    wait_processes(_launch(killed, 2, 2), "experiments/train_lm.py (resumed)")

    config = _tiny_config()
    a, b, c = (_final_state(config, w) for w in (two, killed, one))
    # Killed after 3 steps and resumed by fresh processes: bit for bit the straight run.
    same = {"elapsed": 0.0, "rng": jax.random.key_data(a.rng)}  # wall-clock time differs
    assert np.array_equal(jax.random.key_data(a.rng), jax.random.key_data(b.rng))
    for x, y in zip(
        jax.tree.leaves(a._replace(**same)), jax.tree.leaves(b._replace(**same)), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # Against one process: the gradient's sum over the 4 devices associates differently
    # across processes (gloo) than inside one, so floats agree to rounding, not bitwise
    # (measured 1.6e-7 on the parameters).
    assert int(a.step) == int(c.step) == 6
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(c.params), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(a.losses), np.asarray(c.losses), rtol=1e-6)
    # Each process wrote its part of every checkpoint; process 0 the shared files.
    step = two / "checkpoints" / "6" / "default"
    assert (step / "ocdbt.process_0").is_dir() and (step / "ocdbt.process_1").is_dir()
    assert json.loads((two / "metrics.json").read_text())["num_steps"] == 6
    assert (two / "hf" / "model.safetensors").is_file()


def test_data_parallel_setting_is_checked():
    config = _tiny_config()
    config.data_parallel = "sometimes"
    with pytest.raises(ValueError, match=r"`config\.data_parallel` must be"):
        train_lm.data_parallel_mesh(config)
    config.data_parallel = "on"
    config.batch_size = 6  # the tests' 8 devices
    with pytest.raises(ValueError, match=r"`config.batch_size` \(6\) must be divisible by the 8"):
        train_lm.data_parallel_mesh(config)
    config.data_parallel = "auto"  # one process: no mesh, the historical path
    assert train_lm.data_parallel_mesh(config) is None


def test_unknown_model_raises():
    config = _tiny_config()
    config.model = "huge"
    with pytest.raises(ValueError, match=r"config\.model"):
        train_lm.model_config(config)


# ------------------------------------------------------------- llama + BPE tokenizer


def _tiny_llama_config():
    config = config_module.get_config()
    config.model = "llama_draft"
    config.tokenizer = "tiny-llama"
    config.llama_draft.update(num_layers=1, num_heads=2, num_kv_heads=1, d_model=16, mlp_dim=32)
    config.update(
        seq_len=32,
        batch_size=4,
        num_steps=4,
        learning_rate=1e-2,
        warmup_steps=1,
        eval_every=2,
        eval_max_windows=6,
        eval_batch_size=6,
        checkpoint_every=4,
        log_every=1,
        progress_bar=False,
    )
    return config


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory):
    config = _tiny_llama_config()
    workdir = tmp_path_factory.mktemp("llama")
    metrics = train_lm.train_and_evaluate(config, str(workdir))
    return config, workdir, metrics


@pytest.mark.slow  # trains tiny models end to end (~1.5 min): the slow tier
def test_llama_bpe_run_trains_and_exports_a_hf_folder(llama_run):
    config, workdir, metrics = llama_run
    model = train_lm.model_config(config)
    assert model.model_type == "llama" and model.num_kv_heads == 1 and model.tie_embeddings
    assert metrics["tokenizer"] == "tiny-llama" and metrics["family"] == "llama"
    assert [s for s, _ in metrics["heldout_bpb_curve"]] == [0, 2, 4]
    losses = metrics["train_loss_nats"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0] < np.log(4096) + 0.1
    # Bits per byte, not per token: a token spells ~3.6 bytes of this corpus.
    bits_per_token = metrics["heldout_nats_per_token"] / np.log(2)
    assert 2.5 < bits_per_token / metrics["heldout_bpb"] < 5
    hf_config, hf_params = load_hf(workdir / "hf")
    assert hf_config == model
    final = _final_state(config, workdir)
    for x, y in zip(jax.tree.leaves(hf_params), jax.tree.leaves(final.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    exported, shipped = load_tokenizer(workdir / "hf"), load_tokenizer("tiny-llama")
    assert (exported.vocab_size, exported.bos_id, exported.eos_id, exported.pad_id) == (
        shipped.vocab_size,
        shipped.bos_id,
        shipped.eos_id,
        shipped.pad_id,
    )
    assert exported.encode_ids("def f(x): return x") == shipped.encode_ids("def f(x): return x")
    hf_json = json.loads((workdir / "hf" / "config.json").read_text())
    assert (hf_json["bos_token_id"], hf_json["eos_token_id"]) == (shipped.bos_id, shipped.eos_id)


@pytest.mark.slow  # trains tiny models end to end (~1.5 min): the slow tier
def test_llama_bpe_bits_per_byte_counts_utf8_bytes(llama_run):
    config, workdir, _ = llama_run
    data = train_lm.load_data(config)
    tokenizer = data.tokenizer
    assert data.token_bytes[[tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id]].tolist() == [
        0,
        0,
        0,
    ]
    model = Model(*load_hf(workdir / "hf"))
    windows = data.windows[:2]
    bpb, nats = train_lm.heldout_scores(model, windows, data.token_bytes, 2)
    # Direct: summed NLL in bits over the UTF-8 bytes of the decoded predicted tokens.
    nll = np.asarray(next_token_nll(model, windows), np.float64)
    texts = tokenizer.decode(windows[:, 1:])  # special tokens dropped: they spell no bytes
    assert all("\ufffd" not in t for t in texts)
    num_bytes = sum(len(t.encode("utf-8")) for t in texts)
    np.testing.assert_allclose(bpb, nll.sum() / np.log(2) / num_bytes, rtol=1e-6)
    np.testing.assert_allclose(nats, nll.mean(), rtol=1e-6)
    # The byte lengths add up to the held-out text exactly.
    from lookahead_jax import data as corpus

    stream = corpus.token_stream(tokenizer, "heldout")
    num_text_bytes = sum(len(d) for d in corpus.documents("heldout"))
    assert int(data.token_bytes[stream].sum()) == num_text_bytes
    assert stream[0] == tokenizer.bos_id and stream[-1] == tokenizer.eos_id


def test_bytes_config_needs_byte_vocab():
    config = _tiny_llama_config()
    config.tokenizer = "bytes"
    with pytest.raises(ValueError, match=r"config\.tokenizer"):
        train_lm.train_and_evaluate(config, "/nonexistent-unused")


def test_unknown_family_raises():
    config = _tiny_llama_config()
    config.llama_draft.family = "bert"
    with pytest.raises(ValueError, match=r"family"):
        train_lm.model_config(config)
