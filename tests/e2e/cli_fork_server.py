"""The process behind :class:`served.CliForker`: it imports the command line once, then for
each request (a JSON line on stdin: id, args, env, cwd, timeout) forks a child that runs
``tenantflow ARGS`` as ``python -m tenantflow.cli.main`` would — its own process, environment,
working directory, stdin from /dev/null, stdout and stderr to files — and answers with a JSON
line on stdout: id, exit code, stdout, stderr (or ``timed_out``, the child then killed).

No thread runs while a child is forked but the one reading stdin (answers are written by a
waiting thread, and a child writes only through file objects of its own).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from typing import Any

import tenantflow.cli.main  # the imports every child shares

_write = threading.Lock()
_answers = sys.stdout


def _child(request: dict[str, Any], out: str, err: str) -> None:
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        given = os.open(request.get("stdin_path") or os.devnull, os.O_RDONLY)
        os.dup2(given, 0)
        os.close(given)
        for fd, path in ((1, out), (2, err)):
            target = os.open(path, os.O_WRONLY | os.O_TRUNC)
            os.dup2(target, fd)
            os.close(target)
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.argv = [sys.executable, *request["args"]]
        sys.path[0] = os.getcwd()  # as ``python -m`` has it (not this script's directory)
        random.seed()  # not the parent's sequence
        code: Any = 0
        try:
            # The program name click finds for ``python -m tenantflow.cli.main``.
            tenantflow.cli.main.app(args=request["args"], prog_name="python -m tenantflow.cli.main")
        except SystemExit as exc:
            code = exc.code
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        if code is None:
            code = 0
        elif not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        code = 70
    os._exit(code)


def _wait(n: int, pid: int, timeout: float, out: str, err: str, *more: str) -> None:
    deadline = time.monotonic() + timeout
    timed_out = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            timed_out = True
            break
        time.sleep(0.01)
    answer: dict[str, Any] = {"id": n, "timed_out": timed_out}
    if not timed_out:
        answer["rc"] = os.waitstatus_to_exitcode(status)
        for name, path in (("stdout", out), ("stderr", err)):
            with open(path, encoding="utf-8", errors="replace") as f:
                answer[name] = f.read()
    for path in (out, err, *more):
        os.unlink(path)
    with _write:
        _answers.write(json.dumps(answer) + "\n")
        _answers.flush()


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        files = []
        for suffix in (".out", ".err"):
            fd, path = tempfile.mkstemp(prefix="tf-cli-", suffix=suffix)
            os.close(fd)
            files.append(path)
        if request.get("stdin") is not None:
            fd, path = tempfile.mkstemp(prefix="tf-cli-", suffix=".in")
            os.write(fd, request["stdin"].encode())
            os.close(fd)
            request["stdin_path"] = path
            files.append(path)
        with _write:  # no answer is half-written in the child's copy of this process
            pid = os.fork()
        if pid == 0:
            _child(request, files[0], files[1])
        waiter = threading.Thread(
            target=_wait, args=(request["id"], pid, float(request["timeout"]), *files), daemon=True
        )
        waiter.start()


if __name__ == "__main__":
    main()
