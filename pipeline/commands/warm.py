"""`rvpt stage`, `rvpt defend` and `rvpt scan` commands that start in a fraction of a second.

Importing torch, open_clip and mlflow costs 6-11 s of every stage process on a 2-core VM, more
than most stages' own work. So a stage command asks a warm server (pipeline/commands/warm_server.py), a
process that imported them once, to fork: the child runs exactly the command a cold process
would run, in the caller's folder, with its environment, arguments and standard streams, and
the caller exits with the child's exit code. Signals sent to the caller reach the child; if the
caller is killed, the child kills itself.

A server serves one state of the code. Its socket's name digests the interpreter, the import
path, the environment (but for variables that change per command and that no import reads), the
installed packages' folder and the size and mtime of every pipeline/ and rvpt/ source file: an
edit, or `uv sync`, starts a new server, and the old one exits once idle. A server exits after
`startup.warm_s` idle seconds; `startup.warm_s: 0` makes every stage import everything itself.
Results do not depend on which way a stage started (tests/e2e/test_warm.py compares the trained
tensors, the loss curve and the output).

The sockets live in a folder only this user can enter ($XDG_RUNTIME_DIR, else the temporary
folder); a server also checks each caller's uid. Anything unusual (no such folder, a foreign
owner, a server that does not come up) falls back to running the command in this process.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("pipeline", "rvpt")
# Environment variables that change from one command to the next and that nothing reads while
# importing: DVC's per-stage ones, pytest's, the shell's, MLflow's tracking server (read per
# call). Every other variable is part of a server's name, since some library may read it on import
# (huggingface_hub fixes its cache folder from HF_HUB_CACHE then).
VOLATILE = ("PWD", "OLDPWD", "SHLVL", "_", "COLUMNS", "LINES", "XDG_RUNTIME_DIR", "MLFLOW_TRACKING_URI",
            "RVPT_PROGRESS_S")
VOLATILE_PREFIXES = ("DVC_", "PYTEST_", "MLFLOW_HTTP_REQUEST_")
RELAYED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
MAX_IDLE_S = 86_400  # the bound of startup.warm_s (pipeline/config/params.py)
START_TIMEOUT_S = 120  # a server imports for 6-11 s on a 2-core VM; past this the command runs cold
HEADER = struct.Struct("!Q")
STATUS = struct.Struct("!i")


def idle_seconds(argv: list[str]) -> float:
    """startup.warm_s from the params file the command names, read as warily as the command reads
    it (pipeline/config/params_file.py: a FIFO, /dev/zero or an alias bomb is refused unread); 0 when it
    cannot be read, so that the command runs cold and reports the problem itself."""
    from pipeline.config.params_file import read

    path = "params.yaml"
    for i, arg in enumerate(argv):
        if arg == "--params" and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--params="):
            path = arg.split("=", 1)[1]
    try:
        value = read(Path(path))["startup"]["warm_s"]
    except Exception:  # any problem is the cold command's to report
        return 0.0
    return float(value) if isinstance(value, (int, float)) and 0 < value <= MAX_IDLE_S else 0.0


def eligible(argv: list[str]) -> bool:
    """Commands that load torch (stages, `defend`, `scan`), on Linux, and never inside torchrun
    (its workers start on their own)."""
    return (sys.platform.startswith("linux") and argv[:1] in (["stage"], ["defend"], ["scan"]) and len(argv) > 1
            and "RANK" not in os.environ and "LOCAL_RANK" not in os.environ)


def folder() -> Path:
    """This user's socket folder; refused (OSError) unless only this user can use it."""
    import tempfile

    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    path = Path(base) / f"rvpt-warm-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise OSError(f"{path} is not a private folder of this user")
    return path


