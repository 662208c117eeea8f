"""Training state on disk, so a killed run continues where it stopped instead of starting over.

The state is ours (written by `save`), but it is still read with weights_only=True. It carries
a fingerprint of everything that determines the run; a state from other settings or other data
is ignored, never resumed.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Checkpointing:
    """Where the state lives, how often it is written (in steps), and what it must match."""

    path: Path
    every: int
    fingerprint: str
    resumed: int = 0  # the step the last successful load resumes from

    def load(self) -> dict | None:
        if self.every <= 0 or not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # a torn or foreign file: start over rather than trust it
            return None
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            return None
        self.resumed = int(state.get("step", 0))
        return state

    def due(self, step: int, total: int) -> bool:
        return self.every > 0 and step % self.every == 0 and step < total

    def save(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        torch.save({**state, "fingerprint": self.fingerprint}, temporary)
        os.replace(temporary, self.path)  # a kill mid-write leaves the previous state intact

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def fingerprint(settings, inputs: list[Path]) -> str:
    """A digest of everything that determines a run bit for bit: its settings (JSON-able) and
    the bytes of its input files and folders."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for path in sorted(p for item in inputs for p in ([item] if item.is_file() else item.rglob("*"))
                       if p.is_file()):
        digest.update(path.read_bytes())
    return digest.hexdigest()
