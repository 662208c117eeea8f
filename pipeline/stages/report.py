"""Stage `report`: results/report.html, one self-contained page (every image inlined, no script,
nothing fetched); the PNG plots under results/plots/; and each loss curve as data under
results/curves/, which `dvc plots diff` overlays across experiments.

The page holds the Table-1 matrix and the diagnostics (results/summary.md), the ASR/CA heat maps,
the CA-vs-ASR scatter, each attack's trigger and poisoned samples, the loss curves of pretraining
and of every tune cell, the trainable-parameter table and where every figure came from.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import html
import re
import shutil
from pathlib import Path

from pipeline.report import figures
from pipeline.store import artifacts, paths
from pipeline.tracking import runs
from pipeline.config.params import PARAMS_FILE, Params

PLOTS = paths.RESULTS / "plots"
CURVES = paths.RESULTS / "curves"
REPORT = paths.RESULTS / "report.html"
STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
         "td:first-child,th:first-child{text-align:left}img{max-width:100%;image-rendering:pixelated}"
         "figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}figcaption{max-width:700px}"
         "code{background:#f3f3f3;padding:0 2px}")
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
    if clean:
        shutil.copy(trained, CURVES / "pretrain_clean.csv")
    for attack, path in poisoned.items():
        shutil.copy(path, CURVES / f"pretrain_{attack}.csv")
    for defense in params.run.defenses:
        found = {a: paths.defended(a, defense) / "loss.csv" for a in attacks}
        found = {a: path for a, path in found.items() if path.exists()}
        for attack, path in found.items():
            shutil.copy(path, CURVES / f"tune_{attack}_{defense}.csv")
        if found:
            figures.curves({a: (0, read_curve(path)) for a, path in found.items()}, f"tune: {defense}",
                           PLOTS / f"loss_tune_{defense}.png")


def provenance(params: Params) -> str:
    """Where the page's numbers came from: code, params, data and the MLflow runs that made them."""
    commit = runs.git_commit()
    digest = hashlib.sha256(Path(PARAMS_FILE).read_bytes()).hexdigest()[:12] if Path(PARAMS_FILE).is_file() else "-"
    files = params.data.files
    source = "glyphs, rendered by the download stage" if files is None else \
        f"files: corpus {files.corpus.path}, downstream {files.downstream.path}"
    made = [("pretrain", "clean model", run_id(paths.CLEAN_MODEL / "pretrain.json"))]
    made += [("pretrain", a, run_id(paths.backdoored(a) / "pretrain.json")) for a in params.run.attacks]
    made += [("tune", f"{a} x {d}", run_id(paths.defended(a, d) / "tune.json"))
             for a in params.run.attacks for d in params.run.defenses]
    cells = "".join(f"<tr><td>{html.escape(stage)}</td><td>{html.escape(what)}</td><td><code>{rid}</code></td></tr>"
                    for stage, what, rid in made)
    return (f"<h2>Provenance</h2><table><tr><td>commit</td><td><code>{html.escape(commit)}</code></td></tr>"
            f"<tr><td>params.yaml (sha256)</td><td><code>{digest}</code></td></tr>"
            f"<tr><td>data source</td><td>{html.escape(str(source))}</td></tr>"
            f"<tr><td>MLflow pipeline tag <code>rvpt.pipeline</code></td><td><code>{runs.pipeline_id(commit)}"
            f"</code></td></tr><tr><td>MLflow experiment</td><td>{html.escape(params.tracking.experiment)}</td></tr>"
            f"</table><table><tr><th>stage</th><th>model</th><th>MLflow run id</th></tr>{cells}</table>")


def run_id(card: Path) -> str:
    if not card.is_file():
        return "-"
    return html.escape(str(artifacts.read_json(card, "its stage").get("mlflow_run_id") or "-"))


def inline(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">' \
           f"<figcaption>{html.escape(caption)}</figcaption></figure>"


def code(escaped: str) -> str:
    """`x` as <code>x</code> and **x** as <b>x</b>, in text that is already escaped."""
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped))


def markdown_to_html(text: str) -> str:
    """The subset summary.md uses: ## headings, pipe tables, paragraphs."""
    out, table = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            if not set(line) <= set("|-"):
                table.append([code(html.escape(c.strip())) for c in line.strip("|").split("|")])
            continue
        if table:
            head, *body = table
            out.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body)
                       + "</table>")
            table = []
        if line.startswith("## "):
            out.append(f"<h3>{code(html.escape(line[3:]))}</h3>")
        elif line.strip():
            out.append(f"<p>{code(html.escape(line))}</p>")
    return "\n".join(out)


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
    return ("<h2>Trigger inversion, without the trigger</h2><p>Per model, the smallest trigger that sends 90% of "
            "the defender's shots to each class (a column per class), one row per trigger kind in the order of "
            "<code>scan.kinds</code>, shown on grey.</p>" + "".join(figures))


def run(params: Params) -> str:
    artifacts.check_writable(PLOTS)
    rows = artifacts.read_json(paths.SUMMARY, "rvpt stage evaluate")["rows"]
    table = artifacts.require(paths.RESULTS / "summary.md", "rvpt stage evaluate").read_text()
    attacks = params.run.attacks
    draw(rows, params)
    triggers = "".join(inline(paths.poisoned(a) / name, f"{a}: {what}") for a in attacks
                       for name, what in (("trigger.png", "its trigger"), ("samples.png", "poisoned training samples")))
    inverted = scans_section(rows, attacks)
    plots = "".join(inline(PLOTS / f"{stem}.png", caption(stem)) for stem in
                    ["asr", "ca", "scatter", "loss_pretrain", *(f"loss_tune_{d}" for d in params.run.defenses)]
                    if (PLOTS / f"{stem}.png").is_file())
    first = {r["defense"]: r for r in rows if r["attack"] == attacks[0]}
    trainable = "".join(f"<tr><td>{html.escape(d)}</td><td>{first[d]['trainable_params']:,}</td>"
                        f"<td>{100 * first[d]['trainable_fraction']:.3f}%</td></tr>"
                        for d in params.run.defenses if d in first)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>rvpt report</title>"
            f"<style>{STYLE}</style></head><body><h1>rvpt: attacks x defenses</h1>"
            f"<h2>Results</h2>{markdown_to_html(table)}<h2>Plots</h2>{plots}"
            f"<h2>Triggers and poisoned samples</h2>{triggers}{inverted}"
            f"<h2>Trainable parameters</h2><table><tr><th>defense</th><th>trainable</th><th>of the model</th></tr>"
            f"{trainable}</table>{provenance(params)}</body></html>")
    artifacts.write_text(REPORT, page)
    logged = {"attacks": attacks, "defenses": params.run.defenses}
    with runs.stage("report", params, logged) as log:
        log.artifact(REPORT)
        log.artifact(PLOTS, "plots")
        log.artifact(CURVES, "curves")
    return (f"wrote {REPORT} ({len(page) // 1024} KiB, self-contained), {len(list(PLOTS.glob('*.png')))} plots "
            f"and {len(list(CURVES.glob('*.csv')))} curves")
