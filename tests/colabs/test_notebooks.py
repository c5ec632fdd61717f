"""Every notebook runs end to end with small parameters, and its .ipynb matches its .py."""

import os
import pathlib

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

COLABS = pathlib.Path(__file__).resolve().parents[2] / "colabs"
NOTEBOOKS = sorted(COLABS.glob("*.py"))

# Small parameters injected after each notebook's "parameters" cell.
SMALL = {
    "00_quickstart": "NUM_PROMPTS = 2\nPROMPT_LENGTH = 24\nMAX_NEW_TOKENS = 8",
    "01_speculative_decoding": (
        "BATCH = 2\nPROMPT_LENGTH = 24\nMAX_NEW_TOKENS = 16\nDRAFT_LENGTHS = (2, 4)\nREPEATS = 1"
    ),
    "02_token_trees": (
        "BATCH = 1\nPROMPT_LENGTH = 24\nMAX_NEW_TOKENS = 16\nTREE_SIZES = (8,)\nREPEATS = 1\n"
        'OTHER_DRAFTERS = ("stochastic_ngram",)'
    ),
    "03_particle_filtering": (
        "NUM_STEPS = 8\nNUM_PARTICLES = 256\nREPLICATES = 4\nRESAMPLE_REPLICATES = 200\n"
        "EPF_SEEDS = 32\nEPF_PARTICLES = 4"
    ),
    "04_predictive_coding": (
        "NUM_SUBJECTS = 4\nSUBJECT_STEPS = 100\nFIT_STEPS = 20\nNUM_DRAWS = 32"
    ),
    "05_leap_verify": (
        "NUM_LAYERS = 1\nD_MODEL = 32\nSEQ_LEN = 32\nBATCH = 8\nNUM_STEPS = 60\nDELTA = 10\n"
        "KS = (5, 10)\nCALIBRATION_CHECKS = 3"
    ),
    "06_decoding_strategies": (
        "NUM_PROMPTS = 2\nMAX_NEW_TOKENS = 16\nGROUP_SIZE = 2\nFIT_WINDOWS = 8\n"
        "STRATEGIES = ('greedy', 'momentum')"
    ),
    "08_real_models": "MAX_NEW_TOKENS = 12\nDRAFT_LENGTH = 2",
    "09_lookahead_family": (
        "PROMPT_LENGTH = 48\nMAX_NEW_TOKENS = 24\nNUM_REQUESTS = 4\nSWEEP = ((3, 3, 3),)"
    ),
}


def test_every_notebook_has_small_parameters():
    assert {path.stem for path in NOTEBOOKS} == set(SMALL)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_starts_with_a_colab_install_cell(path):
    """The first code cell installs the package in Colab and is a no-op where it is importable."""
    first = next(c for c in jupytext.read(path).cells if c.cell_type == "code")
    assert 'importlib.util.find_spec("lookahead_jax") is None' in first.source
    assert "pip" in first.source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_ipynb_in_sync_with_py(path):
    paired = path.with_suffix(".ipynb")
    assert paired.exists(), f"{paired.name} is missing: run `jupytext --to ipynb {path}`"
    source = jupytext.read(path)
    stored = nbformat.read(paired, as_version=4)
    assert [c.source for c in stored.cells] == [c.source for c in source.cells], (
        f"{paired.name} is out of sync: run `jupytext --to ipynb {path}`"
    )
    assert all(not c.get("outputs") for c in stored.cells if c.cell_type == "code")


@pytest.mark.slow  # minutes each: the slow tier (`pytest -m slow`) runs them
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    # Notebooks that rerun a benchmark import it from the checkout's experiments/ (benchmark
    # code is not in the wheel): the kernel gets the repository root on its path, as a user's
    # clone would.
    root = str(COLABS.parent)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    )
    notebook = jupytext.read(path)
    index = next(
        i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", [])
    )
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(SMALL[path.stem]))
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors
