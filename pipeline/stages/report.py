"""Stage `report`: results/report.html, one self-contained page (every image inlined, no script,
nothing fetched); the PNG plots under results/plots/; and each loss curve as data under
results/curves/, which `dvc plots diff` overlays across experiments.

The page holds the Table-1 matrix and the diagnostics (results/summary.md), the ASR/CA heat maps,
the CA-vs-ASR scatter, each attack's trigger and poisoned samples, the loss curves of pretraining
and of every tune cell, the trainable-parameter table and where every figure came from.
"""
from __future__ import annotations

import csv
import hashlib
import html
import shutil
from pathlib import Path

from pipeline.report import figures
from pipeline.report.page import STYLE, inline, markdown_to_html
from pipeline.report.summary import as_columns, defense_means
from pipeline.store import artifacts, paths
from pipeline.tracking import location, runs
from pipeline.config.params import PARAMS_FILE, Params

PLOTS = paths.RESULTS / "plots"
CURVES = paths.RESULTS / "curves"
REPORT = paths.RESULTS / "report.html"
CONTENTS = [("maps", "heat maps and scatter"), ("tables", "tables"), ("curves", "training curves"),
            ("triggers", "triggers"), ("scans", "trigger inversion"), ("trainable", "trainable parameters"),
            ("provenance", "provenance")]
CAPTIONS = {
    "asr": "Test ASR of every attack x defense cell. Red: the backdoor survived.",
    "ca": "Test CA of every cell, coloured by its change from the undefended model on the same attack: red is "
          "what the defense cost.",
    "scatter": "Every cell's test CA against its test ASR. A defense that works sits at the bottom right.",
    "loss_pretrain": "Pretraining: the clean model (unless it is pretrained weights), and each attack's "
                     "poisoned training, drawn from where the clean model's ended when it starts from it.",
}


def read_curve(path: Path) -> list[float]:
    with open(path, newline="") as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


def caption(stem: str) -> str:
    if stem.startswith("loss_tune_"):
        defense = stem.removeprefix("loss_tune_")
        return f"Tuning with {defense}: the loss on the defender's shots, one curve per attack's backdoored model."
    return CAPTIONS.get(stem, stem)


def draw(rows: list[dict], params: Params) -> None:
    """The PNGs under results/plots/ and the curves' data under results/curves/."""
    attacks, defenses = params.run.attacks, ["clean_model", *params.run.defenses]
    for folder in (PLOTS, CURVES):
        shutil.rmtree(folder, ignore_errors=True)  # a figure of a defense no longer run must not linger
        folder.mkdir(parents=True)
    figures.asr_heatmap(rows, attacks, defenses, PLOTS / "asr.png")
    figures.ca_heatmap(rows, attacks, defenses, PLOTS / "ca.png")
    figures.scatter(rows, attacks, defenses, PLOTS / "scatter.png")
    trained = paths.CLEAN_MODEL / "loss.csv"  # absent when the clean model is pretrained weights
    clean = read_curve(trained) if trained.is_file() else []
    pretrain = {"clean model": (0, clean)} if clean else {}
    start = 0 if params.pretrain.init == "scratch" else len(clean)  # a victim fine-tunes the clean model
    poisoned = {a: paths.backdoored(a) / "loss.csv" for a in attacks}
    poisoned = {a: path for a, path in poisoned.items() if path.is_file()}  # a weight edit trains nothing
    pretrain |= {a: (start, read_curve(path)) for a, path in poisoned.items()}
    figures.curves(pretrain, "pretraining", PLOTS / "loss_pretrain.png")
    family(CURVES / "pretrain.csv", pretrain)
    for defense in params.run.defenses:
        found = {a: paths.defended(a, defense) / "loss.csv" for a in attacks}
        found = {a: (0, read_curve(path)) for a, path in found.items() if path.exists()}
        if found:
            figures.curves(found, f"tune: {defense}", PLOTS / f"loss_tune_{defense}.png")
            family(CURVES / f"tune_{defense}.csv", found)


