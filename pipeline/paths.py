"""Where every artifact lives, relative to the repository root; dvc.yaml uses the same layout."""
from pathlib import Path

CLEAN = Path("data/clean")
CORPUS = CLEAN / "corpus"
DOWNSTREAM = CLEAN / "downstream"
CLASSES = CLEAN / "classes.json"
FEWSHOT = Path("data/fewshot")
CLEAN_MODEL = Path("models/clean")
RESULTS = Path("results")
SUMMARY = RESULTS / "summary.json"
METRICS = RESULTS / "metrics.json"
CHECKPOINTS = Path(".rvpt/checkpoints")  # training state for resuming; not an output, so DVC never removes it


def poisoned(attack: str) -> Path:
    return Path("data/poisoned") / attack


def backdoored(attack: str) -> Path:
    return Path("models") / attack


def defended(attack: str, defense: str) -> Path:
    return Path("defended") / f"{attack}-{defense}"
DOWNLOADS = Path(".rvpt/downloads")  # verified downloads and extracted archives of data.files, reused across runs
