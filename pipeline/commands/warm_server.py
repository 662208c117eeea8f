"""The process that `rvpt stage`, `rvpt defend` and `rvpt scan` commands fork from (see
pipeline/commands/warm.py for why and how).

It imports what stages import, then waits on its socket. For each caller it forks a child that
takes the caller's folder, environment, umask, import path and standard streams and runs the
command line exactly as `rvpt` would; the server reports the child's exit status to the caller.
It never runs torch itself, so a child starts with no thread pool, CUDA context or tracking
connection inherited. Started by pipeline/commands/warm.py, never by hand.
"""
from __future__ import annotations

import gc
import importlib
import json
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

from pipeline.commands.warm import HEADER, STATUS, inside, peer_uid

# What stage commands import, by name: the server is launched, never imported, so these do not
# count as any stage's code dependencies.
PRELOAD = ("torch", "open_clip", "mlflow", "mlflow.store.tracking.sqlalchemy_store", "mlflow.pyfunc",
           "pipeline.cli", "pipeline.stages.download", "pipeline.stages.poison", "pipeline.stages.pretrain",
           "pipeline.stages.sample", "pipeline.stages.tune", "pipeline.stages.scan", "pipeline.stages.evaluate",
           "pipeline.stages.report", "pipeline.commands.defend", "pipeline.commands.scan")
MAX_REQUEST = 16 * 2 ** 20
RECEIVE_TIMEOUT_S = 10


def receive(conn: socket.socket) -> tuple[dict, list[int]]:
    header, fds, _, _ = socket.recv_fds(conn, HEADER.size, 3)
    if len(header) != HEADER.size or len(fds) != 3:
        raise OSError("malformed request")
    size, data = HEADER.unpack(header)[0], b""
    if size > MAX_REQUEST:
        raise OSError("request too large")
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise OSError("caller left")
        data += chunk
    return json.loads(data), fds


def watch(conn: socket.socket) -> None:
    """In the child: a signal the caller got is raised here too; the caller's death kills this process."""
    while True:
        try:
            got = conn.recv(1)
        except OSError:
            got = b""
        if not got:
            os.kill(os.getpid(), signal.SIGKILL)
        os.kill(os.getpid(), got[0])


def child(conn: socket.socket, request: dict, fds: list[int]) -> int:
    """Becomes the caller's command: its streams, folder, environment; returns the exit code."""
    signal.set_wakeup_fd(-1)
    for number in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(number, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in set(fds) - {0, 1, 2}:
        os.close(fd)
    sys.stdout.reconfigure(line_buffering=os.isatty(1))
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.umask(request["umask"])
    sys.path[:] = request["path"]
    sys.argv = ["rvpt", *request["argv"]]
    threading.Thread(target=watch, args=(conn,), daemon=True).start()
    from pipeline.cli import invoke

    try:
        return invoke(request["argv"])
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:  # what an uncaught exception does to a cold process
        traceback.print_exc()
        return 1


def reap(children: dict[int, socket.socket]) -> None:
    """Reports each ended child's exit status to its caller (minus the signal number if killed)."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is not None:
            code = os.waitstatus_to_exitcode(status)
            try:
                conn.sendall(STATUS.pack(code))
            except OSError:
                pass  # the caller is gone
            conn.close()


def serve(listener: socket.socket, path: Path, mine: int, idle: float) -> int | None:
    """Serves until idle; in a forked child, returns that child's exit code instead."""
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: dict[int, socket.socket] = {}
    last = time.monotonic()
    while True:
        timeout = None if children else idle - (time.monotonic() - last)
        if timeout is not None and timeout <= 0:
            return None
        ready, _, _ = select.select([listener, wake_read], [], [], timeout)
        if wake_read in ready:
            os.read(wake_read, 4096)
        if children:
            reap(children)
            if not children:
                last = time.monotonic()
        if listener in ready:
            conn, _ = listener.accept()
            last = time.monotonic()
            try:
                if peer_uid(conn) != os.getuid():
                    raise OSError("another user")
                conn.settimeout(RECEIVE_TIMEOUT_S)  # a caller that connects and stalls must not stall the others
                request, fds = receive(conn)
                conn.settimeout(None)
            except (OSError, ValueError):
                conn.close()
                continue
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                listener.close()
                os.close(wake_read)
                os.close(wake_write)
                return child(conn, request, fds)
            for fd in fds:
                os.close(fd)
            children[pid] = conn
            print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} pid {pid}: rvpt {' '.join(request['argv'])} "
                  f"in {request['cwd']}", flush=True)
        if not children:
            try:
                if os.stat(path).st_ino != mine:
                    return None  # replaced by another server: leave it the socket
            except FileNotFoundError:
                return None


def main(argv: list[str]) -> None:
    path, idle = Path(argv[0]), float(argv[1])
    for name in PRELOAD:
        importlib.import_module(name)
    gc.collect()
    gc.freeze()  # children share these pages instead of copying them when the collector touches them
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    temporary = path.with_name(f"{path.name}.{os.getpid()}")
    with inside(path.parent):
        listener.bind(temporary.name)
    os.chmod(temporary, 0o600)
    listener.listen(64)
    os.replace(temporary, path)  # callers see the socket only once it accepts
    mine = os.stat(path).st_ino
    code = serve(listener, path, mine, idle)
    if code is not None:  # a child: end as the command would, with its atexit handlers and threads
        sys.exit(code)
    try:
        if os.stat(path).st_ino == mine:
            path.unlink()
            path.with_suffix(".log").unlink()  # kept only when a server dies otherwise, to read why
    except OSError:
        pass
