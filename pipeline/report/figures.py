"""The report's figures, drawn with matplotlib to PNG: the attack x defense heat maps, the CA-vs-ASR
scatter and the overlaid loss curves."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display here, and no GUI toolkit wanted
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from pipeline.report.summary import LABELS  # noqa: E402

MIN_WIDTH = 6.5  # inches: a one-attack heat map still has room for its title
CA_SPAN = 20  # percentage points of CA drop at which the CA colour saturates
MARKERS = "osD^vP*Xh<>p"


def _save(figure, path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _grid(rows: list[dict], attacks: list[str], defenses: list[str], key: str) -> list[list[float]]:
    by_key = {(r["defense"], r["attack"]): r.get(key) for r in rows}
    return [[float("nan") if by_key.get((d, a)) is None else 100 * by_key[(d, a)] for a in attacks] for d in defenses]


def asr_heatmap(rows: list[dict], attacks: list[str], defenses: list[str], path) -> None:
    """Test ASR per cell; red is a backdoor that survived."""
    values = _grid(rows, attacks, defenses, "attack_success_rate")
    _heatmap(values, values, attacks, defenses, "RdYlGn_r", (0, 100), "ASR % on the test split (red: backdoor kept)",
             path, not_implanted(rows))


def ca_heatmap(rows: list[dict], attacks: list[str], defenses: list[str], path) -> None:
    """Test CA per cell, coloured by its change from the undefended model's CA on the same attack
    (the clean model's, when `none` did not run), so that a defense's CA cost shows as red."""
    values = _grid(rows, attacks, defenses, "clean_accuracy")
    reference = "none" if any(r["defense"] == "none" for r in rows) else "clean_model"
    base = dict(zip(attacks, _grid(rows, attacks, [reference], "clean_accuracy")[0]))
    change = [[value - base[a] for value, a in zip(line, attacks)] for line in values]
    against = "no defense" if reference == "none" else "the clean model"
    _heatmap(values, change, attacks, defenses, "RdYlGn", (-CA_SPAN, CA_SPAN),
             f"CA % on the test split\n(colour: change from {against}; red at -{CA_SPAN} points)", path,
             not_implanted(rows))


def not_implanted(rows: list[dict]) -> set[str]:
    return {r["attack"] for r in rows if r.get("implanted") is False}


def _heatmap(values, colours, attacks, defenses, cmap, limits, title, path, failed=frozenset()) -> None:
    """`failed`: attacks that did not implant, hatched, so that their low ASRs never read as a win."""
    figure, axes = plt.subplots(figsize=(max(MIN_WIDTH, 1.1 * len(attacks) + 3), 0.4 * len(defenses) + 1.6))
    axes.imshow(colours, cmap=cmap, vmin=limits[0], vmax=limits[1], aspect="auto")
    axes.set_xticks(range(len(attacks)), [f"{a}\n(not implanted)" if a in failed else a for a in attacks],
                    rotation=30, ha="right")
    axes.set_yticks(range(len(defenses)), [LABELS.get(d, d) for d in defenses])
    for j, attack in enumerate(attacks):
        if attack in failed:
            axes.add_patch(Rectangle((j - 0.5, -0.5), 1, len(defenses), fill=False, hatch="///", edgecolor="0.35",
                                     linewidth=0))
    for i, line in enumerate(values):
        for j, value in enumerate(line):
            axes.text(j, i, "-" if value != value else f"{value:.1f}", ha="center", va="center", fontsize=8)
    axes.set_title(title, fontsize=10)
    _save(figure, path)


def scatter(rows: list[dict], attacks: list[str], defenses: list[str], path) -> None:
    """One point per cell: CA against ASR, a colour per defense and a marker per attack, in two
    legends; an attack that did not implant is drawn hollow. The goal is the bottom right: the
    backdoor gone at no cost in CA."""
    figure, axes = plt.subplots(figsize=(7.5, 4.8))
    colours = plt.get_cmap("tab10")
    by_key = {(r["defense"], r["attack"]): r for r in rows}
    failed = not_implanted(rows)
    for i, defense in enumerate(defenses):
        for j, attack in enumerate(attacks):
            row = by_key.get((defense, attack))
            if row is None or row.get("attack_success_rate") is None:
                continue
            colour = colours(i % 10)
            axes.scatter(100 * row["clean_accuracy"], 100 * row["attack_success_rate"], marker=MARKERS[j % len(MARKERS)],
                         s=34, edgecolors=colour, facecolors="none" if attack in failed else colour)
    by_defense = [Line2D([], [], linestyle="", marker="s", markersize=7, color=colours(i % 10),
                         label=LABELS.get(d, d)) for i, d in enumerate(defenses)]
    by_attack = [Line2D([], [], linestyle="", marker=MARKERS[j % len(MARKERS)], markersize=6, color="black",
                        markerfacecolor="none" if a in failed else "black",
                        label=f"{a} (not implanted)" if a in failed else a) for j, a in enumerate(attacks)]
    first = axes.legend(handles=by_defense, title="defense (colour)", fontsize=7, title_fontsize=7,
                        loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes.add_artist(first)
    axes.legend(handles=by_attack, title="attack (marker)", fontsize=7, title_fontsize=7, loc="lower left",
                bbox_to_anchor=(1.01, 0.0))
    axes.set_xlabel("CA % on the test split")
    axes.set_ylabel("ASR % on the test split")
    axes.set_ylim(-3, 103)
    axes.set_title("Each cell's CA against its ASR (goal: bottom right)", fontsize=10)
    _save(figure, path)


def smoothed(values: list[float], weight: float) -> list[float]:
    """An exponential moving average, debiased at the start as TensorBoard's smoothing is."""
    out, average = [], 0.0
    for step, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight ** step))
    return out


def smoothing(length: int) -> float:
    """An EMA weight that averages over about a tenth of a curve: none for a few points, 0.9 at 100."""
    return min(0.9, max(0.0, 1 - 10 / max(length, 1)))


def curves(series: dict[str, tuple[int, list[float]]], title: str, path) -> None:
    """Loss curves overlaid on one axis, each smoothed with the raw curve faint behind it; a curve
    is (first step, losses), so a fine-tune can continue where its starting model's curve ended."""
    figure, axes = plt.subplots(figsize=(7, 3.6))
    colours = plt.get_cmap("tab10")
    weight = smoothing(max(len(losses) for _, losses in series.values()))
    for i, (name, (start, losses)) in enumerate(series.items()):
        colour, steps = colours(i % 10), range(start, start + len(losses))
        axes.plot(steps, losses, color=colour, linewidth=0.5, alpha=0.25)
        axes.plot(steps, smoothed(losses, weight), color=colour, linewidth=1.2, label=name)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(f"{title} (smoothed: EMA {weight:.2f}; faint: raw)", fontsize=10)
    axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _save(figure, path)
