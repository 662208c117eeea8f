"""Peak memory of `rvpt ui`: the resident memory of its whole process tree (the server and any
worker it starts), sampled while the UI's own API calls load the experiment and its runs. Run in
a project after `dvc repro`:

    uv run python bench/ui_memory.py [--seconds 20] [--quick]

`--quick`: 5 s of sampling. It compares nothing: the figure is the tree's peak, and the process
count says how many it started.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tree(root: int) -> list[int]:
    """The process and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(children.get(pid, []))
    return found


def resident_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def api(base: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"{base}/ajax-api/2.0/mlflow/{path}", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(request, timeout=30).read() or b"{}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--quick", action="store_true", help="5 s of sampling")
    args = parser.parse_args()
    seconds = 5.0 if args.quick else args.seconds
    port = free_port()
    rvpt = Path(sys.executable).with_name("rvpt")
    server = subprocess.Popen([str(rvpt), "ui", "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)
    base, peak, processes = f"http://127.0.0.1:{port}", 0, 0
    try:
        server.stdout.readline()
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit("rvpt ui did not come up within 120 s")
                time.sleep(0.5)
        urllib.request.urlopen(base, timeout=30).read()  # the page itself
        found = api(base, "experiments/search", {"max_results": 100}).get("experiments", [])
        experiments = [e["experiment_id"] for e in found]
        ends = time.monotonic() + seconds
        while time.monotonic() < ends:
            api(base, "runs/search", {"experiment_ids": experiments, "max_results": 100})
            pids = tree(server.pid)
            processes = max(processes, len(pids))
            peak = max(peak, sum(resident_bytes(pid) for pid in pids))
            time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"rvpt ui: {processes} processes, peak resident memory {peak / 2 ** 30:.2f} GiB "
          f"(sampled {seconds:.0f} s on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
