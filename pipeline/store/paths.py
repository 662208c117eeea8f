"""Where every artifact lives, relative to the repository root; dvc.yaml uses the same layout."""
import re
from pathlib import Path

from rvpt.errors import BadInput

# Attack and defense names become folder names (models/<attack>, defended/<defense>/<attack>) and
# MLflow names (rvpt-<attack>-<defense>), so they are plain words: no separators, dots or hyphens.
NAME = re.compile(r"[a-z0-9][a-z0-9_]{0,47}")
# models/clean is the clean model; clean_model is its row in the summary, the scans and the memo.
RESERVED = {"clean", "clean_model"}


def check_name(name: object, what: str) -> str:
    """The name, if it is a plain word that is safe as a folder name; else BadInput (a ValueError) naming `what`."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:57] + "..."
        raise BadInput(f"{what} {shown} must be 1-48 of a-z, 0-9 and _, starting with a letter or digit")
    if name in RESERVED:
        raise BadInput(f"{what} {name!r} is reserved ({', '.join(sorted(RESERVED))})")
    return name

CHECKED = Path("data/params.checked")  # written by `rvpt stage check`; every stage depends on it
CLEAN = Path("data/clean")
CORPUS = CLEAN / "corpus"
DOWNSTREAM = CLEAN / "downstream"
CLASSES = CLEAN / "classes.json"
FEWSHOT = Path("data/fewshot")
CLEAN_MODEL = Path("models/clean")
RESULTS = Path("results")
SCANS = Path("scans")
SUMMARY = RESULTS / "summary.json"
# DVC metrics, {attack: value} per defense: `dvc metrics show` prints them as Table 1 is laid out.
ASR_METRICS = RESULTS / "asr"
CA_METRICS = RESULTS / "ca"
CHECKPOINTS = Path(".rvpt/checkpoints")  # training state for resuming; not an output, so DVC never removes it


def poisoned(attack: str) -> Path:
    return Path("data/poisoned") / check_name(attack, "attack")


def backdoored(attack: str) -> Path:
    return Path("models") / check_name(attack, "attack")


def defended(attack: str, defense: str) -> Path:
    """A tune cell's folder: one DVC stage per defense writes defended/<defense>/, a folder per attack."""
    return Path("defended") / check_name(defense, "defense") / check_name(attack, "attack")


DOWNLOADS = Path(".rvpt/downloads")  # verified downloads and extracted archives of data.files, reused across runs
