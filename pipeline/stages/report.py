"""Stage `report`: results/report.html, one self-contained page (every image inlined, no script,
nothing fetched), and the PNG plots under results/plots/ that `dvc plots show` renders offline.

The page holds the Table-1 matrix and the diagnostics (results/summary.md), the ASR/CA heat maps,
each attack's trigger and poisoned samples, the loss curves of pretraining and of every tune
cell, and the trainable-parameter table.
"""
from __future__ import annotations

import base64
import csv
import html
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display here, and no GUI toolkit wanted
import matplotlib.pyplot as plt  # noqa: E402

from pipeline import artifacts, paths  # noqa: E402
from pipeline.params import Params  # noqa: E402
from pipeline.summary import LABELS  # noqa: E402
from pipeline.tracking import stage_run  # noqa: E402

PLOTS = paths.RESULTS / "plots"
REPORT = paths.RESULTS / "report.html"
STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
         "td:first-child,th:first-child{text-align:left}img{max-width:100%;image-rendering:pixelated}"
         "figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}")


def read_curve(path: Path) -> list[float]:
    with open(path, newline="") as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


def heatmap(rows: list[dict], attacks: list[str], defenses: list[str], key: str, title: str, path: Path) -> None:
    by_key = {(r["defense"], r["attack"]): r.get(key) for r in rows}
    values = [[100 * (by_key.get((d, a)) if by_key.get((d, a)) is not None else float("nan")) for a in attacks]
              for d in defenses]
    figure, axes = plt.subplots(figsize=(1.1 * len(attacks) + 3, 0.4 * len(defenses) + 1.5))
    axes.imshow(values, cmap="RdYlGn_r" if key == "attack_success_rate" else "RdYlGn", vmin=0, vmax=100, aspect="auto")
    axes.set_xticks(range(len(attacks)), attacks, rotation=30, ha="right")
    axes.set_yticks(range(len(defenses)), [LABELS.get(d, d) for d in defenses])
    for i, line in enumerate(values):
        for j, value in enumerate(line):
            axes.text(j, i, "-" if value != value else f"{value:.1f}", ha="center", va="center", fontsize=8)
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def curves(series: dict[str, list[float]], title: str, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(6, 3.2))
    for name, losses in series.items():
        axes.plot(losses, label=name, linewidth=1)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def inline(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">' \
           f"<figcaption>{html.escape(caption)}</figcaption></figure>"


def code(escaped: str) -> str:
    """`x` as <code>x</code>, in text that is already escaped."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


def markdown_to_html(text: str) -> str:
    """The subset summary.md uses: ## headings, pipe tables, paragraphs."""
    out, table = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            if not set(line) <= set("|-"):
                table.append([html.escape(c.strip()) for c in line.strip("|").split("|")])
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
    attacks, defenses = params.run.attacks, ["clean_model", *params.run.defenses]
    PLOTS.mkdir(parents=True, exist_ok=True)
    heatmap(rows, attacks, defenses, "attack_success_rate", "ASR % on the test split", PLOTS / "asr.png")
    heatmap(rows, attacks, defenses, "clean_accuracy", "CA % on the test split", PLOTS / "ca.png")
    curves({a: read_curve(paths.backdoored(a) / "loss.csv") for a in attacks},
           "pretraining on poison (fine-tuning the clean model)", PLOTS / "loss_pretrain.png")
    for defense in params.run.defenses:
        found = {a: read_curve(paths.defended(a, defense) / "loss.csv") for a in attacks
                 if (paths.defended(a, defense) / "loss.csv").exists()}
        if found:
            curves(found, f"tune: {defense}", PLOTS / f"loss_tune_{defense}.png")

    triggers = "".join(inline(paths.poisoned(a) / name, f"{a}: {what}") for a in attacks
                       for name, what in (("trigger.png", "trigger"), ("samples.png", "poisoned samples")))
    inverted = scans_section(rows, attacks)
    plots = "".join(inline(p, p.stem) for p in sorted(PLOTS.glob("*.png")))
    first = {r["defense"]: r for r in rows if r["attack"] == attacks[0]}
    trainable = "".join(f"<tr><td>{html.escape(d)}</td><td>{first[d]['trainable_params']:,}</td>"
                        f"<td>{100 * first[d]['trainable_fraction']:.3f}%</td></tr>"
                        for d in params.run.defenses if d in first)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>rvpt report</title>"
            f"<style>{STYLE}</style></head><body><h1>rvpt: attacks x defenses</h1>"
            f"<h2>Results</h2>{markdown_to_html(table)}<h2>Plots</h2>{plots}"
            f"<h2>Triggers and poisoned samples</h2>{triggers}{inverted}"
            f"<h2>Trainable parameters</h2><table><tr><th>defense</th><th>trainable</th><th>of the model</th></tr>"
            f"{trainable}</table></body></html>")
    artifacts.write_text(REPORT, page)
    with stage_run("report", params.tracking.experiment, {"attacks": attacks, "defenses": params.run.defenses}) as log:
        log.artifact(REPORT)
        log.artifact(PLOTS, "plots")
    return f"wrote {REPORT} ({len(page) // 1024} KiB, self-contained) and {len(list(PLOTS.glob('*.png')))} plots"
