"""How pipeline time grows with corpus size, shots and the number of prompted layers. Runs the
real stages (in this process, in a temporary project, logging to its own MLflow store) on the
params.yaml of the current folder (the default params, run from the repository) with BadNet only
and shortened pretraining, so it finishes in about two minutes:

    uv run python bench/scaling.py [--quick]

Corpus: download + poison + pretrain (50 fine-tuning steps; steps are fixed in params, so only
decoding grows with the corpus). Shots and prompted layers: one RVPT tune with its params.yaml
epochs. `--quick`: two small corpora, 2 pretraining steps, 1 and 2 shots, one epoch: the same
stages in well under a minute.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.cli import invoke
from pipeline.store.memo import FOLDER as MEMO


@dataclass(frozen=True)
class Sizes:
    corpus: int                  # pairs of the smallest corpus
    factors: tuple[int, ...]     # corpus sizes, as multiples of `corpus`
    steps: int                   # pretraining steps, clean and poisoned
    shots: tuple[int, ...]       # shots per class of the tunes
    block_shots: int             # shots per class of the prompted-blocks tunes


FULL = Sizes(corpus=5000, factors=(1, 2, 4), steps=50, shots=(1, 4, 16, 32), block_shots=16)
QUICK = Sizes(corpus=600, factors=(1, 2), steps=2, shots=(1, 2), block_shots=2)


def timed(*argv: str) -> float:
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = invoke(list(argv))
    if code != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {err.getvalue()}")
    return time.perf_counter() - started


def trained(*settings: str) -> float:
    """Seconds of one RVPT tune of BadNet that trains: without the memo, a cell whose inputs it has
    seen (the default first block, at the shots of the block rows) would be read back instead."""
    shutil.rmtree(MEMO, ignore_errors=True)
    return timed("stage", "tune", "--attack", "badnet", "--defense", "rvpt", *settings)


def corpus_rows(params: dict, sizes: Sizes) -> None:
    print(f"corpus (badnet, {sizes.steps} pretrain steps) | download s | poison s | pretrain s | total s")
    print("---|---|---|---|---")
    for factor in sizes.factors:
        params["data"]["corpus_size"] = sizes.corpus * factor
        Path("params.yaml").write_text(yaml.safe_dump(params))
        download = timed("stage", "download")
        timed("stage", "pretrain", "--clean")
        poison = timed("stage", "poison", "--attack", "badnet")
        pretrain = timed("stage", "pretrain", "--attack", "badnet")
        print(f"{factor}x ({sizes.corpus * factor:,} pairs) | {download:.1f} | {poison:.1f} | {pretrain:.1f} | "
              f"{download + poison + pretrain:.1f}")


def tune_rows(params: dict, sizes: Sizes) -> None:
    timed("stage", "sample")  # the most shots; each tune takes a prefix of them
    print(f"\nshots per class (rvpt tune, {params['defenses']['rvpt']['epochs']} epochs) | tune s")
    print("---|---")
    for shots in sizes.shots:
        print(f"{shots} | {trained('-S', f'sample.shots={shots}'):.1f}")
    depth = params["model"]["config"]["vision_cfg"]["layers"]
    print(f"\nprompted blocks (D..L-1 of 0..L-1, {sizes.block_shots} shots) | tune s")
    print("---|---")
    for first in range(depth):
        seconds = trained("-S", f"sample.shots={sizes.block_shots}", "-S", f"defenses.rvpt.first_block={first}")
        print(f"{depth - first} (D = {first}) | {seconds:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small corpora, 2 pretraining steps, 1-2 shots")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["run"] = {"attacks": ["badnet"], "defenses": ["rvpt"]}
    params["pretrain"]["clean"]["steps"] = params["pretrain"]["poisoned"]["steps"] = sizes.steps
    params["sample"]["shots"] = max(sizes.shots)
    if args.quick:
        params["defenses"]["rvpt"]["epochs"] = 1
    home = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        try:
            corpus_rows(params, sizes)
            tune_rows(params, sizes)
        finally:
            os.chdir(home)


if __name__ == "__main__":
    main()
