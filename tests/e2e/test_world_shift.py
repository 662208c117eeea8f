"""data.shift renders the downstream splits with their own clutter, and nothing else."""
import hashlib

import yaml
from conftest import run, smoke_params


def download(root, **data):
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(smoke_params(data={"noise": 0.1, **data})))
    run(["rvpt", "stage", "download"], root)
    out = root / "data" / "clean"
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_domain_shift_changes_the_downstream_splits_and_nothing_else(tmp_path):
    plain = download(tmp_path / "plain")
    shifted = download(tmp_path / "shifted", shift={"noise": 0.0, "distractors": 0})
    restated = download(tmp_path / "restated", shift={"noise": 0.1})

    assert restated == plain
    changed = {name for name in plain if shifted[name] != plain[name]}
    assert changed == {"downstream/train.parquet", "downstream/val.parquet", "downstream/test.parquet",
                       "downstream/transfer_test.parquet"}
