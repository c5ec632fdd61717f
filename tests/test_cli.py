"""The `lookahead-jax` command: the tour runs on the shipped models with small settings."""

import json

import pytest

from lookahead_jax import cli


def test_tour_runs_and_reports_figures(tmp_path, capsys):
    out = tmp_path / "tour.json"
    args = ["tour", "--num-prompts", "2", "--max-new-tokens", "8", "--eval-windows", "4"]
    assert cli.main([*args, "--repeats", "1", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())["models"]
    for name in ("tiny-target", "tiny-draft"):
        assert 0 < figures["models"][name]["heldout_bits_per_byte"] < 8
        assert figures["models"][name]["greedy_tokens_per_s"] > 0
    assert 0 <= figures["greedy_agreement"] <= 1
    real = json.loads(out.read_text())["real_models"]
    assert real["speculative K=4 float32"]["same_as_greedy"]
    assert real["qwen3_round_trip_exact"]
    assert 0 < real["tiny-llama-target heldout_bits_per_byte"] < 8
    assert "tokens/s" in capsys.readouterr().out


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit):
        cli.main(["nonsense"])
