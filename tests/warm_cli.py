"""The console scripts run in forked copies of one warm interpreter (a fork server).

A CLI run of the suite's tiny budgets spends most of its ~6 CPU seconds importing torch (and
torch._dynamo, which torch.optim imports on first use), scikit-learn's digits loader, scipy
and Hydra; the run itself takes well under a second. Each pytest process therefore starts one
server that imports those once and then forks a child per run. The child is still a process of
its own, running the console script's entry point (`prunebench.cli:main`, ...) with the test's
arguments, working directory and environment, stdout and stderr to files, its exit code and
its death by a signal reported like `subprocess.run`'s, and the interpreter's exit sequence
(non-daemon threads joined, atexit handlers run, streams flushed).

What a fork cannot show is a fresh interpreter's start-up: run_cli keeps a plain subprocess
for `--help`/`--cfg`-style calls, for environments that change what is read at import time
(PYTHONPATH, COLUMNS, thread and device variables), and for everything when
PRUNEBENCH_TEST_FORK=0; tests of start-up itself (test_cli, test_install) use plain processes.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

SCRIPTS = {"prunebench": ("prunebench.cli", "main"),
           "prunebench-report": ("prunebench.results.report", "main"),
           "prunebench-sensitivity": ("prunebench.sensitivity", "main")}
# what every run imports and is slow to import; the modules a run imports only when it needs
# them (transformers, timm, onnx, trackers, matplotlib) are left to the child, as in a fresh run
PRELOAD = ("torch", "torch._dynamo", "torch.optim", "sklearn.datasets", "sklearn.model_selection",
           "scipy.stats", "hydra", "omegaconf", *(m for m, _ in SCRIPTS.values()),
           "prunebench.runner", "prunebench.distributed", "prunebench.config.inputs",
           "prunebench.results.objective", "prunebench.results.table", "prunebench.data.digits")
# environment variables read when the modules above are imported: a run that sets one of them
# differently gets a fresh interpreter
IMPORT_TIME_ENV = ("PYTHON", "COLUMNS", "LINES", "OMP_", "MKL_", "KMP_", "TORCH", "CUDA",
                   "LD_")
START_UP_ARGS = ("-h", "--help", "--cfg", "--info", "--hydra-help", "--shell-completion")


def import_time_changes(a: dict, b: dict) -> set[str]:
    """The variables of IMPORT_TIME_ENV whose values differ between environments a and b."""
    return {k for k in set(a) | set(b) if a.get(k) != b.get(k) and k.startswith(IMPORT_TIME_ENV)}


class Server:
    """The test side: starts the server on first use, one run at a time. It serves the test
    process's current environment: when that changes in a variable read at import time (a
    library the tests import sets one, e.g. TORCHINDUCTOR_CACHE_DIR or KMP_INIT_AT_FORK; or
    a test's monkeypatch), the server is started again under the new one."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()
        self.env = dict(os.environ)  # what the running server imported under
        atexit.register(self.stop)

    def runs_like_a_fresh_process(self, script: str, args: list[str], env: dict) -> bool:
        """Whether a fork of the server runs `script args` in `env` as a fresh process would:
        the run's own environment differs from the test process's in nothing read at import."""
        if os.environ.get("PRUNEBENCH_TEST_FORK", "1") == "0" or script not in SCRIPTS:
            return False
        if any(a.startswith(START_UP_ARGS) for a in args):
            return False  # start-up itself is what these show
        return not import_time_changes(env, dict(os.environ))

    def start(self):
        self.env = dict(os.environ)
        self.proc = subprocess.Popen([sys.executable, "-c", SERVE, str(Path(__file__).parent)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     bufsize=1, env=self.env)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the warm CLI server did not start")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)

    def run(self, argv0: str, script: str, args: list[str], cwd: Path, env: dict,
            timeout: float, out_dir: Path) -> subprocess.CompletedProcess:
        with self.lock:
            if import_time_changes(self.env, dict(os.environ)):
                self.stop()  # imported under an environment the test process has left
            if self.proc is None or self.proc.poll() is not None:
                self.start()
            stdout, stderr = out_dir / "stdout", out_dir / "stderr"
            request = {"argv0": argv0, "script": script, "args": args, "cwd": str(cwd),
                       "env": env, "stdout": str(stdout), "stderr": str(stderr)}
            self.proc.stdin.write(json.dumps(request) + "\n")
            pid = int(self.proc.stdout.readline())
            deadline = time.monotonic() + timeout
            while not select.select([self.proc.stdout], [], [], 1.0)[0]:
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    self.proc.stdout.readline()
                    raise subprocess.TimeoutExpired([argv0, *args], timeout,
                                                    stdout.read_text(), stderr.read_text())
            returncode = int(self.proc.stdout.readline())
            return subprocess.CompletedProcess([argv0, *args], returncode, stdout.read_text(),
                                               stderr.read_text())


# --- the server side (run with `python -c SERVE TESTS_DIR`) --------------------------------
SERVE = """
import sys
sys.path.insert(0, sys.argv[1])
import warm_cli
warm_cli.serve()
"""


def serve():
    import importlib

    path = [p for p in sys.path if p not in ("", sys.argv[1])]  # the child's sys.path[1:]
    for module in PRELOAD:
        importlib.import_module(module)
    requests = os.fdopen(0, "r")
    os.write(1, b"ready\n")
    for line in requests:
        request = json.loads(line)
        sys.stdout.flush(), sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            try:
                run_child(request, path)
            finally:
                os._exit(70)  # not reached
        os.write(1, f"{pid}\n".encode())
        _, status = os.waitpid(pid, 0)
        os.write(1, f"{os.waitstatus_to_exitcode(status)}\n".encode())


def run_child(request: dict, path: list[str]) -> None:
    """What the console script's interpreter does, from `sys.exit(main())` to its exit."""
    for fd, name, mode in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY),
                           (2, request["stderr"], os.O_WRONLY)):
        opened = os.open(name, mode | (os.O_CREAT | os.O_TRUNC if fd else 0), 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = [request["argv0"], *request["args"]]
    sys.path[:] = [str(Path(request["argv0"]).parent), *path]  # a console script's sys.path
    module, name = SCRIPTS[request["script"]]
    try:
        code = getattr(sys.modules[module], name)()
    except SystemExit as stop:
        code = stop.code
    except KeyboardInterrupt:
        traceback.print_exc()
        finish()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:
        traceback.print_exc()
        code = 1
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    finish()
    os._exit(code & 0xFF)


def finish():
    """The interpreter's exit: non-daemon threads joined, atexit handlers, streams flushed."""
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed stream, as a fresh interpreter would ignore it
            pass
