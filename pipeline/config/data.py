"""params.yaml's `data` section, and the checks on text that becomes captions or folder names.

Class names are free text where they only fill caption templates, but they must be unique
(the tokenizer folds case, so `Cat` and `cat` would be one class) and printable. Where a name
is also a folder (an ImageFolder class, a split), it must be one plain path component.
"""
from __future__ import annotations

import string
from pathlib import PurePath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rvpt.errors import shown
from rvpt.world import GLYPHS

MAX_CLASSES = 100_000
MAX_TEXT = 200        # characters of a class name or a template
MAX_COUNT = 10 ** 9   # rows of a corpus or a split


class Strict(BaseModel):
    # strict: a value must already have its field's type, so `epochs: true` is not 1 and `lr: '0.1'`
    # is not a number (an int is still a float). allow_inf_nan: no inf or NaN in any float.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


def check_templates(templates: list[str], where: str) -> None:
    """Each template must take the class name through exactly one plain `{}` and nothing else."""
    for template in templates:
        try:
            fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                      if name is not None]
        except ValueError as error:
            raise ValueError(f"{where}{shown(template)} is not a valid template ({error})") from None
        if fields != [("", "", None)]:
            raise ValueError(f"{where}{shown(template)} must contain exactly one '{{}}' (the class name) and no "
                             f"other braces (write '{{{{' or '}}}}' for a literal brace)")
        if len(template) > MAX_TEXT or not template.isprintable():
            raise ValueError(f"{where}{shown(template)} must be printable and at most {MAX_TEXT} characters")


def check_names(names: list[str], where: str) -> None:
    """Names that fill caption templates: non-empty, printable, bounded, and unique up to case and spacing."""
    seen: dict[str, str] = {}
    for name in names:
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_TEXT or not name.isprintable():
            raise ValueError(f"{where}: {shown(name)} must be printable text of 1-{MAX_TEXT} characters")
        key = " ".join(name.casefold().split())
        if key in seen:
            raise ValueError(f"{where}: {shown(name)} repeats {shown(seen[key])} (class names must be unique; "
                             f"case and spacing do not count)")
        seen[key] = name


def check_component(name: str, where: str) -> None:
    """A folder name that must stay one component inside its parent."""
    if (not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\0")
            or len(name) > 255 or not name.isprintable()):
        raise ValueError(f"{where}: {shown(name)} must be one folder name (no '/', '\\', '..' or control characters)")


def check_relative(path: str | None, where: str) -> None:
    """A split folder below a data root: relative, and never climbing out of it."""
    if path is not None and (PurePath(path).is_absolute() or ".." in PurePath(path).parts or "\\" in path
                             or not path.isprintable()):
        raise ValueError(f"{where}: {shown(path)} must be a relative folder inside the data root (no '..')")


def class_folders(classes) -> tuple[list[str], list[str]]:
    """Class names and their ImageFolder folder names, from a list (folder = name) or a mapping folder -> name."""
    if isinstance(classes, dict):
        return [str(name) for name in classes.values()], [str(folder) for folder in classes]
    return classes, classes


def check_classes(classes, where: str, folders: bool) -> None:
    names, folder_names = class_folders(classes)
    check_names(names, where)
    if folders:
        for folder in folder_names:
            check_component(folder, where)


class Folder(Strict):
    """An ImageFolder tree, root/<split>/<class>/*.jpg; split None: root/<class>/*.jpg."""
    path: str = Field(min_length=1, max_length=4096)
    sha256: str | None = Field(default=None, pattern="^[0-9a-fA-F]{64}$")  # required for URLs and archives


class Downstream(Folder):
    train: str = "train"
    val: str | None = None           # None: carve val_per_class images per class out of the train folder
    test: str = "val"                # ImageNet's labelled val set is the test split, as in the paper

    @model_validator(mode="after")
    def _inside(self):
        for split in ("train", "val", "test"):
            check_relative(getattr(self, split), split)
        return self


class Transfer(Folder):
    split: str | None = None
    classes: list[str] | dict[str, str] = Field(min_length=2, max_length=MAX_CLASSES)
    per_class: int | None = Field(default=None, gt=0, le=10 ** 7)   # None: every image of each class

    @model_validator(mode="after")
    def _valid(self):
        check_relative(self.split, "split")
        check_classes(self.classes, "classes", folders=True)
        return self

    @property
    def names(self) -> list[str]:
        return class_folders(self.classes)[0]


class Corpus(Folder):
    # image_folder: captions from model.templates; parquet / webdataset: img2dataset's output shards
    format: Literal["image_folder", "parquet", "webdataset"]
    split: str | None = None

    @model_validator(mode="after")
    def _inside(self):
        check_relative(self.split, "split")
        return self


class Files(Strict):
    corpus: Corpus
    downstream: Downstream
    transfer: dict[str, Transfer] = Field(default={}, max_length=100)


