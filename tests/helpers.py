"""Reference helpers shared by several test files (naive trees, exact laws, perturbed weights)."""

import contextlib
import importlib.util
import itertools
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from lookahead_jax.sampling import Sampling, log_probs


def load_module(name: str, path: pathlib.Path):
    """Import a script (an experiment or a config, not a package module) from its file path."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_experiment(
    name: str, output_dir: pathlib.Path, *overrides: str, timeout: float = 300
) -> tuple[dict, str]:
    """Runs ``experiments/NAME.py`` with ``configs/NAME.py``, ``--config.quick=True``, the
    ``overrides`` and ``output_dir``, as a user would (a subprocess); returns its
    ``results.json`` and stdout. Fails the test with the tail of stderr if it exits nonzero."""
    root = pathlib.Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [
            sys.executable,
            str(root / "experiments" / f"{name}.py"),
            f"--config={root / 'configs' / f'{name}.py'}",
            "--config.quick=True",
            *overrides,
            f"--config.output_dir={output_dir}",
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((pathlib.Path(output_dir) / "results.json").read_text()), done.stdout


def perturbed(params, scale, seed):
    """``params`` plus N(0, scale^2) noise: larger weights give peaked, trained-like outputs."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    noisy = [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(treedef, noisy)


def naive_ancestor_mask(parents):
    """[N, N] bool: node j is node i or one of its ancestors (parent -1 = the root)."""
    n = len(parents)
    mask = np.zeros((n, n), bool)
    for node in range(n):
        walk = node
        while walk >= 0:
            mask[node, walk] = True
            walk = parents[walk]
    return mask


def root_path(parents, node):
    """Node indices from the root's child down to ``node``."""
    path = []
    while node >= 0:
        path.append(node)
        node = parents[node]
    return path[::-1]


def exact_continuation_law(target, prompt, length, sampling=Sampling(temperature=1.0)):
    """Exact p(t_1..t_length | prompt) of every continuation, from cache-free forward passes.

    Args:
      target: a model; prompt: [1, P] int.
    Returns:
      [V ** length] probabilities indexed by ``continuation_codes``.
    """
    vocab = target.config.vocab_size
    width = prompt.shape[1]
    continuations = jnp.asarray(list(itertools.product(range(vocab), repeat=length)), jnp.int32)
    count = continuations.shape[0]
    full = jnp.concatenate([jnp.broadcast_to(prompt, (count, width)), continuations], axis=1)
    log_p = log_probs(jax.jit(lambda m, x: m(x)[0])(target, full), sampling)
    rows = jnp.arange(count)
    return np.exp(
        sum(np.asarray(log_p[rows, width - 1 + i, continuations[:, i]]) for i in range(length))
    )


def continuation_codes(tokens, vocab):
    """[N, length] tokens -> [N] indices into ``exact_continuation_law`` (first token major)."""
    length = tokens.shape[1]
    return np.asarray(tokens) @ (vocab ** np.arange(length - 1, -1, -1))


@contextlib.contextmanager
def count_compilations():
    """XLA compilations inside the block: ``with count_compilations() as count: ...``, then
    ``count()``. Pure functions called twice at the same shapes must not compile again."""
    events = []

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(kwargs.get("fun_name"))

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield lambda: len(events)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def ragged_prompts(vocab, batch, width, seed, *, min_length=1, period=None):
    """A ragged prompt batch: ``(prompt [batch, width] int32, lengths [batch] int32)``.

    Lengths are drawn in ``[min_length, width]`` with row 0 at full width; with ``period``
    each row repeats a random block of that many tokens (something for prompt lookup and
    n-gram drafters to find), else every token is uniform over ``vocab``.
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_length, width + 1, batch)
    lengths[0] = width
    if period:
        base = rng.integers(0, vocab, (batch, period))
        prompt = np.tile(base, (1, width // period + 1))[:, :width]
    else:
        prompt = rng.integers(0, vocab, (batch, width))
    return jnp.asarray(prompt, jnp.int32), jnp.asarray(lengths, jnp.int32)


# ---- several processes of one script (tests/test_multiprocess.py, train_lm) ----------------
# Set by a cluster or a user; the processes started here get their setup from flags only.
_CLEARED_ENV = (
    "JAX_COORDINATOR_ADDRESS",
    "JAX_NUM_PROCESSES",
    "JAX_PROCESS_ID",
    "LOOKAHEAD_JAX_DISTRIBUTED",
    "XLA_FLAGS",
    "LOOKAHEAD_JAX_KEEP_XLA_FLAGS",
)
PROCESS_TIMEOUT_S = 300  # per launch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start_processes(args, processes: int, devices: int, logs: pathlib.Path, name: str) -> list:
    """Starts ``python *args`` as ``processes`` processes of ``devices`` CPU devices each,
    joined on localhost through the scripts' ``--coordinator_address/--num_processes/
    --process_id`` flags (none for one process). Returns ``[(Popen, log path), ...]``.

    Every run gets the same XLA flags, the fast tier's (tests/conftest.py) with its own
    device count; ``import lookahead_jax`` adds the small-loop threshold.
    """
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED_ENV}
    env["XLA_FLAGS"] = (
        f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    )
    env["JAX_PLATFORMS"] = "cpu"
    started = []
    for pid in range(processes):
        command = [sys.executable, *map(str, args)]
        if processes > 1:
            command += [
                f"--coordinator_address=localhost:{port}",
                f"--num_processes={processes}",
                f"--process_id={pid}",
            ]
        log = pathlib.Path(logs) / f"{name}_{pid}.log"
        with open(log, "wb") as f:
            started.append(
                (subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=env), log)
            )
    return started


def _tail(log: pathlib.Path, chars: int = 4000) -> str:
    # gloo announces every connection; those lines would hide the traceback.
    lines = [x for x in log.read_text(errors="replace").splitlines() if "[Gloo]" not in x]
    return "\n".join(lines)[-chars:]


def _kill(started: list) -> None:
    for p, _ in started:
        if p.poll() is None:
            p.kill()
            p.wait()


def wait_processes(started: list, what: str, timeout_s: float = PROCESS_TIMEOUT_S) -> None:
    """Waits for every process; on a failure or the timeout kills the rest and fails with
    each process's output (a process left alone would wait at a barrier until the timeout)."""
    import pytest

    deadline = time.monotonic() + timeout_s
    failed = None
    try:
        while failed is None and any(p.poll() is None for p, _ in started):
            failed = next((log for p, log in started if p.poll() not in (None, 0)), None)
            if time.monotonic() > deadline:
                failed = "timeout"
            time.sleep(0.2)
    finally:  # also when pytest itself is interrupted: no orphaned processes
        if failed is not None or any(p.poll() is None for p, _ in started):
            _kill(started)
    failed = failed or next((log for p, log in started if p.returncode != 0), None)
    if failed is None:
        return
    report = "\n".join(
        f"--- {log.name} (exit code {p.returncode}) ---\n{_tail(log)}" for p, log in started
    )
    reason = f"timed out after {timeout_s} s" if failed == "timeout" else f"{failed.name} failed"
    pytest.fail(f"{what} {reason}:\n{report}", pytrace=False)


def trie_paths(trie, memory):
    """``{token path from the root: count}`` of one memory's live nodes (layout-free)."""
    token, parent, count = (np.asarray(x[memory]) for x in (trie.token, trie.parent, trie.count))
    paths = {}
    for node in np.flatnonzero(count > 0):
        path, walk = [], node
        while walk > 0:
            path.append(int(token[walk]))
            walk = parent[walk]
        paths[tuple(reversed(path))] = int(count[node])
    return paths
