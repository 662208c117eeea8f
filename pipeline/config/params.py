"""params.yaml, validated: every number the pipeline uses, and a one-line error for a bad one."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from pipeline.config import params_file
from pipeline.config.data import MAX_TEXT, Data, Strict, check_templates
from pipeline.config.attacks import Attack
from pipeline.config.sections import culprit, describe
from pipeline.store.paths import check_name
from rvpt import model_config
from rvpt.attacks import build as build_attack
from rvpt.model_config import ModelShape
from rvpt.settings import MAX_BATCH, MAX_STEPS
from rvpt.errors import BadInput, shown

PARAMS_FILE = "params.yaml"
MAX_NAMES = 100       # attacks, defenses or transfer sets in one file


class Model(Strict):
    name: str | None = Field(default=None, max_length=MAX_TEXT)  # an open_clip model name; replaces `config`
    pretrained: str | None = Field(default=None, max_length=4096)  # with name: an open_clip tag or a local file/folder
    config: dict[str, Any] | None = None
    templates: list[str] = Field(min_length=1, max_length=1000)
    _shape: ModelShape | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _valid(self):
        check_templates(self.templates, "template ")
        if (self.name is None) == (self.config is None):
            raise ValueError("give exactly one of model.name (an open_clip model) and model.config")
        if self.pretrained is not None and self.name is None:
            raise ValueError("model.pretrained needs model.name")
        if self.name is not None:
            from rvpt.models import named_config  # open_clip's registry: only a named model pays its import

            named = named_config(self.name)
            if named is None:
                raise ValueError(f"name: {shown(self.name)} is not an open_clip model (see open_clip.list_models())")
            self.config = named
        # Read from the dict: whether it builds is checked where a stage builds it (models.from_config).
        model_config.check_sizes(self.config)
        self._shape = ModelShape.of(self.config)
        return self

    @property
    def shape(self) -> ModelShape:
        """The sizes a defense's settings are checked against (its `fits`)."""
        return self._shape


# Sections validated where they are used (pipeline/config/training.py, defenses.py, scanner.py): a
# stage that never trains CLIP, runs a defense or scans does not depend on that code.
Block = dict[str, Any]


class Pretrain(Strict):
    init: Literal["clean", "scratch"]
    checkpoint_every: int = Field(ge=0, le=MAX_STEPS)
    clean: Block
    poisoned: Block


class Tune(Strict):
    checkpoint_every: int = Field(ge=0, le=MAX_STEPS)
    seed: int = Field(ge=0, lt=2 ** 32)  # the defense's own: initialisation, batch order, augmentation


class Compute(Strict):
    device: Literal["auto", "cpu", "cuda"]
    precision: Literal["auto", "fp32", "bf16"]
    compile: bool
    processes: int = Field(ge=1, le=1024)
    workers: int = Field(ge=0, le=64)

    @field_validator("device")
    @classmethod
    def _available(cls, device: str) -> str:
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("cuda requested, but torch sees no CUDA device (use auto or cpu)")
        return device


class Sample(Strict):
    shots: int = Field(gt=0, le=100_000)


class LayerPerturbations(Strict):
    noise_std: float = Field(gt=0, le=1)
    blur_kernel: int = Field(ge=3, le=31)
    brightness: float = Field(ge=0, lt=1)
    hue: float = Field(ge=0, le=0.5)

    @model_validator(mode="after")
    def _odd(self):
        if self.blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel: {self.blur_kernel} must be odd")
        return self


class Evaluate(Strict):
    batch_size: int = Field(gt=0, le=MAX_BATCH)
    perturbation: float = Field(gt=0, le=1)
    layer_perturbations: LayerPerturbations
    layer_images: int = Field(gt=0, le=10 ** 9)
    probe_steps: int = Field(gt=0, le=10 ** 6)


class Run(Strict):
    attacks: list[str] = Field(min_length=1, max_length=MAX_NAMES)
    defenses: list[str] = Field(min_length=1, max_length=MAX_NAMES)

    @field_validator("attacks", "defenses")
    @classmethod
    def _once_each(cls, names: list[str], info) -> list[str]:
        for name in names:  # these become DVC stage names, shell commands and folders
            check_name(name, info.field_name[:-1])
        repeated = next((name for i, name in enumerate(names) if name in names[:i]), None)
        if repeated is not None:
            raise ValueError(f"{shown(repeated)} is listed twice")
        return names


class Tracking(Strict):
    experiment: str = Field(min_length=1, max_length=MAX_TEXT)
    timeout_s: float = Field(gt=0, le=600)


class Startup(Strict):
    warm_s: float = Field(ge=0, le=86_400)  # seconds a warm server waits idle (pipeline/commands/warm.py)


