"""Stage `scan`: trigger inversion (rvpt/scan.py) on the matrix's models, as a defender who never
has the trigger would run it: the clean model, each backdoored model and, with `scan.defended:
full`, each defended cell too.

The triggers are optimised on the defender's shots; the suspect trigger's ASR is measured on
held-out validation images. The test split and the attacks' triggers are never read. For a
defended cell, `residual_success` is the ASR that the trigger inverted on its backdoored model
still reaches through the defense: the scanner's answer to "did the defense work?".

Writes scans/scans.json and, per model, its inverted triggers as one PNG (a row per trigger kind,
a column per class).
"""
from __future__ import annotations

from pipeline.store import artifacts, paths
from pipeline.methods.defenses import load_defended, tune_record
from pipeline.scoring.scorer import backdoored_run_id, load_backdoored, zero_shot
from pipeline.store.memo import Memo
from pipeline.config.params import Params
from pipeline.config.scanner import scanner as scanner_settings
from pipeline.scoring.scanner import Scanner, Suspect
from pipeline.tracking.runs import stage
from rvpt import models
from rvpt.progress import progress

CLEAN_ROW = "clean_model"


class Backdoored:
    """An attack's backdoored model, loaded and scanned only when a result the memo lacks needs it:
    a defended cell's residual ASR is measured with the trigger inverted on this model, which the
    memo keeps beside the model's scan."""

    def __init__(self, params: Params, scanner: Scanner, memo: Memo, attack: str):
        self.params, self.scanner, self.memo, self.attack = params, scanner, memo, attack
        self.folder = paths.backdoored(attack)
        self.run_id = backdoored_run_id(attack)
        self.key = memo.key(attack, None, [self.folder])
        self._model, self._suspect = None, None

    @property
    def model(self):
        if self._model is None:
            self._model = load_backdoored(self.attack)[0]
        return self._model

    def scanned(self) -> tuple[dict, bytes]:
        result, picture = self.scanner(zero_shot(self.params, self.model), self.attack)
        self._suspect = Suspect.of(result)
        self.memo.put_tensors(f"{self.attack}.suspect", self.key, self._suspect.tensors())
        return result.report(), picture

    def suspect(self, report: dict) -> Suspect:
        """The suspect trigger of this model's scan (`report`): remembered, or scanned again."""
        if self._suspect is None:
            kept = self.memo.get_tensors(f"{self.attack}.suspect", self.key)
            if kept is not None:
                self._suspect = Suspect.from_tensors(report["suspect_kind"], kept, len(self.scanner.classes))
            else:
                self.scanned()
        return self._suspect

    def cell(self, defense: str, tokenize, full: bool, report: dict) -> tuple[dict, bytes | None]:
        """The residual ASR through the defense; with `full`, also the defended model's own scan and picture."""
        suspect = self.suspect(report)
        defended, _ = load_defended(self.params, self.attack, defense, self.model, tokenize)
        residual = {"residual_success": self.scanner.residual(defended, suspect)}
        if not full:
            return residual, None
        result, picture = self.scanner(defended, f"{self.attack}-{defense}")
        return {**result.report(), **residual}, picture


def needs(params: Params):
    """Every model the stage reads (with the command that makes it), and its output, for artifacts.preflight."""
    inputs = [(paths.CLEAN_MODEL / "pretrain.json", "rvpt stage pretrain --clean"),
              (paths.FEWSHOT / "train.parquet", "rvpt stage sample"),
              (paths.DOWNSTREAM / "val.parquet", "rvpt stage download")]
    for attack in params.run.attacks:
        inputs.append((paths.backdoored(attack) / "pretrain.json", f"rvpt stage pretrain --attack {attack}"))
        inputs += [(paths.defended(attack, defense) / "tune.json",
                    f"rvpt stage tune --attack {attack} --defense {defense}") for defense in params.run.defenses]
    return inputs, paths.SCANS


def jobs(params: Params) -> str:
    artifacts.preflight([needs(params)])
    return run(params)


def run(params: Params) -> str:
    artifacts.check_writable(paths.SCANS)
    scanner = Scanner(params)
    tokenize = models.tokenizer(params.model.config)
    memo = Memo("scan", params, [paths.FEWSHOT, paths.DOWNSTREAM / "val.parquet"])
    pictures: dict[str, bytes] = {}
    reports, upstream = {}, {}

    def remembered(name: str, key: str, scanned) -> None:
        """The model's report and picture, from the memo or from `scanned()` (which returns both)."""
        found = memo.get(name, key)
        if found is None:
            found = scanned()
            memo.put(name, key, *found)
        reports[name], pictures[name] = found

    def scan_clean():
        result, picture = scanner(zero_shot(params, models.load(paths.CLEAN_MODEL)[0]), CLEAN_ROW)
        return result.report(), picture

    artifacts.require(paths.CLEAN_MODEL, "rvpt stage pretrain --clean")
    remembered(CLEAN_ROW, memo.key(None, None, [paths.CLEAN_MODEL]), scan_clean)
    for attack in progress(params.run.attacks, "scan attacks"):
        backdoored = Backdoored(params, scanner, memo, attack)
        upstream[f"upstream.pretrain.{attack}"] = backdoored.run_id
        remembered(attack, backdoored.key, backdoored.scanned)
        for defense in params.run.defenses:
            cell = f"{attack}-{defense}"
            folder = paths.defended(attack, defense)
            tuned = tune_record(attack, defense)
            upstream[f"upstream.tune.{cell}"] = tuned["mlflow_run_id"]
            if tuned["kind"] == "none":  # the backdoored model itself: its scan and held-out ASR are the ones above
                reports[cell] = {**reports[attack], "residual_success": reports[attack]["held_out_success"]}
                continue
            remembered(cell, memo.key(attack, defense, [backdoored.folder, folder]),
                       lambda: backdoored.cell(defense, tokenize, scanner_settings(params).defended == "full",
                                               reports[attack]))

    logged = {"scan": scanner_settings(params).model_dump(), "shots": params.sample.shots,
              "held_out": len(scanner.held[1])}
    with stage("scan", params, logged, upstream) as log:
        with log.output(paths.SCANS, logged=("scans.json",)) as out:
            artifacts.write_json(out / "scans.json", {"classes": scanner.classes, "models": reports})
            for name, png in pictures.items():
                if png is not None:
                    (out / f"{name}.png").write_bytes(png)
        for name, report in reports.items():
            if "anomaly_index" in report:  # a model scanned itself, not only through its backdoored model
                log.metric(f"{name}.scan_anomaly_index", report["anomaly_index"])
                log.metric(f"{name}.scan_flagged", float(report["flagged"]))
            if "residual_success" in report:
                log.metric(f"{name}.scan_residual_success", report["residual_success"])
    flagged = [f"{name} -> {reports[name]['target']}" for name in [CLEAN_ROW, *params.run.attacks]
               if reports[name]["flagged"]]
    return (f"wrote {paths.SCANS}: {len(reports)} models ({memo.hits} read back); "
            f"flagged: {', '.join(flagged) or 'none'}")
