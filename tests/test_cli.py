"""The `lookahead-jax` command: one small tour section here, the whole tour in the slow tier,
and a message (usage + what was wrong + the valid choices), never a traceback, for bad
arguments."""

import json
import math

import pytest

from lookahead_jax import cli

SMALL = ["--num-prompts", "2", "--max-new-tokens", "8", "--eval-windows", "4", "--repeats", "1"]


def _usage_error(capsys, argv) -> str:
    """Runs the command expecting argparse's exit 2; returns what it wrote to stderr."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return captured.err


def test_one_tour_section_runs_and_writes_json(tmp_path, capsys):
    out = tmp_path / "tour.json"
    # predictive_coding: the quickest section (~10 s on 2 cores; particles takes ~70 s).
    argv = ["tour", "--sections", "predictive_coding", *SMALL, "--json", str(out)]
    assert cli.main(argv) == 0
    figures = json.loads(out.read_text())
    assert set(figures) == {"predictive_coding", "wall_seconds"}
    assert math.isfinite(figures["predictive_coding"]["total_surprise"])
    assert "Tour finished" in capsys.readouterr().out


@pytest.mark.slow
def test_whole_tour_runs_and_reports_figures(tmp_path, capsys):
    out = tmp_path / "tour.json"
    assert cli.main(["tour", *SMALL, "--json", str(out)]) == 0
    figures = json.loads(out.read_text())["models"]
    for name in ("tiny-target", "tiny-draft"):
        assert 0 < figures["models"][name]["heldout_bits_per_byte"] < 8
        assert figures["models"][name]["greedy_tokens_per_s"] > 0
    assert 0 <= figures["greedy_agreement"] <= 1
    real = json.loads(out.read_text())["real_models"]
    assert real["speculative K=4 float32"]["same_as_greedy"]
    assert real["qwen3_round_trip_exact"]
    assert 0 < real["tiny-llama-target heldout_bits_per_byte"] < 8
    strategies = json.loads(out.read_text())["decoding_strategies"]
    assert strategies["momentum"]["ll_per_byte"] < 0
    assert "tokens/s" in capsys.readouterr().out


def test_unknown_command_names_it_and_the_choices(capsys):
    err = _usage_error(capsys, ["nonsense"])
    assert "'nonsense'" in err and "tour" in err


def test_unknown_tour_section_names_it_and_the_choices(capsys):
    err = _usage_error(capsys, ["tour", "--sections", "particle"])
    assert "'particle'" in err and "particles" in err and "predictive_coding" in err


@pytest.mark.parametrize(
    ("argv", "flag", "bad"),
    [
        (["--num-prompts", "0"], "--num-prompts", "'0'"),
        (["--repeats", "0"], "--repeats", "'0'"),  # was a StatisticsError after the tour
        (["--max-new-tokens", "-3"], "--max-new-tokens", "'-3'"),
        (["--prompt-length", "1"], "--prompt-length", "'1'"),
        (["--eval-windows", "many"], "--eval-windows", "'many'"),
        (["--sections"], "--sections", "expected at least one"),  # ran no section before
    ],
)
def test_bad_tour_values_name_the_argument(capsys, argv, flag, bad):
    err = _usage_error(capsys, ["tour", *argv])
    assert flag in err and bad in err


def test_sizes_that_do_not_fit_the_models_are_refused_before_running(capsys):
    err = _usage_error(capsys, ["tour", "--prompt-length", "200", "--max-new-tokens", "64"])
    assert "--prompt-length 200 + --max-new-tokens 64" in err and "256 positions" in err


def test_json_into_a_missing_folder_is_refused_before_running(tmp_path, capsys):
    # Before, the whole tour ran and then open() raised FileNotFoundError.
    err = _usage_error(capsys, ["tour", "--json", str(tmp_path / "missing" / "t.json")])
    assert "--json" in err and "does not exist" in err


@pytest.mark.parametrize(
    ("name", "script"), [("spec", "speculative_decoding"), ("hgf", "compare_pyhgf")]
)
def test_bench_says_benchmarks_moved_to_experiments(capsys, name, script):
    err = _usage_error(capsys, ["bench", name])
    assert "not part of the installed package" in err
    assert f"python experiments/{script}.py" in err


def test_bench_with_an_unknown_name_lists_the_old_names(capsys):
    err = _usage_error(capsys, ["bench", "spek"])
    assert "'spek'" in err and "spec" in err and "strategies" in err


def test_bench_is_not_offered_in_the_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "bench" not in capsys.readouterr().out


def test_the_package_holds_no_benchmark_or_experiment_code():
    # Benchmarks moved to experiments/ (not in the wheel); the library must not need them.
    import importlib.util
    import pathlib

    import lookahead_jax

    assert importlib.util.find_spec("lookahead_jax.benchmarks") is None
    package = pathlib.Path(lookahead_jax.__file__).parent
    for path in package.rglob("*.py"):
        source = path.read_text()
        for needle in ("import experiments", "from experiments", "lookahead_jax.benchmarks"):
            assert needle not in source, (path, needle)
