import contextlib
import copy
import fcntl
import functools
import hashlib
import http.server
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY_MODEL = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 16, "layers": 3, "width": 32, "patch_size": 4, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}

# The glyph world's own data keys, emptied for data.source files (which refuses them).
NO_GLYPH_WORLD = {"transfer_classes": [], "concepts": [], "distractors": 0, "noise": 0.0}

# Small enough to run the whole chain in well under a minute of compute: a 2 x 2 matrix.
SMOKE = {
    "data": {"classes": ["zero", "one", "two", "three"], "transfer_classes": ["ay", "bee"], "corpus_size": 1200,
             "train_per_class": 10, "val_per_class": 10, "test_per_class": 20, "defender_pairs": 64,
             "shard_rows": 500},
    "model": {"config": TINY_MODEL},
    "pretrain": {"clean": {"steps": 20, "batch_size": 32, "warmup": 2},
                 "poisoned": {"steps": 10, "batch_size": 32, "warmup": 2}},
    "target": "three",
    "attacks": {name: {"optimise": {"steps": 3, "batch_size": 16, "lr": 0.01, "images": 64}}
                for name in ("badclip", "issba", "handcrafted")},
    "defenses": {"rvpt": {"epochs": 2, "batch_size": 8, "tokens": 4},
                 "vpt": {"epochs": 2, "batch_size": 8, "tokens": 4},
                 "linear_probe": {"epochs": 2},
                 "finetune": {"epochs": 1}, "finetune_fr": {"epochs": 1},
                 "cleanclip": {"budget": 64, "epochs": 1, "batch_size": 32},
                 "coop": {"epochs": 2}},
    "sample": {"shots": 4},
    "evaluate": {"probe_steps": 20},
    "scan": {"steps": 30, "check_images": 32, "held_out": 40},
    "run": {"attacks": ["badnet", "badclip"], "defenses": ["rvpt", "cleanclip"]},
    "tracking": {"experiment": "smoke"},
    # The suite runs on two pytest workers (README); a stage on one thread each keeps two stages
    # on 2 cores from slowing each other down.
    "threads": 1,
}


def defense_settings(kind: str, **overrides):
    """A defense kind's Config from params.yaml's first block of that kind (the one source of its
    settings), with `overrides`."""
    from rvpt.defenses.registry import KINDS

    blocks = yaml.safe_load((REPO / "params.yaml").read_text())["defenses"]
    values = {k: v for k, v in next(b for b in blocks.values() if b["kind"] == kind).items() if k != "kind"}
    return KINDS[kind].Config(**{**values, **overrides})


def scan_settings(**overrides):
    """The scanner's Config from params.yaml's `scan` block, with `overrides`."""
    from rvpt import scan

    block = yaml.safe_load((REPO / "params.yaml").read_text())["scan"]
    values = {k: v for k, v in block.items() if k not in ("held_out", "defended")}
    return scan.Config(**{**values, "kinds": tuple(values["kinds"]), **overrides})


def merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def smoke_params(**update) -> dict:
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    return merge(merge(base, SMOKE), update)


def environment(env: dict | None = None) -> dict:
    """This environment with the venv's commands first on PATH (stages run `rvpt`), plus `env`;
    MLflow logs to the project's own store unless `env` names a tracking URI."""
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None) if env is None or "MLFLOW_TRACKING_URI" not in env else None
    return full_env


