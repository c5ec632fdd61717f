"""experiments/pod_speculative.py: dry-run plans, mesh errors, and a run on a data x model mesh."""

import json
import pathlib
import subprocess
import sys

import pytest

from tests.helpers import load_module

_ROOT = pathlib.Path(__file__).resolve().parents[2]


pod = load_module("experiments_pod_speculative", _ROOT / "experiments" / "pod_speculative.py")


def _config(name: str = "pod_speculative", **fields):
    config = load_module(f"configs_{name}", _ROOT / "configs" / f"{name}.py").get_config()
    config.update(**fields)
    return config


def test_dry_run_of_the_qwen_config_prints_and_writes_the_plan(tmp_path, capsys):
    config = _config("pod_qwen2_5_7b", dry_run=True, output_dir=str(tmp_path))
    results = pod.run(config)
    out = capsys.readouterr().out
    assert "mesh: data=8 x model=4 = 32 devices; 8 process(es) x 4 devices" in out
    assert "64 rows = 8 per data shard, 8 per process" in out
    assert "GiB/device" in out and "KV GiB/device" in out
    assert "target (qwen2)" in out and "draft (qwen2)" in out
    assert "padded to the target's 152064" in out
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert saved == json.loads(json.dumps(results))
    plan = saved["plan"]
    assert plan["batch_per_process"] == 8 and plan["devices"] == 32
    assert plan["target"]["cache_shape"] == [28, 64, 2048 + 256 + 4, 4, 128]
    assert plan["dtype"] == "bfloat16"
    # ~4.3 GiB of target and ~0.5 GiB of draft parameters, ~0.46 GiB of caches per device.
    assert 4.7 < plan["param_bytes_per_device"] / 2**30 < 4.9
    assert 0.4 < plan["kv_bytes_per_device"] / 2**30 < 0.5


def test_dry_run_of_the_llama_pair_on_4x8(tmp_path, capsys):
    """Llama-3.1-8B + Llama-3.2-1B: 32 query and 8 KV heads split 8 ways: no head replicated."""
    config = _config(
        "pod_qwen2_5_7b", target="llama-3.1-8b", draft="llama-3.2-1b", data=4, model=8,
        dry_run=True, output_dir=str(tmp_path),
    )  # fmt: skip
    plan = pod.run(config)["plan"]
    assert "data=4 x model=8 = 32 devices" in capsys.readouterr().out
    assert plan["target"]["replicated"] == plan["draft"]["replicated"] == ("embedding, norms",)
    # 8 hosts x 4 chips: a model group of 8 spans two hosts, which the plan points out.
    assert [n for n in plan["notes"] if "spans several processes" not in n] == []
    assert len(plan["notes"]) == 1
    assert plan["batch_per_process"] == 16  # 4 devices per process: half a model group
    assert plan["target"]["num_params"] == 8_030_261_248
    # The 8 KV heads split 8 ways: one head and 16 rows of 2,308 slots per device.
    assert plan["target"]["kv_bytes_per_device"] == 2 * 32 * 16 * 2308 * 1 * 128 * 2 + 4 * 16


