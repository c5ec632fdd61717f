"""experiments/train_lm.py: an interrupted-then-resumed run equals an uninterrupted one."""

import importlib.util
import json
import pathlib

import jax
import numpy as np
import pytest

from lookahead_jax import checkpoint
from lookahead_jax.models import load_hf_gpt2

_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load(name: str, path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_lm = _load("experiments_train_lm", _ROOT / "experiments" / "train_lm.py")
config_module = _load("configs_train_lm", _ROOT / "configs" / "train_lm.py")


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


def test_unknown_model_raises():
    config = _tiny_config()
    config.model = "huge"
    with pytest.raises(ValueError, match=r"config\.model"):
        train_lm.model_config(config)
