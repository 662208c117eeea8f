"""Calibration against the paper: does this world reproduce the regime RVPT defends in?

The paper's cells (pipeline/report/paper_cells.csv) are classed by ASR as removed, survives or partial,
and each is set beside the same cell of our matrix. Baseline cells (no defense, CleanCLIP, the
linear probe, plain VPT, CE fine-tuning) are the calibration targets: a world is fixed on them
before RVPT's cells are read. Cells that use the repelling loss are shown, never calibrated on.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from pipeline.store import artifacts
from rvpt.errors import BadInput

PAPER_CELLS = Path(__file__).with_name("paper_cells.csv")
REMOVED_BELOW = 0.15   # ASR under this: the defense removed the backdoor
SURVIVES_ABOVE = 0.75  # ASR over this: the backdoor survived
BASELINE, REPELLING = "baseline", "repelling"


def category(asr: float | None) -> str | None:
    """removed (ASR < 15%), survives (ASR > 75%), partial in between; None for a cell without ASR."""
    if asr is None:
        return None
    return "removed" if asr < REMOVED_BELOW else "survives" if asr > SURVIVES_ABOVE else "partial"


@dataclass(frozen=True)
class PaperCell:
    table: str
    defense: str
    attack: str
    asr: float              # fractions, like summary.json
    ca: float | None
    role: str


@dataclass(frozen=True)
class Comparison:
    cell: PaperCell
    asr: float | None       # ours; None where the cell was not run
    ca: float | None
    implanted: bool | None = None  # ours: whether the attack implanted at all (None: no undefended cell)

    @property
    def paper(self) -> str:
        return category(self.cell.asr)

    @property
    def ours(self) -> str | None:
        """Our cell's category; None where it was not run or its attack did not implant, since a
        backdoor that is not there is neither removed nor kept."""
        return None if self.implanted is False else category(self.asr)

    @property
    def matches(self) -> bool | None:
        return None if self.ours is None else self.ours == self.paper


def read_rows(summary: Path) -> list[dict]:
    """The rows of a summary.json (`rvpt stage evaluate` writes it), refused in one line if it is none."""
    document = artifacts.read_json(summary, "rvpt stage evaluate")
    rows = document.get("rows") if isinstance(document, dict) else None
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise BadInput(f"{summary}: not a summary.json (it needs a list of rows)")
    return rows


def paper_cells(path: Path = PAPER_CELLS) -> list[PaperCell]:
    with open(path, newline="") as handle:
        lines = [line for line in handle if not line.startswith("#")]
    return [PaperCell(row["table"], row["defense"], row["attack"], float(row["asr"]) / 100,
                      float(row["ca"]) / 100 if row["ca"] else None, row["role"])
            for row in csv.DictReader(lines)]


def compare(rows: list[dict], cells: list[PaperCell]) -> list[Comparison]:
    """Each paper cell beside our row for the same (defense, attack), from summary.json's rows."""
    ours = {(row["defense"], row["attack"]): row for row in rows}
    found = [(cell, ours.get((cell.defense, cell.attack), {})) for cell in cells]
    return [Comparison(cell, row.get("attack_success_rate"), row.get("clean_accuracy"), row.get("implanted"))
            for cell, row in found]


def agreement(comparisons: list[Comparison], role: str) -> tuple[int, int, int]:
    """(matched, compared, paper cells) among the cells of one role."""
    cells = [c for c in comparisons if c.cell.role == role]
    compared = [c for c in cells if c.matches is not None]
    return sum(c.matches for c in compared), len(compared), len(cells)


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def markdown(comparisons: list[Comparison]) -> str:
    """The calibration table and the share of cells that match, for summary.md, the report and the CLI."""
    out = ["## Calibration against the paper (ASR category: removed < 15% <= partial <= 75% < survives)", "",
           "| table | defense | attack | role | paper ASR % (CA %) | paper | ours ASR % (CA %) | ours | match |",
           "|---|---|---|---|---|---|---|---|---|"]
    for c in comparisons:
        mark = "-" if c.matches is None else "yes" if c.matches else "**no**"
        out.append(f"| {c.cell.table} | {c.cell.defense} | {c.cell.attack} | {c.cell.role} | "
                   f"{percent(c.cell.asr)} ({percent(c.cell.ca)}) | {c.paper} | {percent(c.asr)} ({percent(c.ca)}) | "
                   f"{c.ours or ('not implanted' if c.implanted is False else 'not run')} | {mark} |")
    out.append("")
    for role, what in ((BASELINE, "Baseline cells (the calibration targets)"),
                       (REPELLING, "Cells with the repelling loss (the result, never a target)")):
        matched, compared, total = agreement(comparisons, role)
        share = f"{100 * matched / compared:.0f}%" if compared else "-"
        out.append(f"{what}: {matched} of {compared} run cells match ({share}); {total - compared} of "
                   f"{total} not run or not implanted.")
        out.append("")
    return "\n".join(out)