def run(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=environment(env), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def brought_files(root: Path, classes: list[str], folder_of=lambda name: name, suffix_of=lambda i: "png") -> None:
    """What a user brings to `rvpt defend`: an open_clip local-dir model (root/model) and an image
    folder of 6 glyphs a class (root/images/<folder>/<i>.<suffix>)."""
    import numpy as np

    from rvpt import models
    from rvpt.world import GlyphWorld

    models.save(models.build(TINY_MODEL, seed=3), TINY_MODEL, root / "model")
    world, rng = GlyphWorld(classes, 16), np.random.default_rng(0)
    for label, name in enumerate(classes):
        folder = root / "images" / folder_of(name)
        folder.mkdir(parents=True)
        for i in range(6):
            world.sample(rng, label).image.save(folder / f"{i}.{suffix_of(i)}")


def call(root: Path, *argv: str) -> tuple[int, str, str]:
    """`rvpt ARGV` run in this process (what the console script runs), in `root`: (exit code, stdout, stderr)."""
    from pipeline.cli import invoke

    saved_cwd, saved_env = os.getcwd(), dict(os.environ)  # MLflow sets MLFLOW_TRACKING_URI as it logs
    out, err = io.StringIO(), io.StringIO()
    os.chdir(root)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = invoke(list(argv))
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return code, out.getvalue(), err.getvalue()


def tree(root: Path) -> dict[str, str]:
    """Every path below `root` (the .git folder too) with its content hash, link target or 'folder'."""
    def describe(path: Path) -> str:
        if path.is_symlink():
            return f"link {os.readlink(path)}"
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"

    return {str(path.relative_to(root)): describe(path) for path in sorted(root.rglob("*"))}


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rvpt: error: "), stderr
    assert len(lines[0]) < 500, len(lines[0])
    return lines[0]


def make_project(root: Path, params: dict) -> Path:
    """A fresh git + DVC project holding this repository's pipeline and the given params."""
    for name in ("rvpt", "pipeline", "profiles"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / ".gitignore").write_text("/mlflow.db\n")
    run(["git", "init", "-q"], root)
    run(["dvc", "init", "-q"], root)
    run(["dvc", "config", "core.analytics", "false"], root)
    shutil.copy(REPO / ".dvcignore", root / ".dvcignore")
    shutil.copy(REPO / ".dvc" / "plots.html", root / ".dvc" / "plots.html")  # vega inlined: plots render offline
    shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")  # dvc.yaml's plot templates
    run(["dvc", "config", "plots.html_template", "plots.html"], root)
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], root)
    return root


@pytest.fixture
def project(tmp_path):
    return make_project(tmp_path / "project", smoke_params())


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory) -> Path:
    """The smoke matrix after one `dvc repro` in a fresh project; copy it (`copy_of`) before changing it.
    Built once per test run: under pytest-xdist the first worker to ask builds it in the folder
    all workers' temporary folders share, and the others wait for it."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root, done = shared / "reproduced" / "project", shared / "reproduced.done"
    with open(shared / "reproduced.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(root.parent, ignore_errors=True)  # what a worker that failed left behind
            root.parent.mkdir(parents=True)
            make_project(root, smoke_params())
            run(["dvc", "repro"], root)
            done.touch()
    return root


def copy_of(project: Path, tmp_path: Path) -> Path:
    destination = tmp_path / "copy"
    shutil.copytree(project, destination, symlinks=True)
    return destination


def pytest_collection_modifyitems(items):
    """The layers: tests/unit (the library), tests/pipeline (the pipeline, in small folders) and
    tests/e2e (real DVC and MLflow in projects of their own: minutes). `pytest -m "not slow"`
    runs the first two."""
    for item in items:
        if "e2e" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.slow)


if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # the in-process tests of two workers share the cores the same way


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture
def served(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/www."""
    (tmp_path / "www").mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield tmp_path / "www", f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(backend_uri: str, cwd: Path, *options: str):
    """A real `mlflow server` on 127.0.0.1; yields its URL once /health answers."""
    port = free_port()
    with serving([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                  "--backend-store-uri", backend_uri, "--workers", "1", *options], cwd, port) as url:
        yield url


@contextlib.contextmanager
def serving(command: list[str], cwd: Path, port: int, env: dict | None = None):
    """Runs an MLflow server command; yields its URL once /health answers on 127.0.0.1:port."""
    server = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError("mlflow server did not come up within 90 s") from None
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def independent_accuracy(model, images: list, labels: list[int], names: list[str], templates: list[str],
                         size: int) -> float:
    """Zero-shot CA computed here with plain open_clip calls, to check the pipeline's to the digit:
    each class is the normalised mean of its normalised template embeddings; images are encoded
    with open_clip's own normalisation constants."""
    import numpy as np
    import open_clip
    import torch.nn.functional as F

    from rvpt.images import decode_image

    tokenize = open_clip.tokenizer.SimpleTokenizer(context_length=model.context_length)
    pixels = np.stack([decode_image(image, size)[0] for image in images])
    batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(open_clip.constants.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.constants.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        text = torch.stack([F.normalize(F.normalize(model.encode_text(tokenize([t.format(n) for t in templates])),
                                                    dim=-1).mean(0), dim=-1) for n in names])
        image = F.normalize(model.encode_image((batch - mean) / std), dim=-1)
    return (image @ text.T).argmax(1).eq(torch.tensor(labels)).float().mean().item()
