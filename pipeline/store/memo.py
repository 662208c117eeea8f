"""What `tune` trained and what `evaluate` and `scan` computed for each model, remembered between
runs and keyed by everything the result is computed from: the model's files, the data files
read, the params that reach it, and the source files the stage runs (pipeline/store/closure.py),
so an edit to code the stage never runs (the UI, a profile) misses nothing. After an edit to one attack or one
defense only its cells miss, so only they are trained, scored and scanned again; every other
result is read back, and the stage's outputs are byte for byte what a full run writes.

The memo lives at the repository root (`.rvpt/memo/`, ignored by git), where the runs of
`dvc exp run --queue`, which work in temporary copies, find it too. It is a cache, not an
output: deleting it costs time only. A memo entry that cannot be read is a miss.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from pipeline.store import closure
from pipeline.tracking.location import repo_root

FOLDER = Path(".rvpt/memo")                     # beside the training checkpoints, under the repository root
# Params that reach no stage's results: which cells run, where runs are logged, `rvpt defend` and
# start-up.
UNUSED = ("run", "tracking", "defend", "startup")
# Nor do these reach evaluate's or scan's: `tune` (the defense's seed and checkpointing) reaches a
# result only through the defended cell's files, already in its key; so a study over defense
# seeds reads every backdoored model's results back.
UNUSED_AFTER_TUNE = UNUSED + ("tune",)
KEY_FILE = ".memo-key"  # beside a stored folder's files: the key it was stored under


def digest_files(paths: list[Path], root: Path | None = None) -> str:
    """One sha256 over the names (relative to `root`, if given) and bytes of `paths` (folders:
    every file under them), so that a copy of the project elsewhere has the same digest."""
    total = hashlib.sha256()
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            total.update(str(file.relative_to(root) if root else file).encode() + b"\0")
            with open(file, "rb") as handle:
                total.update(hashlib.file_digest(handle, "sha256").digest())
    return total.hexdigest()


def source_digest(stage: str) -> str:
    """The digest of the source files the stage runs, by their path relative to the project."""
    return digest_files(sorted(closure.stage_files(stage)), closure.ROOT)


class Memo:
    """Results of one stage, one JSON entry (and optional PNG) per model."""

    def __init__(self, stage: str, params, data: list[Path], unused: tuple[str, ...] = UNUSED_AFTER_TUNE):
        self.folder = repo_root() / FOLDER / stage
        self.params = params.model_dump(mode="json", exclude=set(unused))
        self.base = hashlib.sha256(f"{source_digest(stage)}{digest_files(data)}".encode()).hexdigest()
        self.hits = 0

    def key(self, attack: str | None, defense: str | None, files: list[Path]) -> str:
        """The key of a result computed from `files`, under the given attack's and defense's blocks
        only, so that editing another cell's block leaves this key as it is."""
        chosen = {**self.params, "attacks": self.params["attacks"].get(attack),
                  "defenses": self.params["defenses"].get(defense)}
        text = json.dumps(chosen, sort_keys=True) + self.base + digest_files(files)
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, name: str, key: str) -> tuple[dict, bytes | None] | None:
        try:
            entry = json.loads((self.folder / f"{name}.json").read_text())
            if entry.get("key") != key:
                return None
            picture = self.folder / f"{name}.png"
            found = entry["value"], (picture.read_bytes() if entry.get("picture") else None)
        except (OSError, ValueError, KeyError, AttributeError):
            return None
        self.hits += 1
        return found

    def put(self, name: str, key: str, value: dict, picture: bytes | None = None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if picture is not None:
            self._write(self.folder / f"{name}.png", picture)
        self._write(self.folder / f"{name}.json",
                    json.dumps({"key": key, "value": value, "picture": picture is not None}).encode())

    def put_tensors(self, name: str, key: str, tensors: dict) -> None:
        """Tensors beside an entry (e.g. an inverted trigger), under the same key."""
        from safetensors.torch import save

        self.folder.mkdir(parents=True, exist_ok=True)
        self._write(self.folder / f"{name}.safetensors", save(tensors, metadata={"key": key}))

    def get_tensors(self, name: str, key: str) -> dict | None:
        from safetensors import SafetensorError
        from safetensors.torch import safe_open

        try:
            with safe_open(self.folder / f"{name}.safetensors", "pt") as stored:
                if (stored.metadata() or {}).get("key") != key:
                    return None
                return {k: stored.get_tensor(k) for k in stored.keys()}
        except (OSError, SafetensorError):
            return None

    def put_folder(self, name: str, key: str, folder: Path) -> None:
        """A copy of `folder` (a tune cell's outputs) under the key, in place of the name's last entry."""
        self.folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.folder, prefix=f".{name}."))
        try:
            shutil.copytree(folder, staging / "new")
            (staging / "new" / KEY_FILE).write_text(key)
            entry = self.folder / name
            if entry.exists():  # moved aside first: a reader sees the old entry, the new one or a miss
                os.replace(entry, staging / "old")
            os.replace(staging / "new", entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def get_folder(self, name: str, key: str, into: Path) -> bool:
        """Copies the name's entry into `into` if it was stored under `key`. On False `into` may
        hold part of an entry (one replaced while it was copied), so it should be a staging
        folder the caller discards on a miss."""
        entry = self.folder / name
        try:
            if (entry / KEY_FILE).read_text() != key:
                return False
            shutil.copytree(entry, into, dirs_exist_ok=True, ignore=shutil.ignore_patterns(KEY_FILE))
        except OSError:
            return False
        self.hits += 1
        return True

    @staticmethod
    def _write(path: Path, payload: bytes) -> None:
        """Whole or not at all: a parallel run or a kill never leaves half an entry."""
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(payload)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
