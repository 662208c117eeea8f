"""params.yaml, validated: every number the pipeline uses, and a one-line error for a bad one."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from pipeline import params_file
from pipeline.params_attacks import Attack
from pipeline.params_data import MAX_TEXT, Data, Strict, check_templates
from pipeline.params_defenses import KINDS as DEFENSE_KINDS
from pipeline.params_defenses import MAX_BATCH, MAX_LR, MAX_STEPS, MAX_WEIGHT, Defense
from pipeline.params_scan import Scan
from pipeline.paths import check_name
from pipeline.warm import MAX_IDLE_S
from rvpt.attacks import build as build_attack
from rvpt import model_config
from rvpt.errors import BadInput, shown

PARAMS_FILE = "params.yaml"
MAX_NAMES = 100       # attacks, defenses or transfer sets in one file


class Model(Strict):
    name: str | None = Field(default=None, max_length=MAX_TEXT)  # an open_clip model name; replaces `config`
    pretrained: str | None = Field(default=None, max_length=4096)  # with name: an open_clip tag or a local file/folder
    config: dict[str, Any] | None = None
    templates: list[str] = Field(min_length=1, max_length=1000)
    _depth: int | None = PrivateAttr(default=None)
    _patches: int | None = PrivateAttr(default=None)
    _context: int = PrivateAttr(default=0)

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
        self._depth = model_config.vision_depth(self.config)
        self._patches = model_config.patch_tokens(self.config)
        self._context = model_config.context_length(self.config)
        return self

    @property
    def vision_depth(self) -> int | None:
        return self._depth

    @property
    def patch_tokens(self) -> int | None:
        """Patch tokens of a ViT image tower (the grid), which bounds how many prompts make sense."""
        return self._patches

    @property
    def context_length(self) -> int:
        return self._context


class ClipTraining(Strict):
    steps: int = Field(gt=0, le=MAX_STEPS)
    batch_size: int = Field(gt=1, le=MAX_BATCH)
    lr: float = Field(gt=0, le=MAX_LR)
    weight_decay: float = Field(ge=0, le=MAX_WEIGHT)
    warmup: int = Field(ge=0, le=MAX_STEPS)


class Poisoning(ClipTraining):
    frozen: Literal["none", "image", "text"]    # a tower the victim's fine-tune keeps fixed


class Pretrain(Strict):
    init: Literal["clean", "scratch"]
    checkpoint_every: int = Field(ge=0, le=MAX_STEPS)
    clean: ClipTraining
    poisoned: Poisoning


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
    warm_s: float = Field(ge=0, le=MAX_IDLE_S)  # pipeline/warm.py


class Defend(Strict):
    defense: str = Field(max_length=MAX_TEXT)
    holdout: float = Field(gt=0, lt=1)
    templates: list[str] = Field(min_length=1, max_length=1000)
    download_timeout_s: float = Field(gt=0, le=86_400)
    scan: bool  # trigger inversion before and after the defense


class Params(Strict):
    seed: int = Field(ge=0, lt=2 ** 32)  # numpy and torch both take it as it is
    threads: int = Field(ge=1, le=256)
    data: Data
    model: Model
    pretrain: Pretrain
    target: str = Field(max_length=MAX_TEXT)
    attacks: dict[str, Attack] = Field(max_length=MAX_NAMES)
    defenses: dict[str, Defense] = Field(max_length=MAX_NAMES)
    tune: Tune
    compute: Compute
    sample: Sample
    evaluate: Evaluate
    scan: Scan
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
        problem = self.mismatch(self.run.attacks, [*self.run.defenses, self.defend.defense])
        if problem:
            raise ValueError(problem)
        return self

    def require(self, attacks: list[str] = (), defenses: list[str] = (), source: str = PARAMS_FILE) -> None:
        """The cross-checks for cells chosen on the command line outside `run`."""
        problem = self.mismatch(attacks, defenses)
        if problem:
            raise BadInput(f"{source}: {problem}")

    def mismatch(self, attacks, defenses) -> str | None:
        """What makes the chosen attacks and defenses disagree with the rest of the file, if anything.

        Only chosen blocks are held to other sections (classes, pairs, the model), so a block that
        does not run never blocks a run; every block is still type-checked.
        """
        for name in dict.fromkeys(attacks):
            attack = self.attacks[name]
            if attack.target not in self.data.class_names:
                key = "target" if attack._inherited else f"attacks.{name}.target"
                return f"{key}: {shown(attack.target)} is not one of data.classes"
        for name in dict.fromkeys(defenses):
            defense = self.defenses[name]
            problem = self._fits_model(f"defenses.{name}", defense)
            if problem:
                return problem
            if defense.kind == "cleanclip" and defense.pairs == "pairs" and defense.budget > self.data.defender_pairs:
                return f"defenses.{name}.budget: {defense.budget} exceeds data.defender_pairs ({self.data.defender_pairs})"
        return None

    def _fits_model(self, where: str, defense) -> str | None:
        """Sizes that only make sense relative to the model: prompt depth and count, CoOp's context."""
        depth, patches = self.model.vision_depth, self.model.patch_tokens
        if defense.kind in ("prompt", "finetune"):
            if depth is None and (defense.kind == "prompt" or defense.alpha > 0):
                return f"{where}: prompts and L_FR need a ViT image tower (model.config.vision_cfg)"
            if depth is not None and defense.first_block >= depth:
                return f"{where}.first_block: {defense.first_block} must be below the {depth} vision blocks"
        if defense.kind == "prompt":
            most = PROMPTS_PER_TOKEN * (patches + 1)
            if defense.tokens > most:
                return (f"{where}.tokens: {defense.tokens} is over {most}, {PROMPTS_PER_TOKEN} x the "
                        f"model's {patches + 1} image tokens")
        if defense.kind == "coop":
            most = self.model.context_length - 3  # start, at least one class-name token, end
            if defense.context > most:
                return (f"{where}.context: {defense.context} leaves no room for the class name in the "
                        f"text context of {self.model.context_length} tokens (at most {most})")
        return None


PROMPTS_PER_TOKEN = 4  # the paper uses b = 50 prompts for 50 image tokens; more than 4x is no setting anyone needs


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    loc = list(first["loc"])
    if loc[:1] == ["defenses"] and len(loc) > 2 and loc[2] in DEFENSE_KINDS:
        del loc[2]  # the union's tag, which pydantic puts in the path
    where = ".".join(shown(part) if not isinstance(part, str) else part[:60] for part in loc)
    message = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    given = "" if isinstance(got, dict) or got is None else f" (got {shown(got)})"
    return f"{where}: {message}{given}" if where else message


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
    """Reads and validates params.yaml. `overrides` maps a dotted key to (option flag, value) for
    values given on the command line; a value of None means the option was not given."""
    path = Path(path)
    raw = params_file.read(path)
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