def test_dry_run_from_the_command_line(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(_ROOT / "experiments" / "pod_speculative.py"),
            f"--config={_ROOT / 'configs' / 'pod_qwen2_5_7b.py'}",
            "--config.dry_run=True",
            "--config.num_processes=32",  # 4 nodes x 8 GPUs, one process per GPU
            f"--config.output_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "32 process(es) x 1 devices" in done.stdout
    # A model group spans 4 processes: each of them loads the group's 8 rows.
    assert "8 per data shard, 8 per process" in done.stdout
    assert "spans several processes" in done.stdout
    assert json.loads((tmp_path / "plan.json").read_text())["plan"]["num_processes"] == 32


def test_dry_run_mesh_errors(tmp_path):
    with pytest.raises(ValueError, match=r"`model` \(8\) must divide the target's 28 query heads"):
        pod.run(_config("pod_qwen2_5_7b", dry_run=True, data=4, model=8, output_dir=str(tmp_path)))
    with pytest.raises(ValueError, match=r"`batch_size` \(60\) must be divisible .*data=8"):
        pod.run(_config("pod_qwen2_5_7b", dry_run=True, batch_size=60, output_dir=str(tmp_path)))
    with pytest.raises(ValueError, match=r"`num_processes` \(3\) must divide"):
        pod.run(_config("pod_qwen2_5_7b", dry_run=True, num_processes=3, output_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="`target`/`draft` must name"):
        pod.run(_config(dry_run=True, target="no-such-model", output_dir=str(tmp_path)))


def test_run_checks_the_mesh_against_the_devices(tmp_path):
    # 2 x 2 = 4 devices, but the tests run on 8.
    with pytest.raises(ValueError, match=r"needs 4 devices, but the 1 process\(es\) have 8"):
        pod.run(_config(data=2, model=2, output_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="has no weights"):
        preset = "llama-3.2-1b"
        pod.run(_config(target=preset, draft=preset, data=2, model=4, output_dir=str(tmp_path)))


def _check_run(results, out_dir, trained: bool):
    assert results["same_tokens_as_greedy"], results["rows_differing"]
    assert results["processes"]["device_count"] == 8
    assert results["plan"]["data"] == 2 and results["plan"]["model"] == 4
    # Trained drafts are accepted (fewer target calls); random ones barely, never more calls.
    calls = results["target_calls"]
    assert (
        calls["speculative"] < calls["greedy"]
        if trained
        else calls["speculative"] <= calls["greedy"]
    )
    assert results["drafted"] > 0
    saved = json.loads((out_dir / "results.json").read_text())
    assert saved["same_tokens_as_greedy"] is True


@pytest.mark.slow  # ~9 s; sharded generation on 2 x 4 is in the fast tier (test_partitioning)
def test_tiny_pair_on_a_2x4_mesh_equals_greedy(tmp_path):
    """The shipped BPE Llama pair, tensor-parallel over 4 devices and batch over 2."""
    config = _config(data=2, model=4, batch_size=4, max_new_tokens=16, output_dir=str(tmp_path))
    results = pod.run(config)
    _check_run(results, tmp_path, trained=True)
    assert results["new_tokens"] == 4 * 16


@pytest.mark.slow  # a second pair of compiles
def test_random_weights_of_a_preset_shape_on_a_2x4_mesh(tmp_path):
    """random_init: weights initialised directly sharded, random prompts, bfloat16."""
    config = _config(
        target="tiny-llama-target", draft="tiny-llama-draft", random_init=True, data=2,
        model=4, batch_size=2, prompt_len=8, max_new_tokens=8, dtype="bfloat16",
        output_dir=str(tmp_path),
    )  # fmt: skip
    results = pod.run(config)
    _check_run(results, tmp_path, trained=False)
    assert results["plan"]["dtype"] == "bfloat16"


@pytest.mark.slow  # a third pair of compiles
def test_huggingface_folders_and_a_draft_padded_to_the_targets_vocabulary(tmp_path):
    """Folders: the target placed as it is read; a draft of fewer ids padded (as Qwen2.5's)."""
    import dataclasses

    from lookahead_jax import models

    target_config, target_params = models.load_pretrained("tiny-llama-target")
    draft_config, draft_params = models.load_pretrained("tiny-llama-draft")
    models.save_hf(tmp_path / "target", target_config, target_params)
    small = dataclasses.replace(draft_config, vocab_size=4000)
    draft_params = {**draft_params, "wte": draft_params["wte"][:4000]}
    models.save_hf(tmp_path / "draft", small, draft_params)
    config = _config(
        target=str(tmp_path / "target"), draft=str(tmp_path / "draft"), data=2, model=4,
        batch_size=2, prompt_len=8, max_new_tokens=8, output_dir=str(tmp_path / "out"),
    )  # fmt: skip
    results = pod.run(config)
    _check_run(results, tmp_path / "out", trained=False)
    assert any("draft vocabulary 4000 padded" in note for note in results["plan"]["notes"])
