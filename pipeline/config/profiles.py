"""`rvpt profile NAME`: writes params.yaml for a documented setting (profiles/NAME.yaml) over the
current one, with the data paths the user gives; `dvc repro` then runs it.

Class lists come from the data: ImageNet's wnid -> name file (LOC_synset_mapping.txt: "n01440764
tench, Tinca tinca"), and the class folders of the cross-task sets. The result is validated before
anything is written.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.config import params as params_module, params_file
from pipeline.store import artifacts
from rvpt.errors import BadInput

PROFILES = Path(__file__).resolve().parents[2] / "profiles"
SMALL = "small"  # not a profile: the sizes `--small` applies over one


def merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def synsets(path: Path) -> dict[str, str]:
    """wnid -> first name, from lines "n01440764 tench, Tinca tinca".

    Class names must be unique, and ImageNet's first names are not ("crane" the bird and the
    machine): a repeated one takes its next unused synonym, or else its wnid in brackets.
    """
    try:
        lines = [line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise BadInput(f"--imagenet-classes {path}: unreadable ({error})") from None
    if not lines or any(len(parts) != 2 for parts in lines):
        raise BadInput(f"--imagenet-classes {path}: expected lines 'wnid name[, synonyms]'")
    names, used = {}, set()
    for wnid, synonyms in lines:
        choices = [name.strip() for name in synonyms.split(",") if name.strip()] or [wnid]
        name = next((c for c in choices if c.casefold() not in used), f"{choices[0]} ({wnid})")
        names[wnid] = name
        used.add(name.casefold())
    return names


def folder_classes(root: Path, flag: str) -> dict[str, str]:
    """Class folder -> readable name ("Abyssinian_cat" -> "Abyssinian cat"), sorted by folder."""
    if not root.is_dir():
        raise BadInput(f"{flag} {root}: not a folder")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(folders) < 2:
        raise BadInput(f"{flag} {root}: expected class folders, found {len(folders)}")
    return {folder: folder.replace("_", " ") for folder in folders}


def paper(imagenet: Path, imagenet_classes: Path, cc3m: Path, caltech101: Path, oxford_pets: Path):
    """The paper profile's values that depend on the user's data."""
    values = {"data": {"classes": synsets(imagenet_classes), "files": {
        "corpus": {"path": str(cc3m.resolve())},
        "downstream": {"path": str(imagenet.resolve())},
        "transfer": {"caltech101": {"path": str(caltech101.resolve()),
                                    "classes": folder_classes(caltech101, "--caltech101")},
                     "oxford_pets": {"path": str(oxford_pets.resolve()),
                                     "classes": folder_classes(oxford_pets, "--oxford-pets")}}}}}
    return lambda merged: merge(merged, values), []


def shrunk(params: dict, sizes: dict) -> dict:
    """`params` with the sizes of profiles/small.yaml, for the keys it has: a method the params do
    not hold is not added."""
    out = dict(params)
    for key, value in sizes.items():
        if key in out:
            out[key] = shrunk(out[key], value) if isinstance(value, dict) and isinstance(out[key], dict) else value
    return out


def write(name: str, params_path: Path, filled, small: bool = False) -> str:
    """Writes profiles/NAME.yaml over params.yaml, then `fill(merged)`'s values from the data, and with
    `small` the sizes of profiles/small.yaml; validated first."""
    profile = PROFILES / f"{name}.yaml"
    if not profile.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES.glob("*.yaml") if p.stem != SMALL))
        raise BadInput(f"profile {name!r}: not found (known: {known})")
    base = params_file.read(params_path)
    fill, notes = filled
    merged = fill(merge(base, yaml.safe_load(profile.read_text())))
    if small:
        merged = shrunk(merged, yaml.safe_load((PROFILES / f"{SMALL}.yaml").read_text()))
        notes = [*notes, f"--small: the sizes of {SMALL}.yaml (a check of the plumbing; its numbers mean nothing)"]
    # Every attack takes the profile's shared `target`: an attack's own one names a class of the old data.
    attacks = merged.get("attacks")
    for attack in attacks.values() if isinstance(attacks, dict) else ():
        if isinstance(attack, dict):  # anything else is left for validation to name
            attack.pop("target", None)
    params_module.validate(merged, f"{params_path} with profile {name}")
    header = f"# Written by `rvpt profile {name}` from {profile.name} over the previous params.yaml.\n"
    header += "".join(f"#   {note}\n" for note in notes)
    artifacts.write_text(params_path, header + yaml.safe_dump(merged, sort_keys=False, allow_unicode=True))
    size = ", small" if small else ""
    return f"wrote {params_path} for profile {name} ({len(merged['data']['classes'])} classes{size}); run `dvc repro`"
