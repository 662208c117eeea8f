"""Stage `evaluate`: every model of the matrix on the clean test split, its triggered copy, and the
transfer task, with the diagnostics.

Rows: the clean (never poisoned) model once per attack, as the reference, then every
(attack, defense) cell. Writes results/summary.json (every figure of every row),
results/summary.md (the paper's Table 1 layout) and the DVC metrics results/asr/ and results/ca/
(a file per defense, a key per attack).
"""
from __future__ import annotations

from pipeline.report import calibration
from pipeline.store import artifacts, paths
from pipeline.methods.defenses import load_defended, tune_record
from pipeline.scoring.scorer import Scorer, backdoored_run_id, load_backdoored, zero_shot
from pipeline.store.memo import UNUSED_AFTER_TUNE, Memo
from pipeline.config.params import Params
from pipeline.report.summary import IMPLANTED, as_columns, markdown
from pipeline.tracking import provenance
from pipeline.tracking.runs import stage
from rvpt.errors import BadInput
from rvpt import models
from rvpt.progress import progress

CLEAN_ROW = "clean_model"
TEST_KEYS = ("clean_accuracy", "attack_success_rate", "control_attack_success_rate", "target_rate")
HEADLINE = ("clean_accuracy", "attack_success_rate", "resistivity", "nuisance_probe_accuracy")


def headline(params: Params) -> tuple[str, ...]:
    return HEADLINE + tuple(f"{name}_{key}" for name in params.data.transfer_sets()
                            for key in ("clean_accuracy", "attack_success_rate"))


def defended_rows(params: Params, scorer: Scorer, memo: Memo, attack_name: str, upstream: dict) -> list[dict]:
    """The attack's cells, each scored unless the memo holds its scores for the same inputs."""
    backdoored = paths.backdoored(attack_name)
    upstream[f"upstream.pretrain.{attack_name}"] = backdoored_run_id(attack_name)
    model = None
    tokenize = models.tokenizer(params.model.config)
    rows = []
    for defense_name in params.run.defenses:
        cell = f"{attack_name}-{defense_name}"
        key = memo.key(attack_name, defense_name, [backdoored, paths.defended(attack_name, defense_name),
                                                   paths.poisoned(attack_name) / "trigger.safetensors"])
        remembered = memo.get(cell, key)
        if remembered is None:
            model = model if model is not None else load_backdoored(attack_name)[0]
            defended, tuned = load_defended(params, attack_name, defense_name, model, tokenize)
            [metrics] = scorer.rows(defended, [attack_name])
            memo.put(cell, key, metrics)
        else:
            metrics = remembered[0]
            tuned = tune_record(attack_name, defense_name)
        upstream[f"upstream.tune.{cell}"] = tuned["mlflow_run_id"]
        kind = tuned["kind"]
        rows.append({"attack": attack_name, "defense": defense_name, "kind": kind, "shots": tuned["shots"],
                     **metrics, "trainable_params": tuned["trainable_params"],
                     "trainable_fraction": tuned["trainable_fraction"]})
    return rows


def clean_rows(params: Params, scorer: Scorer, memo: Memo) -> dict[str, dict]:
    """The clean model's metrics against each attack's trigger; the attacks the memo lacks are
    scored together, so that they share one pass over the clean images."""
    clean = artifacts.require(paths.CLEAN_MODEL, "rvpt stage pretrain --clean")
    keys = {attack: memo.key(attack, None, [clean, paths.poisoned(attack) / "trigger.safetensors"])
            for attack in params.run.attacks}
    found = {attack: memo.get(f"{attack}-{CLEAN_ROW}", key) for attack, key in keys.items()}
    missing = [attack for attack, hit in found.items() if hit is None]
    if missing:
        scored = scorer.rows(zero_shot(params, models.load(clean)[0]), missing)
        for attack, metrics in zip(missing, scored):
            memo.put(f"{attack}-{CLEAN_ROW}", keys[attack], metrics)
            found[attack] = (metrics, None)
    return {attack: found[attack][0] for attack in params.run.attacks}


def with_scan(row: dict, scans: dict) -> None:
    """The scanner's verdict on the row's model (stage `scan`), which never saw the trigger."""
    name = row["defense"] if row["defense"] == CLEAN_ROW else f"{row['attack']}-{row['defense']}"
    if name not in scans:
        raise BadInput(f"{paths.SCANS / 'scans.json'}: no scan of {name} (rerun `rvpt stage scan`)")
    found = scans[name]
    row.update({"scan_flagged": found.get("flagged"), "scan_target": found.get("target"),
                "scan_anomaly_index": found.get("anomaly_index"),
                "scan_held_out_success": found.get("held_out_success"),
                "scan_residual_success": found.get("residual_success")})