def fingerprint(roots: list[Path] | None = None) -> str:
    """What a server's imported state depends on (see the module's docstring)."""
    import importlib.util
    import sysconfig

    digest = hashlib.sha256()
    for part in (sys.executable, sys.version, *sys.path):
        digest.update(part.encode() + b"\0")
    for key in sorted(k for k in os.environ if k not in VOLATILE and not k.startswith(VOLATILE_PREFIXES)):
        digest.update(f"{key}={os.environ[key]}\0".encode())
    if roots is None:
        roots = [Path(p) for name in PACKAGES for p in importlib.util.find_spec(name).submodule_search_locations]
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            info = path.stat()
            digest.update(f"{path}\0{info.st_size}\0{info.st_mtime_ns}\0".encode())
    digest.update(str(os.stat(sysconfig.get_paths()["purelib"]).st_mtime_ns).encode())
    return digest.hexdigest()[:32]


@contextlib.contextmanager
def inside(base: Path):
    """In `base` for a while: an AF_UNIX path may have 107 bytes at most, so sockets are named relative to it."""
    back = os.open(".", os.O_RDONLY)
    try:
        os.chdir(base)
        yield
    finally:
        os.fchdir(back)
        os.close(back)


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket, as the kernel vouches for it."""
    return struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]


def connect(path: Path) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with inside(path.parent):
            conn.connect(path.name)
        if peer_uid(conn) == os.getuid():
            return conn
    except OSError:
        pass
    conn.close()
    return None


def server(base: Path, name: str, idle: float) -> socket.socket | None:
    """A connection to the server for this fingerprint, started (and waited for) if none runs."""
    path = base / f"{name}.sock"
    conn = connect(path)
    if conn is not None:
        return conn
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one caller starts it; the others wait here, then connect
        conn = connect(path)
        if conn is not None:
            return conn
        path.unlink(missing_ok=True)  # a dead server's
        code = ("import json, os, sys; sys.path[:] = json.loads(os.environ.pop('RVPT_WARM_PATH')); "
                "from pipeline.commands.warm_server import main; main(sys.argv[1:])")
        with open(base / f"{name}.log", "ab") as log:
            started = subprocess.Popen([sys.executable, "-c", code, str(path), str(idle)], cwd="/",
                                       env={**os.environ, "RVPT_WARM_PATH": json.dumps(sys.path)},
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and started.poll() is None:
            conn = connect(path)
            if conn is not None:
                started.returncode = 0  # it outlives this command on purpose: no "still running" warning
                return conn
            time.sleep(0.05)
    return None


def streams() -> list[int]:
    """This process's stdin, stdout and stderr, with /dev/null standing in for a closed one."""
    fds = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            fds.append(os.open(os.devnull, os.O_RDWR))
    return fds


def send(conn: socket.socket, argv: list[str]) -> None:
    """The command, with what it runs in: folder, environment, umask, import path and streams."""
    mask = os.umask(0)
    os.umask(mask)
    request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "umask": mask,
                          "path": sys.path}).encode()
    socket.send_fds(conn, [HEADER.pack(len(request))], streams())
    conn.sendall(request)


def wait(conn: socket.socket) -> int:
    """The command's exit code; signals this process gets are passed on to it meanwhile."""
    for number in RELAYED:
        signal.signal(number, lambda signum, frame: conn.send(bytes([signum])))
    status = b""
    while len(status) < STATUS.size:
        try:
            chunk = conn.recv(STATUS.size - len(status))
        except OSError:
            chunk = b""
        if not chunk:
            print("rvpt: error: the command's process ended without an exit status", file=sys.stderr)
            return 1
        status += chunk
    code = STATUS.unpack(status)[0]
    if code < 0:  # killed by a signal: end the same way, as the shell and DVC expect
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


def run(argv: list[str]) -> int | None:
    """The command's exit code when a warm server ran it; None when it is to run in this process."""
    if not eligible(argv):
        return None
    idle = idle_seconds(argv)
    if not idle:
        return None
    try:
        conn = server(folder(), fingerprint(), idle)
        if conn is None:
            return None
        send(conn, argv)  # a server forks only once it holds the whole request: a failure here ran nothing
    except OSError:
        return None
    with conn:
        return wait(conn)