class Defend(Strict):
    defense: str = Field(max_length=MAX_TEXT)
    holdout: float = Field(gt=0, lt=1)
    templates: list[str] = Field(min_length=1, max_length=1000)
    download_timeout_s: float = Field(gt=0, le=86_400)
    scan: bool  # trigger inversion before and after the defense


class Params(Strict):
    _source: str = PrivateAttr(default=PARAMS_FILE)  # the file it was read from, for messages
    _sections: dict = PrivateAttr(default_factory=dict)  # blocks validated where they are used
    _flags: dict = PrivateAttr(default_factory=dict)     # key -> the command-line option that set it
    seed: int = Field(ge=0, lt=2 ** 32)  # numpy and torch both take it as it is
    threads: int = Field(ge=1, le=256)
    data: Data
    model: Model
    pretrain: Pretrain
    target: str = Field(max_length=MAX_TEXT)
    attacks: dict[str, Attack] = Field(max_length=MAX_NAMES)
    defenses: dict[str, Block] = Field(max_length=MAX_NAMES)
    tune: Tune
    compute: Compute
    sample: Sample
    evaluate: Evaluate
    scan: Block
    run: Run
    tracking: Tracking
    startup: Startup
    defend: Defend

    @field_validator("attacks", "defenses", mode="before")
    @classmethod
    def _plain_names(cls, value, info):
        if isinstance(value, dict):  # names become folders: checked before anything else
            for name in value:
                check_name(name, info.field_name[:-1])
        return value

    @model_validator(mode="after")
    def _consistent(self):
        model_size = (self.model.config.get("vision_cfg") or {}).get("image_size")
        if model_size is not None and model_size != self.data.image_size:
            raise ValueError(f"data.image_size: {self.data.image_size} differs from the model's input size "
                             f"{shown(model_size)}")
        for name, attack in self.attacks.items():
            if attack.target is None:
                attack.target, attack._inherited = self.target, True
            try:  # building a trigger is cheap, and it is the one place that knows its options
                build_attack(attack.kind, self.data.image_size, **attack.options)
            except (TypeError, ValueError) as error:
                raise ValueError(f"attacks.{name}.options: {error}") from None
        for key, names, known in (("attacks", self.run.attacks, self.attacks),
                                  ("defenses", self.run.defenses, self.defenses)):
            for name in names:
                if name not in known:
                    raise ValueError(f"run.{key}: {shown(name)} is not defined under {key}")
        if self.defend.defense not in self.defenses:
            raise ValueError(f"defend.defense: {shown(self.defend.defense)} is not defined under defenses")
        check_templates(self.defend.templates, "defend.templates: ")
        problem = self.mismatch(self.run.attacks)
        if problem:
            raise ValueError(problem)
        return self

    def select(self, section: str, name: str | None, flag: str) -> list[str]:
        """The cells a command runs: `run`'s list for the section (attacks or defenses), or the one
        `name` given with `flag`, an attack held to the same cross-checks as `run`'s."""
        if name is None:
            return getattr(self.run, section)
        if name not in getattr(self, section):
            raise BadInput(f"{flag}: {name!r} is not defined in {self._source} (known: "
                           f"{', '.join(getattr(self, section))})")
        problem = self.mismatch([name] if section == "attacks" else [])
        if problem:
            raise BadInput(culprit(problem, self._source, self._flags))
        return [name]

    def mismatch(self, attacks) -> str | None:
        """What makes the chosen attacks disagree with the rest of the file (a target that is no
        class), if anything. Only chosen blocks are held to other sections, so a block that does
        not run never blocks a run; every block is still type-checked."""
        for name in dict.fromkeys(attacks):
            attack = self.attacks[name]
            if attack.target not in self.data.class_names:
                key = "target" if attack._inherited else f"attacks.{name}.target"
                return f"{key}: {shown(attack.target)} is not one of data.classes"
        return None


def validate(raw: dict, source: str = PARAMS_FILE, flags: dict[str, str] | None = None) -> Params:
    """Validates; an error in a key set from the command line names the option, not the file."""
    try:
        params = Params.model_validate(raw)
    except ValidationError as error:
        raise BadInput(culprit(describe(error), source, flags)) from None
    params._source, params._flags = source, flags or {}
    return params


def load(path: str | Path = PARAMS_FILE, overrides: dict[str, tuple[str, Any]] | None = None) -> Params:
    """Reads and validates params.yaml. `overrides` maps a dotted key to (option, value) for values
    given on the command line (-S KEY=VALUE)."""
    path = Path(path)
    raw = params_file.read(path)
    given = overrides or {}
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
