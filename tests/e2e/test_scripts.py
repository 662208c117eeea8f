"""Every benchmark (bench/) and study (studies/) runs its --quick path to the end and prints its
main figure, so that none of them rots while the pipeline under it changes.

Most read a finished project: they run in a copy of the smoke matrix after `dvc repro`. The
studies that make their own projects run in an empty folder.
"""
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest

from conftest import REPO, copy_of, environment

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Script:
    args: tuple[str, ...]
    figure: str                 # a regular expression its output must match
    own_project: bool = False   # makes its own projects: runs in an empty folder


SCRIPTS = {
    "bench/defense_cost.py": Script((), r"\| rvpt \| 1 \| \d+ \| [\d.]+ \|"),
    "bench/device_check.py": Script(("--device", "cpu"), r"step rvpt \(batch \d+\): [\d.,]+ ms", own_project=True),
    "bench/eval_throughput.py": Script((), r"\| rvpt \| 64 \| [\d,]+ \|"),
    "bench/evaluate_memory.py": Script((), r"peak_rss_ratio \d+\.\d{3}"),
    # Without the `bench` group it says so in one line, and exits 0.
    "bench/open_clip_ratio.py": Script((), r"ratio \(ours / open_clip\): [\d.]+x|open_clip_train cannot be imported"),
    "bench/pretrain_step.py": Script((), r"\| used rows only \| [\d.]+ \|"),
    "bench/scaling.py": Script((), r"1 \(D = 2\) \| [\d.]+"),
    "bench/startup.py": Script((".",), r"rvpt stage sample +[\d.]+ s \([\d.]+-[\d.]+\) +[\d.]+ s"),
    "bench/step_cost.py": Script((), r"rvpt / finetune step time: [\d.]+"),
    "bench/ui_memory.py": Script((), r"rvpt ui: \d+ processes, peak resident memory [\d.]+ GiB"),
    "studies/scan_detection.py": Script((".",), r"true positives \(flagged, right target\): \d+ of \d+"),
    "studies/seeds.py": Script((), r"\| quick \| badnet \| 1 \(1 x 1\) \|"),
    "studies/text_route.py": Script((), r"\| badnet \| fitted to clean \+ triggered -> target \| [\d.]+ \| [\d.]+ \|"),
    "studies/text_trigger.py": Script((), r"\| badnet \| backdoored \| class prompt \| [\d.]+% \|"),
    "studies/trigger_path.py": Script((), r"\| 2 \| [\d.-]+ \| [\d.-]+ \| [\d.]+ \| [+-][\d.]+ \| [+-][\d.]+ \| - \|"),
    "studies/world_probe.py": Script(("probe", ""), r"\| badnet \| 0\.05 \| 0\.001 \| \d+ \| [\d.]+ / [\d.]+ \|",
                                     own_project=True),
    "studies/oracle.py": Script(("run", "oracle", "--world-seeds", "0", "--defense-seeds", "0"),
                                r"\| rvpt \| [\d.]+ ± [\d.]+ \| [\d.]+ ± [\d.]+ \|", own_project=True),
}
SHARED = {"studies/runner.py", "bench/isolated.py"}  # imported by the scripts, not run


def test_every_script_has_a_quick_run():
    found = {p.relative_to(REPO).as_posix() for folder in ("bench", "studies") for p in (REPO / folder).glob("*.py")}
    assert found - SHARED == set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_quick_run_prints_its_figure(name, request, tmp_path):
    script = SCRIPTS[name]
    cwd = tmp_path if script.own_project else copy_of(request.getfixturevalue("reproduced"), tmp_path)
    done = subprocess.run([sys.executable, str(REPO / name), *script.args, "--quick"], cwd=cwd,
                          env=environment({"PYTHONPATH": str(REPO)}), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{name} exited {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert re.search(script.figure, done.stdout), f"{name} printed no {script.figure!r}:\n{done.stdout[-3000:]}"
