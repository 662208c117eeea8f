"""studies/seeds.py: experiments named per (data seed, defense seed), and their mean ± std table."""
import json
import statistics
import subprocess
import sys

from conftest import REPO, copy_of, environment, run

STUDY = [sys.executable, str(REPO / "studies" / "seeds.py")]


def test_study_queues_one_experiment_per_seed_pair_and_tabulates_finished_ones(reproduced, tmp_path):
    root = copy_of(reproduced, tmp_path)
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "reproduced"], root)
    run([*STUDY, "queue", "smoke", "--data-seeds", "0", "--defense-seeds", "0", "1", "-S", "sample.shots=4"], root)
    status = run(["dvc", "queue", "status"], root).stdout
    assert "smoke-s0-t0" in status and "smoke-s0-t1" in status
    run(["dvc", "queue", "remove", "--all"], root)

    rvpt = {"ca": [], "asr": []}
    for defense_seed in (0, 1):  # run in the workspace: the same experiments, without a queue worker
        run(["dvc", "exp", "run", "-n", f"smoke-s0-t{defense_seed}", "-S", f"tune.seed={defense_seed}",
             "-S", "run.attacks=[badnet]", "-S", "run.defenses=[none,rvpt]"], root)
        for kind, found in rvpt.items():
            found.append(json.loads((root / "results" / kind / "rvpt.json").read_text())["badnet"])
    out = subprocess.run([*STUDY, "table", "smoke"], cwd=root, env=environment(), capture_output=True, text=True,
                         check=True).stdout
    rows = {line.split(" | ")[1]: line for line in out.splitlines() if line.startswith("| smoke |")}
    assert sorted(rows) == ["badnet"]
    assert all(" | 2 (1 x 2) | " in row for row in rows.values())
    ca, asr = (json.loads((root / "results" / kind / "none.json").read_text())["badnet"] for kind in ("ca", "asr"))
    # The undefended model does not depend on the defense seed: its spread is zero.
    assert f"{100 * ca:.1f} ± 0.0 / {100 * asr:.1f} ± 0.0" in rows["badnet"]
    assert "±" in rows["badnet"].split(" | ")[-1]   # RVPT's validation CA, from the MLflow tune runs
    # One data seed: RVPT's own (defense-seed) std is the whole std of its two runs.
    assert rows["badnet"].split(" | ")[-2] == f"{100 * statistics.stdev(rvpt['asr']):.1f}"

    axes = subprocess.run([*STUDY, "axes", "smoke"], cwd=root, env=environment(), capture_output=True, text=True,
                          check=True).stdout
    [row] = [line for line in axes.splitlines() if line.startswith("| smoke |")]
    assert row.split(" | ")[1:3] == ["2", f"{100 * ca:.1f}"]
    assert row.split(" | ")[4:] == [f"{100 * statistics.mean(rvpt['ca']):.1f}",
                                    f"{100 * statistics.mean(rvpt['asr']):.1f} |"]
    per_seed = subprocess.run([*STUDY, "table", "smoke", "--per-data-seed"], cwd=root, env=environment(),
                              capture_output=True, text=True, check=True).stdout
    assert [line.split(" | ")[0] for line in per_seed.splitlines() if " | badnet | " in line] == ["| smoke s0"]