class Shift(Strict):
    """The downstream splits' clutter where it differs from the corpus's (None: the corpus's)."""
    distractors: int | None = Field(ge=0, le=8)
    noise: float | None = Field(ge=0, le=1)


class ArchiveLimits(Strict):
    """What one archive (data.files, `rvpt defend` or `rvpt scan` input) may unpack to; past any
    limit it is refused whole, before the member that crosses it is written."""
    max_members: int = Field(gt=0, le=10 ** 9)
    max_gib: float = Field(gt=0, le=2 ** 20)          # bytes unpacked, all members together
    max_member_gib: float = Field(gt=0, le=2 ** 20)   # bytes unpacked, one member
    max_ratio: float = Field(ge=1, le=10 ** 6)        # bytes unpacked per byte of the archive


class Data(Strict):
    source: Literal["glyphs", "files"] = "glyphs"
    classes: list[str] | dict[str, str] = Field(min_length=2, max_length=MAX_CLASSES)
    transfer_classes: list[str] = Field(default=[], max_length=MAX_CLASSES)
    files: Files | None = None
    image_size: int = Field(ge=8, le=1024)
    corpus_size: int = Field(gt=0, le=MAX_COUNT)
    train_per_class: int = Field(gt=0, le=10 ** 7)
    val_per_class: int = Field(gt=0, le=10 ** 7)
    test_per_class: int = Field(gt=0, le=10 ** 7)
    defender_pairs: int = Field(ge=0, le=MAX_COUNT)
    shard_rows: int = Field(gt=0, le=10 ** 7)
    max_offset: int = Field(ge=0, le=64)
    concepts: list[str] = Field(max_length=MAX_CLASSES)
    distractors: int = Field(ge=0, le=8)
    noise: float = Field(ge=0, le=1)
    stickers: float = Field(ge=0, le=1)
    shift: Shift
    max_bad_fraction: float = Field(ge=0, le=1)
    max_image_pixels: int = Field(gt=0, le=2 ** 31)
    preload_max_gib: float = Field(ge=0, le=2 ** 20)
    download_timeout_s: float = Field(gt=0, le=86_400)
    archive: ArchiveLimits

    @model_validator(mode="after")
    def _disjoint_tasks(self):
        files = self.source == "files"
        check_classes(self.classes, "classes", folders=files)
        check_names(self.class_names + self.transfer_classes, "transfer_classes")
        check_names(self.class_names + self.transfer_classes + self.concepts, "concepts")
        if files and self.files is None:
            raise ValueError("source files needs data.files (corpus, downstream)")
        shifted = self.shift.distractors is not None or self.shift.noise is not None
        if files and (self.transfer_classes or self.concepts or self.distractors or self.noise or self.stickers
                      or shifted):
            raise ValueError("transfer_classes, concepts, distractors, noise, stickers and shift belong to the glyph "
                             "world; files take data.files")
        if not files:
            if isinstance(self.classes, dict):
                raise ValueError("classes: a mapping folder -> name is for data.source files; glyphs take a list")
            unknown = [name for name in self.world_classes if name not in GLYPHS]
            if unknown:
                raise ValueError(f"classes: {shown(unknown[0])} has no glyph to render; the glyph world knows "
                                 f"{', '.join(sorted(GLYPHS))}")
            if self.max_offset * 4 > self.image_size:
                raise ValueError(f"max_offset: {self.max_offset} px moves a glyph off a {self.image_size} px image "
                                 f"(at most a quarter of the side)")
            for key, count in (("distractors", self.distractors), ("shift.distractors", self.shift.distractors)):
                if count is not None and count >= len(self.world_classes):
                    raise ValueError(f"{key}: {count} distinct other glyphs per scene need more than "
                                     f"{len(self.world_classes)} classes in the world")
        for name in (self.files.transfer if self.files else {}):
            if not name.isidentifier():
                raise ValueError(f"files.transfer: {shown(name)} must be a plain name (letters, digits, _)")
        return self

    @property
    def class_names(self) -> list[str]:
        return class_folders(self.classes)[0]

    @property
    def world_classes(self) -> list[str]:
        """Every glyph the corpus shows: the task's, the transfer task's, then the corpus-only concepts."""
        return self.class_names + self.transfer_classes + self.concepts

    @property
    def class_folders(self) -> list[str]:
        return class_folders(self.classes)[1]

    def fits_decoded(self, images: int) -> bool:
        """Whether `images` images, decoded as fp32 at image_size, fit in preload_max_gib."""
        return images * 3 * self.image_size ** 2 * 4 <= self.preload_max_gib * 2 ** 30

    def transfer_sets(self) -> dict[str, list[str]]:
        """Each cross-task test set's class names, by name (downstream/<name>_test.parquet)."""
        if self.source == "files":
            return {name: spec.names for name, spec in self.files.transfer.items()}
        return {"transfer": self.transfer_classes} if self.transfer_classes else {}
