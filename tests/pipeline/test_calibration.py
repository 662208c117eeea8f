"""The calibration table: the paper's cells, their categories, and `rvpt calibrate`."""
import json

import pytest

from pipeline.report import calibration, summary
from pipeline.report.calibration import BASELINE, REPELLING, Comparison, PaperCell, category
from conftest import call, one_error_line


@pytest.mark.parametrize("asr, expected", [(0.0, "removed"), (0.1499, "removed"), (0.15, "partial"),
                                           (0.6001, "partial"), (0.75, "partial"), (0.7501, "survives"),
                                           (1.0, "survives"), (None, None)])
def test_categories_follow_the_thresholds(asr, expected):
    assert category(asr) == expected


def test_the_paper_cells_hold_table_1_and_table_8_with_their_categories():
    cells = {(c.table, c.defense, c.attack): c for c in calibration.paper_cells()}
    assert cells["1", "none", "badnet"].asr == pytest.approx(0.8269)
    assert category(cells["1", "none", "issba"].asr) == "partial"          # 60.01%
    assert category(cells["1", "cleanclip", "blended"].asr) == "removed"   # 0.25%
    assert category(cells["1", "cleanclip", "badnet"].asr) == "partial"    # 23.79%
    assert category(cells["1", "linear_probe", "badclip"].asr) == "survives"
    assert ("1", "linear_probe", "trojvqa") not in cells                  # "-" in the paper
    assert category(cells["8", "vpt", "badclip"].asr) == "survives"
    assert category(cells["8", "finetune", "badclip"].asr) == "removed"
    roles = [c.role for c in cells.values()]
    assert roles.count(BASELINE) == 19 and roles.count(REPELLING) == 7
    assert all(c.role == REPELLING for c in cells.values() if c.defense in ("rvpt", "finetune_fr"))


def test_comparison_counts_matches_per_role_and_skips_cells_not_run():
    cells = [PaperCell("1", "none", "badnet", 0.83, 0.63, BASELINE),
             PaperCell("1", "linear_probe", "badnet", 0.03, 0.60, BASELINE),
             PaperCell("1", "cleanclip", "badnet", 0.24, 0.58, BASELINE),
             PaperCell("1", "rvpt", "badnet", 0.0005, 0.63, REPELLING)]
    rows = [{"defense": "none", "attack": "badnet", "attack_success_rate": 0.95, "clean_accuracy": 0.7},
            {"defense": "linear_probe", "attack": "badnet", "attack_success_rate": 0.80, "clean_accuracy": 0.7},
            {"defense": "rvpt", "attack": "badnet", "attack_success_rate": 0.01, "clean_accuracy": 0.7}]
    found = calibration.compare(rows, cells)
    assert [c.matches for c in found] == [True, False, None, True]
    assert calibration.agreement(found, BASELINE) == (1, 2, 3)
    assert calibration.agreement(found, REPELLING) == (1, 1, 1)
    text = calibration.markdown(found)
    assert "| 1 | linear_probe | badnet | baseline | 3.00 (60.00) | removed | 80.00 (70.00) | survives | **no** |" in text
    assert "not run" in text
    assert "1 of 2 run cells match (50%); 1 of 3 not run or not implanted" in text


def test_calibrate_command_prints_the_table_from_a_summary(tmp_path):
    rows = [{"defense": "none", "attack": a, "attack_success_rate": 0.99, "clean_accuracy": 0.7}
            for a in ("badnet", "blended", "wanet", "trojvqa", "badclip")]
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "summary.json").write_text(json.dumps({"rows": rows}))
    code, out, err = call(tmp_path, "calibrate")
    assert code == 0, err
    assert Comparison(PaperCell("1", "none", "issba", 0.6, None, BASELINE), None, None).ours is None
    assert "Baseline cells (the calibration targets): 5 of 5 run cells match (100%); 14 of 19 not run or not implanted." in out


def test_calibrate_without_a_summary_says_which_stage_makes_it(tmp_path):
    code, out, err = call(tmp_path, "calibrate")
    assert code == 2
    assert "rvpt stage evaluate" in one_error_line(err)
    (tmp_path / "bad.json").write_text(json.dumps([1, 2]))
    code, out, err = call(tmp_path, "calibrate", "--summary", "bad.json")
    assert code == 2 and "bad.json" in one_error_line(err)


def test_an_attack_that_did_not_implant_is_never_a_match_nor_a_defenses_success():
    cells = [PaperCell("1", "none", "issba", 0.60, None, BASELINE),
             PaperCell("1", "linear_probe", "issba", 0.02, None, BASELINE)]
    rows = [{"defense": defense, "attack": "issba", "attack_success_rate": asr, "clean_accuracy": 0.7,
             "implanted": False, "resistivity": 0.9, "trainable_params": 0, "trainable_fraction": 0.0}
            for defense, asr in (("none", 0.15), ("linear_probe", 0.01))]
    found = calibration.compare(rows, cells)
    assert [c.matches for c in found] == [None, None]  # the probe's 1% would otherwise read as "removed"
    assert "| not implanted | - |" in calibration.markdown(found)
    table = summary.markdown(rows, ["issba"], ["none", "linear_probe"], transfer_sets=())
    assert "| defense | issba (not implanted) |" in table and "Not implanted: the undefended model" in table
