"""Test setup: 8 simulated CPU devices so every sharding path runs, set before JAX loads."""

import os

os.environ["JAX_PLATFORMS"] = "cpu"
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
# Tests run tiny shapes, so compiling dominates their time, not running: LLVM's backend
# optimisation level 0 compiles ~30% faster on CPU. Tests check values, never speed, and
# compare programs compiled under the same flags. Benchmarks (experiments/) keep the default.
if "--xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"

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
