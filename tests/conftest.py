"""Test setup: 8 simulated CPU devices so every sharding path runs, set before JAX loads."""

import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree

os.environ["JAX_PLATFORMS"] = "cpu"
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
# Tests run tiny shapes, so compiling dominates their time, not running: LLVM's backend
# optimisation level 0 compiles ~30% faster on CPU. Tests check values, never speed, and
# compare programs compiled under the same flags. Benchmarks (experiments/) keep the default.
if "--xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
# XLA:CPU's older (non-MLIR) fusion emitters compile the suite's programs faster (fast
# tier on 2 cores: 614 s under the default, 323-390 s under them); values are checked the
# same way. A few tests state properties of the code XLA generates by default (exact
# mode's bitwise independence of call width and row blocking, the HLO of a generation
# round): marked `default_compiler`, they run in a subprocess under the default emitters
# (`_DEFAULT_COMPILER` set there); exact mode's bitwise claims fail under the older ones.
# Newer jaxlibs (0.12.1) no longer know the flag; there everything runs under the default.
_DEFAULT_COMPILER = "LOOKAHEAD_TEST_DEFAULT_COMPILER"
_EMITTERS_FLAG = "--xla_cpu_use_fusion_emitters"
_OLDER_EMITTERS = _EMITTERS_FLAG + "=false"
_OLDER_EMITTERS_KNOWN = "LOOKAHEAD_TEST_OLDER_EMITTERS_KNOWN"  # "1"/"0", set once per run


def _older_emitters_known() -> bool:
    """Whether this jaxlib's XLA knows the flag (newer ones abort on it as unknown). Probed
    once in a subprocess; pytest-xdist workers inherit the answer through the environment."""
    if os.environ.get(_OLDER_EMITTERS_KNOWN) not in ("0", "1"):
        probe = subprocess.run(
            [sys.executable, "-c", "import jax; jax.numpy.zeros(1).block_until_ready()"],
            env=dict(os.environ, XLA_FLAGS=_OLDER_EMITTERS, JAX_PLATFORMS="cpu"),
            capture_output=True,
        )
        os.environ[_OLDER_EMITTERS_KNOWN] = "1" if probe.returncode == 0 else "0"
    return os.environ[_OLDER_EMITTERS_KNOWN] == "1"


if (
    os.environ.get(_DEFAULT_COMPILER) != "1"
    and _EMITTERS_FLAG not in os.environ["XLA_FLAGS"]
    and _older_emitters_known()
):
    os.environ["XLA_FLAGS"] += " " + _OLDER_EMITTERS

# One run compiles many identical programs again: every test module ends with
# `jax.clear_caches()` (see `_release_compiled_programs`), modules build the same models
# and loops, and the two pytest-xdist workers compile the same shared pieces. JAX's
# persistent compilation cache, in a directory private to this run (created here, shared
# with the workers and subprocesses through the environment, removed at exit), turns those
# into reads: ~25% of compiles, fast tier on 2 cores 301 -> 263 s. Every program is still
# compiled once per run from its HLO, under this run's flags (part of the cache key); a
# directory the caller set is used as it is.
_CACHE_DIR = "JAX_COMPILATION_CACHE_DIR"
if not os.environ.get(_CACHE_DIR):
    import atexit
    import shutil

    os.environ[_CACHE_DIR] = tempfile.mkdtemp(prefix="lookahead-jax-test-compile-cache-")
    atexit.register(shutil.rmtree, os.environ[_CACHE_DIR], ignore_errors=True)
# The default caches only programs that took over 1 s to compile; the suite's take less.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# As a user's process has it after `import lookahead_jax` (small loops in one kernel).
from lookahead_jax import _xla_cpu  # noqa: E402

_xla_cpu.enable_small_loop_kernels()

import jax  # noqa: E402
import pytest  # noqa: E402

assert jax.device_count() == 8, "tests expect 8 simulated CPU devices"
_resource_log = os.environ.get("LOOKAHEAD_TEST_RESOURCE_LOG")  # see the end of this file


def _map_count():
    """The process's memory mappings (None where /proc is absent)."""
    try:
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)
    except OSError:
        return None


try:
    with open("/proc/sys/vm/max_map_count") as _f:
        _MAX_MAP_COUNT = int(_f.read())
except (OSError, ValueError):
    _MAX_MAP_COUNT = None


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """Under ``pytest -n N`` without a ``--dist``, each test module runs on one worker
    (``loadfile``): a module's shared compiled programs are compiled once, not once per
    worker (fast tier on 2 cores: ~3% less compiling). Runs before pytest-xdist's own hook,
    which would pick ``load``."""
    if getattr(config.option, "dist", None) == "no" and getattr(
        config.option, "numprocesses", None
    ):
        config.option.dist = "loadfile"


_default_compiler_results: dict[str, tuple[str, str]] = {}  # nodeid -> (outcome, report)


