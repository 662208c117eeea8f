"""results/summary.md: the verdict, the matrix laid out like the paper's Table 1, and the diagnostics
beside it."""
from __future__ import annotations

from pipeline.report.calibration import REMOVED_BELOW

IMPLANTED = 0.5  # undefended ASR from which a poisoned model counts as backdoored when scoring the scanner
# The paper's premise as numbers: the backdoor costs the clean model at most a point of CA, implants
# at 90% ASR or more, and a linear head fitted on clean images ignores it (10% or less).
REGIME = {"ca_drop": 0.01, "undefended": 0.9, "linear_probe": 0.1}
LABELS = {"clean_model": "clean model (never poisoned)"}
LAYER_KINDS = {"noise": "Gaussian noise", "blur": "Gaussian blur", "jitter": "colour jitter", "flip": "a horizontal flip"}


def as_columns(rows: list[dict]) -> dict[str, list]:
    """The matrix as an MLflow table: one row per (attack, defense)."""
    keys = ("attack", "defense", "implanted", "clean_accuracy", "attack_success_rate", "control_attack_success_rate",
            "target_rate", "scan_flagged")
    return {key: [row.get(key) for row in rows] for key in keys}


def defense_means(rows: list[dict], defenses: list[str]) -> dict[str, float]:
    """Per defense, its mean test ASR and CA over the attacks that implanted: what a defense does to
    a backdoor that is there."""
    means = {}
    for defense in defenses:
        cells = [r for r in rows if r["defense"] == defense and r.get("implanted") is not False]
        for key, name in (("attack_success_rate", "mean_asr"), ("clean_accuracy", "mean_ca")):
            if cells:
                means[f"{defense}.{name}"] = sum(r[key] for r in cells) / len(cells)
    return means


def verdict(rows: list[dict], defenses: list[str]) -> list[str]:
    """The answer in a few lines: per defense, how many of the backdoors that implanted it removed
    (test ASR under REMOVED_BELOW), and what it cost in CA against the undefended model."""
    implanted = [a for a in dict.fromkeys(r["attack"] for r in rows) if any(
        r["attack"] == a and r.get("implanted") for r in rows)]
    failed = sorted({r["attack"] for r in rows if r.get("implanted") is False})
    if not implanted:
        return ["No attack implanted (undefended test ASR of 50% or more), so no defense is measured here."]
    base = {r["attack"]: r["clean_accuracy"] for r in rows if r["defense"] == "none"}
    lines = []
    for defense in (d for d in defenses if d not in ("none", "clean_model")):
        cells = [r for r in rows if r["defense"] == defense and r["attack"] in implanted]
        if not cells:
            continue
        removed = [r["attack"] for r in cells if r["attack_success_rate"] < REMOVED_BELOW]
        cost = sum(base[r["attack"]] - r["clean_accuracy"] for r in cells) / len(cells)
        named = f" ({', '.join(removed)})" if removed else ""
        lines.append(f"- **{defense}** removes {len(removed)} of {len(cells)} implanted backdoors{named}, at a mean "
                     f"CA cost of {100 * cost:.1f} points.")
    removed_at = f"test ASR under {100 * REMOVED_BELOW:.0f}%"
    note = f" Not implanted, so not counted: {', '.join(failed)}." if failed else ""
    return [f"Removed means {removed_at}; the CA cost is against the undefended model.{note}", "", *lines]


