"""params.yaml, validated: every number the pipeline uses, and a one-line error for a bad one."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from rvpt.attacks import REGISTRY as ATTACKS
from rvpt.attacks import build as build_attack
from rvpt.defenses import KINDS as DEFENSE_KINDS
from rvpt import models
from rvpt.errors import BadInput

PARAMS_FILE = "params.yaml"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def check_templates(templates: list[str], where: str) -> None:
    for template in templates:
        if "{}" not in template:
            raise ValueError(f"{where}{template!r} has no '{{}}' for the class name")


def class_folders(classes) -> tuple[list[str], list[str]]:
    """Class names and their ImageFolder folder names, from a list (folder = name) or a mapping folder -> name."""
    if isinstance(classes, dict):
        return [str(name) for name in classes.values()], [str(folder) for folder in classes]
    return classes, classes


class Folder(Strict):
    """An ImageFolder tree, root/<split>/<class>/*.jpg; split None: root/<class>/*.jpg."""
    path: str = Field(min_length=1)
    sha256: str | None = Field(default=None, pattern="^[0-9a-fA-F]{64}$")  # required for URLs and archives


class Downstream(Folder):
    train: str = "train"
    val: str | None = None           # None: carve val_per_class images per class out of the train folder
    test: str = "val"                # ImageNet's labelled val set is the test split, as in the paper


class Transfer(Folder):
    split: str | None = None
    classes: list[str] | dict[str, str] = Field(min_length=2)

    @property
    def names(self) -> list[str]:
        return class_folders(self.classes)[0]


class Corpus(Folder):
    # image_folder: captions from model.templates; parquet / webdataset: img2dataset's output shards
    format: Literal["image_folder", "parquet", "webdataset"]
    split: str | None = None


class Files(Strict):
    corpus: Corpus
    downstream: Downstream
    transfer: dict[str, Transfer] = {}


class Data(Strict):
    source: Literal["glyphs", "files"] = "glyphs"
    classes: list[str] | dict[str, str] = Field(min_length=2)
    transfer_classes: list[str] = []
    files: Files | None = None
    image_size: int = Field(ge=8, le=1024)
    corpus_size: int = Field(gt=0)
    train_per_class: int = Field(gt=0)
    val_per_class: int = Field(gt=0)
    test_per_class: int = Field(gt=0)
    defender_pairs: int = Field(ge=0)
    shard_rows: int = Field(gt=0)
    max_offset: int = Field(ge=0)
    max_bad_fraction: float = Field(ge=0, le=1)
    max_image_pixels: int = Field(gt=0)
    preload_max_gib: float = Field(ge=0)
    download_timeout_s: float = Field(gt=0)

    @model_validator(mode="after")
    def _disjoint_tasks(self):
        shared = set(self.class_names) & set(self.transfer_classes)
        if shared:
            raise ValueError(f"transfer_classes must not repeat classes: {sorted(shared)}")
        if self.source == "files" and self.files is None:
            raise ValueError("source files needs data.files (corpus, downstream)")
        if self.source == "files" and self.transfer_classes:
            raise ValueError("transfer_classes belong to the glyph world; files take data.files.transfer")
        for name in (self.files.transfer if self.files else {}):
            if not name.isidentifier():
                raise ValueError(f"files.transfer: {name!r} must be a plain name (letters, digits, _)")
        return self

    @property
    def class_names(self) -> list[str]:
        return class_folders(self.classes)[0]

    @property
    def class_folders(self) -> list[str]:
        return class_folders(self.classes)[1]

    def transfer_sets(self) -> dict[str, list[str]]:
        """Each cross-task test set's class names, by name (downstream/<name>_test.parquet)."""
        if self.source == "files":
            return {name: spec.names for name, spec in self.files.transfer.items()}
        return {"transfer": self.transfer_classes} if self.transfer_classes else {}


class Model(Strict):
    name: str | None = None             # an open_clip model name; its config replaces `config`
    pretrained: str | None = None       # with name: an open_clip tag (from the local HF cache) or a local file/folder
    config: dict[str, Any] | None = None
    templates: list[str] = Field(min_length=1)
    _depth: int | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _valid(self):
        check_templates(self.templates, "template ")
        if (self.name is None) == (self.config is None):
            raise ValueError("give exactly one of model.name (an open_clip model) and model.config")
        if self.pretrained is not None and self.name is None:
            raise ValueError("model.pretrained needs model.name")
        if self.name is not None:
            named = models.named_config(self.name)
            if named is None:
                raise ValueError(f"name: {self.name!r} is not an open_clip model (see open_clip.list_models())")
            self.config = named
        self._depth = models.vision_depth(models.check_config(self.config))
        return self

    @property
    def vision_depth(self) -> int | None:
        return self._depth


class ClipTraining(Strict):
    steps: int = Field(gt=0)
    batch_size: int = Field(gt=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    warmup: int = Field(ge=0)


class Pretrain(Strict):
    init: Literal["clean", "scratch"]
    checkpoint_every: int = Field(ge=0)
    workers: int = Field(ge=0, le=64)
    clean: ClipTraining
    poisoned: ClipTraining


class PatchOptimisation(Strict):
    steps: int = Field(gt=0)
    batch_size: int = Field(gt=1)
    lr: float = Field(gt=0)
    images: int = Field(gt=0)


class Attack(Strict):
    kind: str
    target: str
    rate: float = Field(gt=0, le=1)
    options: dict[str, Any] = {}
    optimise: PatchOptimisation | None = None

    @model_validator(mode="after")
    def _known_kind(self):
        if self.kind not in ATTACKS:
            raise ValueError(f"unknown attack kind {self.kind!r}; known: {', '.join(sorted(ATTACKS))}")
        if (self.kind == "badclip") != (self.optimise is not None):
            raise ValueError("`optimise` is required for kind badclip and allowed only there")
        return self


class NoDefense(Strict):
    kind: Literal["none"]


class Training(Strict):
    epochs: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)


class SGDTraining(Training):
    momentum: float = Field(ge=0, lt=1)


class PromptDefense(SGDTraining):
    kind: Literal["prompt"]
    alpha: float = Field(ge=0)
    tokens: int = Field(ge=0)
    first_block: int = Field(ge=0)
    init_std: float = Field(gt=0)
    margin: float = Field(ge=-1, le=1)


class LinearProbeDefense(SGDTraining):
    kind: Literal["linear_probe"]


class FinetuneDefense(Training):
    kind: Literal["finetune"]


class CleanCLIPDefense(Training):
    kind: Literal["cleanclip"]
    pairs: Literal["pairs", "fewshot"]
    budget: int = Field(gt=1)
    batch_size: int = Field(gt=1)
    ssl_weight: float = Field(ge=0)


class CoOpDefense(SGDTraining):
    kind: Literal["coop"]
    context: int = Field(gt=0)
    init_std: float = Field(gt=0)


Defense = Annotated[Union[NoDefense, PromptDefense, LinearProbeDefense, FinetuneDefense, CleanCLIPDefense,
                          CoOpDefense], Field(discriminator="kind")]


class Tune(Strict):
    checkpoint_every: int = Field(ge=0)


class Compute(Strict):
    device: Literal["auto", "cpu", "cuda"]
    precision: Literal["auto", "fp32", "bf16"]
    compile: bool
    processes: int = Field(ge=1, le=1024)

    @field_validator("device")
    @classmethod
    def _available(cls, device: str) -> str:
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("cuda requested, but torch sees no CUDA device (use auto or cpu)")
        return device


class Sample(Strict):
    shots: int = Field(gt=0)


class Evaluate(Strict):
    batch_size: int = Field(gt=0)
    perturbation: float = Field(gt=0, le=1)
    probe_steps: int = Field(gt=0)


class Run(Strict):
    attacks: list[str] = Field(min_length=1)
    defenses: list[str] = Field(min_length=1)


class Tracking(Strict):
    experiment: str = Field(min_length=1)
    timeout_s: float = Field(gt=0, le=600)


class Defend(Strict):
    defense: str
    holdout: float = Field(gt=0, lt=1)
    templates: list[str] = Field(min_length=1)
    download_timeout_s: float = Field(gt=0)


class Params(Strict):
    seed: int = Field(ge=0, lt=2 ** 32)  # numpy and torch both take it as it is
    threads: int = Field(ge=1, le=256)
    data: Data
    model: Model
    pretrain: Pretrain
    attacks: dict[str, Attack]
    defenses: dict[str, Defense]
    tune: Tune
    compute: Compute
    sample: Sample
    evaluate: Evaluate
    run: Run
    tracking: Tracking
    defend: Defend

    @model_validator(mode="after")
    def _consistent(self):
        model_size = (self.model.config.get("vision_cfg") or {}).get("image_size")
        if model_size is not None and model_size != self.data.image_size:
            raise ValueError(f"data.image_size: {self.data.image_size} differs from the model's input size "
                             f"{model_size}")
        for name, attack in self.attacks.items():
            if attack.target not in self.data.class_names:
                raise ValueError(f"attacks.{name}.target: {attack.target!r} is not one of data.classes")
            try:  # building a trigger is cheap, and it is the one place that knows its options
                build_attack(attack.kind, self.data.image_size, **attack.options)
            except (TypeError, ValueError) as error:
                raise ValueError(f"attacks.{name}.options: {error}") from None
        for name in self.run.attacks:
            if name not in self.attacks:
                raise ValueError(f"run.attacks: {name!r} is not defined under attacks")
        for name in self.run.defenses:
            if name not in self.defenses:
                raise ValueError(f"run.defenses: {name!r} is not defined under defenses")
        if self.defend.defense not in self.defenses:
            raise ValueError(f"defend.defense: {self.defend.defense!r} is not defined under defenses")
        check_templates(self.defend.templates, "defend.templates: ")
        depth = self.model.vision_depth
        for name, defense in self.defenses.items():
            if defense.kind == "prompt" and depth is None:
                raise ValueError(f"defenses.{name}: prompts need a ViT image tower (model.config.vision_cfg)")
            if defense.kind == "prompt" and defense.first_block >= depth:
                raise ValueError(f"defenses.{name}.first_block: {defense.first_block} must be below the "
                                 f"{depth} vision blocks")
            if defense.kind == "cleanclip" and defense.pairs == "pairs" and defense.budget > self.data.defender_pairs:
                raise ValueError(f"defenses.{name}.budget: {defense.budget} exceeds data.defender_pairs "
                                 f"({self.data.defender_pairs})")
        return self


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    loc = list(first["loc"])
    if loc[:1] == ["defenses"] and len(loc) > 2 and loc[2] in DEFENSE_KINDS:
        del loc[2]  # the union's tag, which pydantic puts in the path
    where = ".".join(str(part) for part in loc)
    message = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    shown = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
    return f"{where}: {message}{shown}" if where else message


def validate(raw: dict, source: str = PARAMS_FILE, flags: dict[str, str] | None = None) -> Params:
    """Validates; an error in a key set from the command line names the option, not the file."""
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        described = _describe(error)
        key = described.split(":", 1)[0]
        if flags and key in flags:
            raise BadInput(f"option {flags[key]} ({described})") from None
        raise BadInput(f"{source}: {described}") from None


def load(path: str | Path = PARAMS_FILE, overrides: dict[str, tuple[str, Any]] | None = None) -> Params:
    """Reads and validates params.yaml.

    `overrides` maps a dotted key to (option flag, value) for values given on the command line;
    a value of None means the option was not given.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise BadInput(f"{path}: not found (run from the repository root)") from None
    except yaml.YAMLError as error:
        raise BadInput(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise BadInput(f"{path}: expected a mapping at the top level")
    given = {key: flag_value for key, flag_value in (overrides or {}).items() if flag_value[1] is not None}
    for key, (_, value) in given.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break  # the file's own value is not a mapping; validation names it
        else:
            node[leaf] = value
    return validate(raw, str(path), {key: flag for key, (flag, _) in given.items()})