def _run_under_default_compiler(items) -> None:
    """Runs ``items`` in one pytest subprocess with XLA's default emitters; records results."""
    env = dict(os.environ, **{_DEFAULT_COMPILER: "1"})
    env["XLA_FLAGS"] = " ".join(
        flag for flag in env["XLA_FLAGS"].split() if not flag.startswith(_EMITTERS_FLAG)
    )
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.xml")
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"]
        done = subprocess.run(
            [*command, "-m", "", f"--junitxml={report}", *(item.nodeid for item in items)],
            cwd=str(items[0].config.rootpath),
            env=env,
            capture_output=True,
            text=True,
        )
        cases = {}
        if os.path.exists(report):
            for case in ElementTree.parse(report).iter("testcase"):
                problems = [c for c in case if c.tag in ("failure", "error", "skipped")]
                tags = {c.tag for c in problems}
                outcome = "failed" if tags - {"skipped"} else "skipped" if tags else "passed"
                text = "\n".join((c.get("message") or "") + "\n" + (c.text or "") for c in problems)
                cases[case.get("name")] = (outcome, text)
    for item in items:
        outcome, text = cases.get(item.name, ("failed", "no result"))
        if outcome == "failed":
            output = f"{done.stdout[-3000:]}{done.stderr[-2000:]}"
            text = f"{text[-6000:]}\n--- subprocess output ---\n{output}"
        _default_compiler_results[item.nodeid] = (outcome, text)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Runs a `default_compiler` test in a fresh process under XLA's default emitters (all
    such tests of its module in one process, on first use)."""
    if pyfuncitem.get_closest_marker("default_compiler") is None:
        return None
    if os.environ.get(_DEFAULT_COMPILER) == "1" or _OLDER_EMITTERS not in os.environ["XLA_FLAGS"]:
        return None  # this process compiles with the default emitters: run the test here
    if pyfuncitem.nodeid not in _default_compiler_results:
        module = pyfuncitem.nodeid.split("::")[0]
        _run_under_default_compiler(
            [
                item
                for item in pyfuncitem.session.items
                if item.nodeid.split("::")[0] == module
                and item.get_closest_marker("default_compiler") is not None
                and item.nodeid not in _default_compiler_results
            ]
        )
    outcome, text = _default_compiler_results[pyfuncitem.nodeid]
    if outcome == "skipped":
        pytest.skip(f"skipped under XLA's default emitters (subprocess): {text.strip()}")
    if outcome == "failed":
        pytest.fail(f"failed under XLA's default emitters (subprocess):\n{text}", pytrace=False)
    return True


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs(request):
    """Drops every compiled program when a test module ends (issue 22).

    jit caches keep an executable alive as long as the function it was compiled for:
    module-level jits and library functions live for the whole pytest process, so without
    this every executable of the run stays alive. XLA:CPU holds three memory mappings per
    compiled kernel of each live executable; a whole-suite run in one process reached
    ~2,700 executables, ~65,000 mappings and 6 GB RSS, passed vm.max_map_count (65,530 by
    default) and segfaulted inside XLA compilation. Test modules share few programs, so
    clearing here bounds one process by its largest module at the cost of a few recompiles.
    """
    yield
    maps = _map_count()
    jax.clear_caches()
    if _resource_log:
        with open(_resource_log, "a") as f:
            f.write(f"# {request.node.nodeid} ended with {maps} mappings\n")
    if maps is not None and _MAX_MAP_COUNT and maps > _MAX_MAP_COUNT // 2:
        pytest.fail(
            f"{request.node.nodeid} ended with {maps} memory mappings, over half of "
            f"vm.max_map_count ({_MAX_MAP_COUNT}): the process segfaults in XLA compilation "
            "at the limit. Share compiled functions across its tests (fixed shapes, one jit "
            "per configuration) or split the module.",
            pytrace=False,
        )


# ---- opt-in resource log (issue 22) ---------------------------------------------------------
# LOOKAHEAD_TEST_RESOURCE_LOG=/path/file.tsv appends one line per test: seconds since start,
# the process's memory mappings (the kernel caps them at /proc/sys/vm/max_map_count; XLA:CPU
# keeps three per compiled kernel of every live executable), RSS and peak RSS in MB, live XLA
# executables, compilations so far and in this test, the test id, and the functions compiled
# with the mappings each added. Off unless the variable is set.
if _resource_log:
    import collections
    import time

    import jax.monitoring

    _log = {"t0": time.time(), "compiles": 0, "seen": 0, "maps": _map_count()}
    _compiled = collections.Counter()  # "name+maps" -> count, since the last test

    def _on_compile(event, duration, fun_name="?", **_):
        if event == "/jax/core/compile/backend_compile_duration":
            maps = _map_count()
            _compiled[f"{fun_name}+{maps - _log['maps']}"] += 1
            _log["maps"] = maps
            _log["compiles"] += 1

    jax.monitoring.register_event_duration_secs_listener(_on_compile)

    def pytest_runtest_logreport(report):
        if report.when != "teardown":
            return
        with open("/proc/self/status") as f:
            status = dict(line.split(":", 1) for line in f)
        maps = _log["maps"] = _map_count()
        new, _log["seen"] = _log["compiles"] - _log["seen"], _log["compiles"]
        fields = [
            f"{time.time() - _log['t0']:.0f}",
            maps,
            int(status["VmRSS"].split()[0]) // 1024,
            int(status["VmHWM"].split()[0]) // 1024,
            len(jax.devices()[0].client.live_executables()),
            _log["compiles"],
            new,
            report.nodeid,
            ",".join(f"{k}*{v}" for k, v in _compiled.most_common()),
        ]
        _compiled.clear()
        with open(_resource_log, "a") as f:
            f.write("\t".join(map(str, fields)) + "\n")
