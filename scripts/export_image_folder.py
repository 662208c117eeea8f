"""Writes a pipeline Parquet table as an ImageFolder tree (root/<class>/<row>.png), e.g. to try
`rvpt defend` on the pipeline's own backdoored models:

    uv run python scripts/export_image_folder.py data/fewshot/train.parquet /tmp/fewshot
    uv run rvpt defend --model models/badnet --data /tmp/fewshot --out /tmp/badnet-defended
"""
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq


def main(table_path: str, root: str) -> None:
    classes = json.loads(Path("data/clean/classes.json").read_text())["classes"]
    table = pq.read_table(table_path, columns=["image", "label"]).to_pydict()
    for row, (image, label) in enumerate(zip(table["image"], table["label"])):
        folder = Path(root) / classes[label].replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{row:06d}.png").write_bytes(image)
    print(f"wrote {len(table['label'])} images in {len(set(table['label']))} class folders under {root}")


if __name__ == "__main__":
    main(*sys.argv[1:])
