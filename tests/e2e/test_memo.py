"""evaluate and scan remember each model's results: after an edit to one defense only its cells
are scored and scanned again, and what they write is byte for byte what a full run writes. The
same rerun shows `dvc plots diff` overlaying a cell's loss curve across revisions, offline."""
import json
import re
import shutil

from conftest import copy_of, run


def read_back(stdout: str, stage: str) -> int:
    return int(re.search(rf"rvpt stage {stage}: .*\((\d+) read back\)", stdout).group(1))


def outputs(project) -> dict[str, bytes]:
    files = [project / "results" / "summary.json", project / "results" / "summary.md",
             *sorted((project / "results" / "asr").iterdir()), *sorted((project / "results" / "ca").iterdir()),
             *sorted((project / "scans").iterdir())]
    return {str(f.relative_to(project)): f.read_bytes() for f in files}


def test_an_edit_to_one_defense_rescores_only_its_cells(reproduced, tmp_path):
    project = copy_of(reproduced, tmp_path)
    before = outputs(project)

    # Nothing changed: every cell is read back, and the outputs are the same bytes.
    again = run(["rvpt", "stage", "evaluate"], project).stdout
    assert read_back(again, "evaluate") == 6  # the smoke matrix: 2 attacks x 2 defenses, and the clean model x 2
    assert outputs(project) == before

    # One defense's block changes: DVC reruns its tune cells, then scan and evaluate redo only those.
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "before"], project)
    params = (project / "params.yaml").read_text()
    edited = re.sub(r"(\n  rvpt:.*?\n    epochs:) 2", r"\1 3", params, count=1, flags=re.S)
    assert edited != params
    (project / "params.yaml").write_text(edited)
    repro = run(["dvc", "repro"], project).stdout
    assert "--defense rvpt" in repro and "--defense cleanclip" not in repro
    assert read_back(repro, "scan") == 5   # the clean model, 2 backdoored models, 2 cleanclip cells
    assert read_back(repro, "evaluate") == 4   # 2 cleanclip cells, the clean model x 2
    incremental = outputs(project)
    assert incremental != before

    # The rerun cell's curve, as data, from both revisions; the page inlines vega and fetches nothing.
    plotted = json.loads(run(["dvc", "plots", "diff", "HEAD", "--json"], project).stdout)
    family = plotted["data"]["results/curves/tune_rvpt.csv"][0]["content"]["data"]["values"]
    curve = [point for point in family if point["curve"] == "badnet"]
    steps = {rev: sum(1 for point in curve if point["rev"] == rev) for rev in ("HEAD", "workspace")}
    assert steps["workspace"] == steps["HEAD"] * 3 // 2  # 3 epochs against 2
    page = project / "dvc_plots" / "index.html"
    run(["dvc", "plots", "diff", "HEAD", "-o", "dvc_plots"], project)
    assert "vegaEmbed" in page.read_text() and not re.search(r"<script[^>]+src=", page.read_text())

    # A memo entry that cannot be read is recomputed, not trusted.
    entry = project / ".rvpt" / "memo" / "evaluate" / "badnet-cleanclip.json"
    entry.write_text("{not json")
    assert read_back(run(["rvpt", "stage", "evaluate"], project).stdout, "evaluate") == 5
    assert json.loads(entry.read_text())["key"]

    # Without the memo, a full run writes the same bytes as the incremental one.
    shutil.rmtree(project / ".rvpt" / "memo")
    assert read_back(run(["rvpt", "stage", "scan"], project).stdout, "scan") == 0
    assert read_back(run(["rvpt", "stage", "evaluate"], project).stdout, "evaluate") == 0
    assert outputs(project) == incremental

    # The defense seed reaches evaluate and scan only through the defended cells' files: with the
    # cells as they are, another tune.seed reads every result back.
    params = (project / "params.yaml").read_text()
    reseeded = re.sub(r"(\ntune:.*?\n  seed:) 0", r"\1 1", params, count=1, flags=re.S)
    assert reseeded != params
    (project / "params.yaml").write_text(reseeded)
    assert read_back(run(["rvpt", "stage", "scan"], project).stdout, "scan") == 7  # 1 clean, 2 backdoored, 4 cells
    assert read_back(run(["rvpt", "stage", "evaluate"], project).stdout, "evaluate") == 6


def test_an_edit_to_one_attack_trains_only_its_cells(reproduced, tmp_path):
    """A tune stage is one defense over every attack: an edit to one attack reruns every defense's
    stage, and each trains only that attack's cell; the others are read back, the same bytes."""
    project = copy_of(reproduced, tmp_path)

    def cells() -> dict[str, bytes]:
        return {str(f.relative_to(project)): f.read_bytes() for f in (project / "defended").rglob("*") if f.is_file()}

    before = cells()
    params = (project / "params.yaml").read_text()
    edited = re.sub(r"(\n  badclip:\n    kind: badclip\n    rate:) 0.01", r"\1 0.02", params, count=1)
    assert edited != params
    (project / "params.yaml").write_text(edited)
    repro = run(["dvc", "repro"], project).stdout
    for defense in ("rvpt", "cleanclip"):
        assert f"rvpt stage tune: read back defended/{defense}/badnet" in repro
        assert f"rvpt stage tune: wrote defended/{defense}/badclip" in repro
    after = cells()
    assert after.keys() == before.keys()
    assert {k: v for k, v in after.items() if "/badnet/" in k} == {k: v for k, v in before.items() if "/badnet/" in k}
    assert all(after[k] != before[k] for k in after if "/badclip/" in k and k.endswith("tune.json"))

    # An entry stored under other inputs is not trusted: the cell trains again.
    key = project / ".rvpt" / "memo" / "tune" / "badnet-rvpt" / ".memo-key"
    key.write_text("0" * 64)
    again = run(["rvpt", "stage", "tune", "--attack", "badnet", "--defense", "rvpt"], project).stdout
    assert "rvpt stage tune: wrote defended/rvpt/badnet" in again
    assert key.read_text() != "0" * 64