def on_tune_runs(rows: list[dict], upstream: dict) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, str]]]:
    """Each cell's test figures keyed by its tune run, so that MLflow's runs table ranks the defenses
    directly: CA, ASR, the controls, and against its undefended model the ASR reduction and the CA
    drop; and as a tag whether its attack implanted at all."""
    undefended = {r["attack"]: r for r in rows if r["kind"] == "none" and r["defense"] != CLEAN_ROW}
    metrics, tags = {}, {}
    for row in rows:
        run_id = upstream.get(f"upstream.tune.{row['attack']}-{row['defense']}")
        if not run_id:
            continue
        metrics[run_id] = {f"test_{key}": row[key] for key in TEST_KEYS if row.get(key) is not None}
        if row["attack"] in undefended:
            base = undefended[row["attack"]]
            metrics[run_id]["test_ca_drop"] = base["clean_accuracy"] - row["clean_accuracy"]
            metrics[run_id]["test_asr_reduction"] = base["attack_success_rate"] - row["attack_success_rate"]
        if row.get("implanted") is not None:
            tags[run_id] = {"implanted": str(row["implanted"]).lower()}
    return metrics, tags


def by_tune_run(rows: list[dict], upstream: dict) -> dict[str, dict]:
    """Each defended cell's row, with its undefended model's test ASR, keyed by its tune run."""
    undefended = {r["attack"]: r["attack_success_rate"] for r in rows if r["defense"] == "none"}
    return {run_id: {**row, "undefended_asr": undefended.get(row["attack"])} for row in rows
            if (run_id := upstream.get(f"upstream.tune.{row['attack']}-{row['defense']}"))}


def write_metrics(rows: list[dict]) -> None:
    """results/asr/<defense>.json and results/ca/<defense>.json, each {attack: value}, so that
    `dvc metrics show` prints a row per defense and a column per attack, and `dvc metrics diff`
    names each cell."""
    for folder, key in ((paths.ASR_METRICS, "attack_success_rate"), (paths.CA_METRICS, "clean_accuracy")):
        with artifacts.atomic_dir(folder) as staging:
            for defense in dict.fromkeys(row["defense"] for row in rows):
                artifacts.write_json(staging / f"{defense}.json",
                                     {row["attack"]: row[key] for row in rows if row["defense"] == defense})


def run(params: Params) -> str:
    for output in (paths.ASR_METRICS, paths.CA_METRICS):  # probes results/ itself, where summary.json goes too
        artifacts.check_writable(output)
    scorer = Scorer(params, "test", diagnostics=True)
    scans = artifacts.read_json(paths.SCANS / "scans.json", "rvpt stage scan").get("models", {})
    upstream, memo = {}, Memo("evaluate", params, [paths.DOWNSTREAM], unused=UNUSED_AFTER_TUNE + ("scan",))
    rows = [{"attack": attack, "defense": CLEAN_ROW, "kind": "none", "shots": 0, **metrics,
             "trainable_params": 0, "trainable_fraction": 0.0}
            for attack, metrics in clean_rows(params, scorer, memo).items()]
    for attack_name in progress(params.run.attacks, "evaluate attacks"):
        rows += defended_rows(params, scorer, memo, attack_name, upstream)
    undefended = {r["attack"]: r["attack_success_rate"] for r in rows if r["defense"] == "none"}
    for row in rows:
        row["target"] = params.attacks[row["attack"]].target
        # Whether there is a backdoor to remove; unknown when the matrix has no undefended cell.
        row["implanted"] = undefended[row["attack"]] >= IMPLANTED if row["attack"] in undefended else None
        with_scan(row, scans)

    keys = headline(params)
    logged = {"attacks": params.run.attacks, "defenses": params.run.defenses, "evaluate": params.evaluate.model_dump()}
    with stage("evaluate", params, logged, upstream, inputs={"downstream": paths.DOWNSTREAM}, context="evaluation") \
            as log:
        paths.RESULTS.mkdir(exist_ok=True)
        made_by = provenance.machine(params.threads, params.compute.device, params.compute.precision)
        artifacts.write_json(paths.SUMMARY, {"provenance": made_by, "rows": rows})
        write_metrics(rows)
        table = markdown(rows, params.run.attacks, [CLEAN_ROW, *params.run.defenses],
                         list(params.data.transfer_sets()),
                         [a for a in params.run.attacks if params.attacks[a].options.get("text_trigger")])
        artifacts.write_text(paths.RESULTS / "summary.md",
                             table + "\n" + calibration.markdown(calibration.compare(rows, calibration.paper_cells())))
        for row in rows:
            for key in keys:
                if row.get(key) is not None:
                    log.metric(f"{row['attack']}.{row['defense']}.{key}", row[key])
        log.artifact(paths.SUMMARY)
        log.artifact(paths.RESULTS / "summary.md")
        log.table(as_columns(rows), "matrix.json")
        log.describe("\n## ".join(table.split("\n## ", 2)[:2]) + "\n\nEvery table: the summary.md artifact.")
        log.onto(*on_tune_runs(rows, upstream))
        log.describe_models(by_tune_run(rows, upstream))
    cells = len(rows) - len(params.run.attacks)
    worst = max((r for r in rows if r["defense"] == "rvpt"), key=lambda r: r["attack_success_rate"], default=None)
    note = f"; worst RVPT ASR {worst['attack_success_rate']:.3f} ({worst['attack']})" if worst else ""
    return f"wrote {paths.SUMMARY}: {cells} cells x {len(keys)} headline metrics ({memo.hits} read back){note}"
