"""`rvpt profile ...`: write params.yaml for a setting and your data; then `dvc repro` runs it."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.commands.run import PARAMS, execute

SMALL = typer.Option(False, "--small", help="Every size shrunk to a run of minutes on a CPU (profiles/small.yaml): "
                                            "the same stages and code path, to check the install, the data and "
                                            "the model before the real run.")

profile_app = typer.Typer(help="Write params.yaml for a setting and your data; then `dvc repro` runs it.",
                          rich_markup_mode="markdown",
                          no_args_is_help=True)
@profile_app.command()
def paper(imagenet: Path = typer.Option(..., help="ImageNet as ImageFolder: train/WNID/\\*, val/WNID/\\*."),
          imagenet_classes: Path = typer.Option(..., help="wnid -> name lines (LOC_synset_mapping.txt)."),
          cc3m: Path = typer.Option(..., help="img2dataset webdataset shards of CC3M (*.tar)."),
          caltech101: Path = typer.Option(..., help="Caltech101's 101_ObjectCategories folder."),
          oxford_pets: Path = typer.Option(..., help="Oxford-IIIT Pets exported as BREED/\\*.jpg folders."),
          small: bool = SMALL, params: Path = PARAMS):
    """The paper's setting (RVPT, Table 1) on your copies of its datasets."""
    from pipeline.config import profiles as command

    execute("profile", params, [], lambda p: command.write(
        "paper", params, command.paper(imagenet, imagenet_classes, cc3m, caltech101, oxford_pets), small),
        label="rvpt profile", tracked=False, validate=False)


@profile_app.command()
def imagefolder(root: Path = typer.Option(..., help="Your data: root/train/CLASS/\\*, root/test/CLASS/\\* "
                                                    "(and root/val/CLASS/\\* if you have one)."),
                corpus: Optional[Path] = typer.Option(None, help="A separate pretraining corpus with the same class "
                                                                 "folders (default: root/train, minus the "
                                                                 "downstream images)."),
                model: Optional[str] = typer.Option(None, help="An open_clip model name (default: params.yaml's "
                                                               "model)."),
                pretrained: Optional[str] = typer.Option(None, help="With --model: an open_clip tag or a local "
                                                                    "weights file (default: train from scratch)."),
                target: Optional[str] = typer.Option(None, help="The attacks' target class (default: the last "
                                                                "class folder)."),
                attacks: Optional[str] = typer.Option(None, help="Comma-separated attacks to run (default: "
                                                                 "run.attacks)."),
                defenses: Optional[str] = typer.Option(None, help="Comma-separated defenses to run (default: "
                                                                  "run.defenses)."),
                small: bool = SMALL, params: Path = PARAMS):
    """Your own ImageFolder data, with sizes, prompts and triggers fitted to it and to the model."""
    from pipeline.config import profiles as command
    from pipeline.config import imagefolder as own

    def names(value: Optional[str]) -> Optional[list[str]]:
        return [name.strip() for name in value.split(",") if name.strip()] if value else None

    execute("profile", params, [], lambda p: command.write(
        "imagefolder", params, own.fill(root, corpus, model, pretrained, target, names(attacks), names(defenses)), small),
        label="rvpt profile", tracked=False, validate=False)