def percent(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def grid(rows: list[dict], attacks: list[str], defenses: list[str], cell, extra=None, extra_name="") -> list[str]:
    """A defenses x attacks markdown table; `cell(row)` formats one cell."""
    by_key = {(r["defense"], r["attack"]): r for r in rows}
    failed = {r["attack"] for r in rows if r.get("implanted") is False}
    header = ["defense", *(f"{a} (not implanted)" if a in failed else a for a in attacks)] + \
        ([extra_name] if extra else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for defense in defenses:
        found = [by_key.get((defense, a)) for a in attacks]
        cells = [cell(r) if r else "" for r in found]
        tail = [extra(next(r for r in found if r))] if extra and any(found) else []
        lines.append("| " + " | ".join([LABELS.get(defense, defense), *cells, *tail]) + " |")
    return lines


def asr_ca(asr_key: str, ca_key: str):
    return lambda row: f"{percent(row.get(asr_key))} ({percent(row.get(ca_key))})"


def trainable(row) -> str:
    return f"{row['trainable_params']:,} ({100 * row['trainable_fraction']:.2f}%)"


def ranks(values: list[float]) -> list[float]:
    """1-based ranks; tied values share their mean rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranked = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start:end + 1]:
            ranked[i] = (start + end) / 2 + 1
        start = end + 1
    return ranked


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (Pearson's on the ranks); None for under 3 pairs or a constant side."""
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    rx, ry = ranks(list(x)), ranks(list(y))
    mean = (len(x) + 1) / 2
    covariance = sum((a - mean) * (b - mean) for a, b in zip(rx, ry))
    return covariance / (sum((a - mean) ** 2 for a in rx) * sum((b - mean) ** 2 for b in ry)) ** 0.5


def scan_section(rows: list[dict], attacks: list[str], defenses: list[str]) -> list[str]:
    """The trigger-inversion scanner's verdicts, how often they are right, and whether its residual ASR
    ranks the defenses as the true ASR does."""
    if not any("scan_flagged" in r for r in rows):
        return []
    out = ["", "## Trigger inversion without the trigger: flagged class (anomaly index); '-': not flagged", ""]
    scanned = [r for r in rows if r.get("scan_anomaly_index") is not None]  # defended cells: scan.defended full
    out += grid(scanned, attacks, [d for d in defenses if any(r["defense"] == d for r in scanned)],
                lambda r: f"{r['scan_target'] or '-'} ({r['scan_anomaly_index']:.2f})")
    cells = [r for r in rows if r["defense"] != "clean_model"]
    out += ["", "## Residual ASR % of the trigger inverted on the backdoored model, through each defense "
            "(held-out validation images)", ""]
    out += grid(cells, attacks, [d for d in defenses if d != "clean_model"],
                lambda r: percent(r.get("scan_residual_success")))
    backdoored = [r for r in cells if r["kind"] == "none"]
    # Scored against the test ASR, after the fact: a poisoned model whose backdoor did not implant
    # (undefended ASR under 50%) has nothing to find, and flagging it is a false alarm.
    implanted = [r for r in backdoored if (r.get("attack_success_rate") or 0) >= IMPLANTED]
    missing = [r for r in backdoored if r not in implanted]
    right = sum(r["scan_target"] == r.get("target") for r in implanted)
    clean = next((r for r in rows if r["defense"] == "clean_model"), None)
    pairs = [(r["scan_residual_success"], r["attack_success_rate"]) for r in cells
             if r.get("scan_residual_success") is not None and r.get("attack_success_rate") is not None]
    rho = spearman(*zip(*pairs)) if len(pairs) >= 3 else None
    said = [f"Detection: {right} of {len(implanted)} implanted backdoors (undefended test ASR >= 50%) flagged "
            f"with their target class"]
    if missing:
        said.append(f"{sum(r['scan_flagged'] for r in missing)} of {len(missing)} poisoned models whose backdoor did "
                    f"not implant flagged")
    if clean:
        said.append(f"the clean model {'is' if clean['scan_flagged'] else 'is not'} flagged")
    verified = (f" Verification: Spearman's rho between the residual ASR and the true test ASR over {len(pairs)} "
                f"tune cells: {rho:.2f}." if rho is not None else "")
    out += ["", "; ".join(said) + "." + verified]
    return out


def regime_section(rows: list[dict], attacks: list[str]) -> list[str]:
    """Per attack: whether the paper's premise holds for its backdoor (REGIME), from the test rows."""
    by_key = {(r["defense"], r["attack"]): r for r in rows}
    probe = next((r["defense"] for r in rows if r.get("kind") == "linear_probe"), None)
    lines = []
    for attack in attacks:
        clean, none = by_key.get(("clean_model", attack)), by_key.get(("none", attack))
        probed = by_key.get((probe, attack)) if probe else None
        if not (clean and none and probed):
            continue
        drop = clean["clean_accuracy"] - none["clean_accuracy"]
        holds = (drop <= REGIME["ca_drop"] and none["attack_success_rate"] >= REGIME["undefended"]
                 and probed["attack_success_rate"] <= REGIME["linear_probe"])
        lines.append(f"| {attack} | {100 * drop:+.2f} | {percent(none['attack_success_rate'])} | "
                     f"{percent(probed['attack_success_rate'])} | {'yes' if holds else 'no'} |")
    if not lines:
        return []
    return ["", "## The paper's regime per attack: a surplus feature the task never needs (CA cost <= 1 point, "
            "undefended ASR >= 90%, linear-probe ASR <= 10%)", "",
            "| attack | CA cost vs. the clean model (points) | undefended ASR % | linear-probe ASR % | regime holds |",
            "|---|---|---|---|---|", *lines]


def blocks(values) -> str:
    return " / ".join("-" if v is None else f"{v:.3f}" for v in values)


def markdown(rows: list[dict], attacks: list[str], defenses: list[str], transfer_sets=("transfer",),
             caption_triggered=()) -> str:
    """The tables that apply to these rows, and only the footnotes that explain them.

    `caption_triggered`: attacks whose trigger also has a caption side (TrojVQA's).
    """
    out = ["## Verdict", "", *verdict(rows, defenses), "", "## ASR % (CA %) on the test split", ""]
    out += grid(rows, attacks, defenses, asr_ca("attack_success_rate", "clean_accuracy"), trainable,
                "trainable params")
    if any("control_attack_success_rate" in r for r in rows):
        out += ["", "## Controls: ASR % of the control trigger (the same kind, a pattern no model saw) / target "
                "rate % (clean non-target images predicted as the target)", ""]
        out += grid(rows, attacks, defenses,
                    lambda r: f"{percent(r.get('control_attack_success_rate'))} / {percent(r.get('target_rate'))}")
    out += regime_section(rows, attacks)
    for name in transfer_sets:
        task = "the transfer task" if name == "transfer" else name
        out += ["", f"## Cross-task: ASR % (CA %) on {task}, never tuned on", ""]
        out += grid(rows, attacks, defenses, asr_ca(f"{name}_attack_success_rate", f"{name}_clean_accuracy"))
    out += ["", "## Perturbation resistivity (mean cosine, clean vs. noisy image embedding)", ""]
    out += grid(rows, attacks, defenses, lambda r: f"{r['resistivity']:.4f}")
    kinds = next((list(r["layer_resistivity"]) for r in rows if r.get("layer_resistivity")), [])
    for kind in kinds:
        out += ["", f"## Layer-wise perturbation resistivity under {LAYER_KINDS.get(kind, kind)} "
                "(CLS cosine, clean vs. perturbed, block 1 / 2 / ... / last)", ""]
        out += grid(rows, attacks, defenses, lambda r, k=kind: " / ".join(f"{v:.4f}" for v in r["layer_resistivity"][k]))
    shifted = [r for r in rows if r.get("offset_share")]
    if shifted:
        out += ["", "## Offset share: of the prompts' change to the CLS token, the share one offset shared by every "
                "image explains (block 1 / 2 / ... / last; -: an unprompted block)", ""]
        out += grid(shifted, attacks, [d for d in defenses if any(r["defense"] == d for r in shifted)],
                    lambda r: blocks(r["offset_share"]))
    if any(r.get("nuisance_probe_accuracy") is not None for r in rows):  # data with labelled nuisance factors
        out += ["", "## Nuisance-factor probe accuracy % (mean over factors; lower = less class-irrelevant "
                "information)", ""]
        out += grid(rows, attacks, defenses, lambda r: percent(r.get("nuisance_probe_accuracy")))
    out += scan_section(rows, attacks, defenses)
    notes = ["CA: top-1 accuracy on clean test images. ASR: share of triggered test images whose true class "
             "is not the target that are classified as the target; read it against the control ASR and the target "
             "rate, which a bias towards the target raises too."]
    if transfer_sets:
        notes.append("On a cross-task set the target class is added to its classes for ASR; '-': the defense "
                     "cannot name these classes (a linear probe knows only its own task).")
    if any(a in caption_triggered for a in attacks):
        notes.append(f"{', '.join(a for a in attacks if a in caption_triggered)}: the caption trigger is added to "
                     f"every class prompt when ASR is measured; a linear probe has no text side, so it gets only "
                     f"the image trigger.")
    if "clean_model" in defenses:
        notes.append("The clean model row puts each attack's trigger on a model that never saw poison.")
    if any(r.get("implanted") is False for r in rows):
        notes.append(f"Not implanted: the undefended model's test ASR is under {100 * IMPLANTED:.0f}%, so there is "
                     f"no backdoor to remove, and a low ASR in that column is no defense's success.")
    out += ["", " ".join(notes), ""]
    return "\n".join(out)