def family(path: Path, series: dict[str, tuple[int, list[float]]]) -> None:
    """A family of curves as one long table (step, loss, curve), which `dvc plots` draws as one
    chart with a colour per curve (.dvc/plots/curves.json)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "loss", "curve"])
        for name, (start, losses) in series.items():
            writer.writerows([start + i, loss, name] for i, loss in enumerate(losses))


def provenance(params: Params) -> str:
    """Where the page's numbers came from: code, params, data and the MLflow runs that made them."""
    commit = location.git_commit()
    digest = hashlib.sha256(Path(PARAMS_FILE).read_bytes()).hexdigest()[:12] if Path(PARAMS_FILE).is_file() else "-"
    files = params.data.files
    source = "glyphs, rendered by the download stage" if files is None else \
        f"files: corpus {files.corpus.path}, downstream {files.downstream.path}"
    made = [("pretrain", "clean model", run_id(paths.CLEAN_MODEL / "pretrain.json"))]
    made += [("pretrain", a, run_id(paths.backdoored(a) / "pretrain.json")) for a in params.run.attacks]
    made += [("tune", f"{a} x {d}", run_id(paths.defended(a, d) / "tune.json"))
             for a in params.run.attacks for d in params.run.defenses]
    experiment = experiment_id(params.tracking.experiment)
    cells = "".join(f"<tr><td>{html.escape(stage)}</td><td>{html.escape(what)}</td><td>{linked(experiment, rid)}</td></tr>"
                    for stage, what, rid in made)
    machine = artifacts.read_json(paths.SUMMARY, "rvpt stage evaluate").get("provenance", {})
    computed = "".join(f"<tr><td>{html.escape(key)}</td><td>{html.escape(str(value))}</td></tr>"
                       for key, value in machine.items())
    return (f"<h2 id='provenance'>Provenance</h2><table><tr><td>commit</td><td><code>{html.escape(commit)}</code></td></tr>{computed}"
            f"<tr><td>params.yaml (sha256)</td><td><code>{digest}</code></td></tr>"
            f"<tr><td>data source</td><td>{html.escape(str(source))}</td></tr>"
            f"<tr><td>MLflow pipeline tag <code>rvpt.pipeline</code></td><td><code>{location.pipeline_id(commit)}"
            f"</code></td></tr><tr><td>MLflow experiment</td><td>{html.escape(params.tracking.experiment)}</td></tr>"
            f"</table><table><tr><th>stage</th><th>model</th><th>MLflow run id</th></tr>{cells}</table>")


def run_id(card: Path) -> str:
    if not card.is_file():
        return "-"
    return str(artifacts.read_json(card, "its stage").get("mlflow_run_id") or "-")


def linked(experiment_id: str | None, rid: str) -> str:
    """A run id as a link to its page in the MLflow UI (`rvpt ui`, or the tracking server's own)."""
    text = f"<code>{html.escape(rid)}</code>"
    return text if experiment_id is None or rid == "-" else \
        f'<a href="{html.escape(location.run_link(experiment_id, rid))}">{text}</a>'


def experiment_id(name: str) -> str | None:
    import mlflow

    found = mlflow.MlflowClient(location.tracking_uri()).get_experiment_by_name(name)
    return found.experiment_id if found else None


def scans_section(rows: list[dict], attacks: list[str]) -> str:
    """Each attack's true trigger beside what the scanner inverted on its backdoored model, with no trigger given."""
    scanned = paths.SCANS / "scans.json"
    if not scanned.is_file():
        return ""
    models = artifacts.read_json(scanned, "rvpt stage scan")["models"]

    def verdict(name: str) -> str:
        found = models[name]
        said = f"flagged {found['target']}" if found["flagged"] else f"not flagged (suspect {found['suspect']})"
        word = f" with the word {found['suspect_word']!r}" if found.get("suspect_word") else ""
        return f"{said}, {found['suspect_kind']} trigger{word}, anomaly index {found['anomaly_index']:.2f}"

    figures = [inline(paths.SCANS / "clean_model.png", f"clean model: {verdict('clean_model')}")]
    for attack in attacks:
        target = next((r.get("target") for r in rows if r["attack"] == attack), None)
        figures += [inline(paths.poisoned(attack) / "trigger.png", f"{attack}: the true trigger (target {target})"),
                    inline(paths.SCANS / f"{attack}.png", f"{attack}: inverted, {verdict(attack)}")]
    return ("<h2 id='scans'>Trigger inversion, without the trigger</h2><p>Per model, the smallest trigger that sends 90% of "
            "the defender's shots to each class (a column per class), one row per trigger kind in the order of "
            "<code>scan.kinds</code>, shown on grey.</p>" + "".join(figures))


