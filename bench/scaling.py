"""How pipeline time grows with corpus size, shots and the number of prompted layers. Runs the
real stages (in this process, in a temporary project, logging to its own MLflow store) on the
default params with BadNet only and shortened pretraining, so it finishes in about two minutes:

    uv run python bench/scaling.py

Corpus: download + poison + pretrain (50 fine-tuning steps; steps are fixed in params, so only
decoding grows with the corpus). Shots and prompted layers: one RVPT tune with the default 50 epochs.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from pathlib import Path

import yaml

from pipeline.cli import invoke

BASE_CORPUS = 5000
STEPS = 50


def timed(*argv: str) -> float:
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = invoke(list(argv))
    if code != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {err.getvalue()}")
    return time.perf_counter() - started


def main() -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["run"] = {"attacks": ["badnet"], "defenses": ["rvpt"]}
    params["pretrain"]["clean"]["steps"] = params["pretrain"]["poisoned"]["steps"] = STEPS
    params["sample"]["shots"] = 32
    depth = params["model"]["config"]["vision_cfg"]["layers"]
    home = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        try:
            print(f"corpus (badnet, {STEPS} pretrain steps) | download s | poison s | pretrain s | total s")
            print("---|---|---|---|---")
            for factor in (1, 2, 4):
                params["data"]["corpus_size"] = BASE_CORPUS * factor
                Path("params.yaml").write_text(yaml.safe_dump(params))
                download = timed("stage", "download")
                timed("stage", "pretrain", "--clean")
                poison = timed("stage", "poison", "--attack", "badnet")
                pretrain = timed("stage", "pretrain", "--attack", "badnet")
                print(f"{factor}x ({BASE_CORPUS * factor:,} pairs) | {download:.1f} | {poison:.1f} | {pretrain:.1f} | "
                      f"{download + poison + pretrain:.1f}")
            timed("stage", "sample")
            print("\nshots per class (rvpt tune, 50 epochs) | tune s")
            print("---|---")
            for shots in (1, 4, 16, 32):
                print(f"{shots} | {timed('stage', 'tune', '--attack', 'badnet', '--defense', 'rvpt', '--shots', str(shots)):.1f}")
            print("\nprompted blocks (D..L-1 of 0..L-1, 16 shots) | tune s")
            print("---|---")
            for first in range(depth):
                seconds = timed("stage", "tune", "--attack", "badnet", "--defense", "rvpt", "--shots", "16",
                                "--first-block", str(first))
                print(f"{depth - first} (D = {first}) | {seconds:.1f}")
        finally:
            os.chdir(home)


if __name__ == "__main__":
    main()
