"""`chaser-auth` commands for the tests, each in a process of its own, started without paying
for the imports every time.

A command is a real process: its own arguments, environment, working directory, stdin, stdout
and stderr, exit code and signals, running the console script's `main`. It is forked from
Python's `multiprocessing` fork server, which imported the CLI once for the test worker, so the
second or so of imports a new interpreter pays (most of a short command's time) is paid once.

Under coverage (`CHASER_AUTH_COVERAGE=1`) each command is started as the installed console
script instead, so coverage measures it as a process of its own. The installed script itself is
also run as such by `tests/test_version.py` and the documented-command tests."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

CLI = Path(sys.executable).parent / "chaser-auth"
BY_EXEC = os.environ.get("CHASER_AUTH_COVERAGE") == "1"

_FORKS = multiprocessing.get_context("forkserver")
_FORKS.set_forkserver_preload(["chaser_auth.cli", "chaser_auth.app", "uvicorn", "tests.processes"])


def _command(
    args: Sequence[str], cwd: str, env: dict[str, str], stdin: str, stdout: str, stderr: str
) -> None:
    """In the forked process: become `chaser-auth ARGS` run in `cwd` with `env` and these files
    as its standard streams, then exit with the command's status."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    streams = {0: os.open(stdin, os.O_RDONLY)}
    streams[1] = os.open(stdout, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    streams[2] = (
        streams[1] if stderr == stdout else os.open(stderr, os.O_WRONLY | os.O_CREAT, 0o600)
    )
    for fd, opened in streams.items():
        os.dup2(opened, fd)
    for opened in set(streams.values()):
        os.close(opened)
    sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115 (the process's own stdin)
    sys.argv = [str(CLI), *args]
    from chaser_auth.cli import main

    sys.exit(main(list(args)))


class Command:
    """A started command, as much of `subprocess.Popen` as the tests use."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        cwd: Path,
        env: dict[str, str],
        stdin: Path,
        out: Path,
        err: Path,
    ) -> None:
        self.args = [str(CLI), *args]
        self.process: multiprocessing.process.BaseProcess | subprocess.Popen[bytes]
        if BY_EXEC:
            with stdin.open("rb") as i, out.open("ab") as o, err.open("ab") as e:
                self.process = subprocess.Popen(
                    self.args,
                    cwd=cwd,
                    env=env,
                    stdin=i,
                    stdout=o,
                    stderr=subprocess.STDOUT if err == out else e,
                )
        else:
            self.process = _FORKS.Process(
                target=_command, args=(list(args), str(cwd), env, str(stdin), str(out), str(err))
            )
            self.process.start()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        if isinstance(self.process, subprocess.Popen):
            return self.process.returncode
        return self.process.exitcode

    def poll(self) -> int | None:
        if isinstance(self.process, subprocess.Popen):
            return self.process.poll()
        return self.process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        if isinstance(self.process, subprocess.Popen):
            return self.process.wait(timeout)
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self.process.exitcode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def start(
    args: Sequence[str], *, cwd: Path, env: dict[str, str], log: Path, stdin: Path | None = None
) -> Command:
    """`chaser-auth ARGS` running, its stdout and stderr appended to `log`."""
    log.touch(mode=0o600)
    return Command(args, cwd=cwd, env=env, stdin=stdin or Path(os.devnull), out=log, err=log)


def run(
    args: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str],
    input: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """`chaser-auth ARGS` to its end, like `subprocess.run(..., capture_output=True, text=True)`."""
    with tempfile.TemporaryDirectory(prefix="chaser-auth-command-") as folder:
        stdin, out, err = (Path(folder) / name for name in ("stdin", "stdout", "stderr"))
        stdin.write_text(input or "", encoding="utf-8")
        command = Command(args, cwd=cwd, env=env, stdin=stdin, out=out, err=err)
        try:
            code = command.wait(timeout)
        except subprocess.TimeoutExpired:
            command.kill()
            command.wait()
            raise
        read = {
            path: path.read_text(encoding="utf-8") if path.exists() else "" for path in (out, err)
        }
        return subprocess.CompletedProcess(command.args, code, read[out], read[err])