def sections(table: str) -> tuple[str, str]:
    """summary.md split into its verdict and the rest."""
    head, _, rest = table.partition("\n## ASR % (CA %)")
    return head.removeprefix("## Verdict").strip(), "## ASR % (CA %)" + rest


def run(params: Params) -> str:
    artifacts.check_writable(PLOTS)
    rows = artifacts.read_json(paths.SUMMARY, "rvpt stage evaluate")["rows"]
    table = artifacts.require(paths.RESULTS / "summary.md", "rvpt stage evaluate").read_text()
    attacks = params.run.attacks
    draw(rows, params)
    triggers = "".join(inline(paths.poisoned(a) / name, f"{a}: {what}") for a in attacks
                       for name, what in (("trigger.png", "its trigger"), ("samples.png", "poisoned training samples")))
    figure = lambda stems: "".join(inline(PLOTS / f"{s}.png", caption(s)) for s in stems  # noqa: E731
                                   if (PLOTS / f"{s}.png").is_file())
    first = {r["defense"]: r for r in rows if r["attack"] == attacks[0]}
    trainable = "".join(f"<tr><td>{html.escape(d)}</td><td>{first[d]['trainable_params']:,}</td>"
                        f"<td>{100 * first[d]['trainable_fraction']:.3f}%</td></tr>"
                        for d in params.run.defenses if d in first)
    verdict, rest = sections(table)
    contents = " &middot; ".join(f'<a href="#{anchor}">{name}</a>' for anchor, name in CONTENTS)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>rvpt report</title>"
            f"<style>{STYLE}</style></head><body><h1>rvpt: which defense removes which backdoor, at what cost</h1>"
            f"<h2 id='verdict'>Verdict</h2><div class='verdict'>{markdown_to_html(verdict)}</div>"
            f"<p class='contents'>{contents}</p>"
            f"<h2 id='maps'>Every cell at a glance</h2>{figure(['asr', 'ca', 'scatter'])}"
            f"<h2 id='tables'>Tables</h2>{markdown_to_html(rest)}"
            f"<h2 id='curves'>Training curves</h2>"
            f"{figure(['loss_pretrain', *(f'loss_tune_{d}' for d in params.run.defenses)])}"
            f"<h2 id='triggers'>Triggers and poisoned samples</h2>{triggers}{scans_section(rows, attacks)}"
            f"<h2 id='trainable'>Trainable parameters</h2><table><tr><th>defense</th><th>trainable</th>"
            f"<th>of the model</th></tr>{trainable}</table>{provenance(params)}</body></html>")
    artifacts.write_text(REPORT, page)
    logged = {"attacks": attacks, "defenses": params.run.defenses}
    with runs.stage("report", params, logged) as log:
        log.artifact(REPORT)
        log.artifact(PLOTS, "plots")
        log.artifact(CURVES, "curves")
        answer = [PLOTS / f"{stem}.png" for stem in ("asr", "ca", "scatter") if (PLOTS / f"{stem}.png").is_file()]
        log.on_parent(defense_means(rows, params.run.defenses), [*answer, REPORT], as_columns(rows))
    return (f"wrote {REPORT} ({len(page) // 1024} KiB, self-contained), {len(list(PLOTS.glob('*.png')))} plots "
            f"and {len(list(CURVES.glob('*.csv')))} curves")
