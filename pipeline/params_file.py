"""Reading a params file that may be hostile: a small regular file of YAML with bounded size once
its aliases are expanded (a few kilobytes of anchors can stand for billions of values)."""
from __future__ import annotations

import stat
from pathlib import Path

import yaml

from rvpt.errors import BadInput, shown

MAX_FILE_BYTES = 1 << 20   # params.yaml is about 7 KB; a file 150 times larger is not a params file
MAX_VALUES = 100_000       # values once YAML aliases are expanded (an alias bomb expands exponentially)
MAX_DEPTH = 32


def read(path: Path) -> dict:
    """The params file as a mapping, refused when it is not a small regular file of bounded YAML."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise BadInput(f"{path}: not found (run from the repository root)") from None
    except OSError as error:
        raise BadInput(f"{path}: unreadable ({error.strerror or error})") from None
    if not stat.S_ISREG(info.st_mode):
        raise BadInput(f"{path}: not a regular file")
    if info.st_size > MAX_FILE_BYTES:
        raise BadInput(f"{path}: {info.st_size:,} bytes, over the limit of {MAX_FILE_BYTES:,} for a params file")
    try:
        with open(path, "rb") as handle:
            text = handle.read(MAX_FILE_BYTES + 1).decode("utf-8")
        raw = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as error:
        raise BadInput(f"{path}: unreadable as UTF-8 text ({shown(str(error))})") from None
    except yaml.YAMLError as error:
        raise BadInput(f"{path}: not valid YAML ({shown(str(error).splitlines()[0])})") from None
    except RecursionError:
        raise BadInput(f"{path}: nested too deeply") from None
    if not isinstance(raw, dict):
        raise BadInput(f"{path}: expected a mapping at the top level")
    check_size(raw, path)
    return raw


def check_size(raw: dict, path: Path) -> None:
    """Counts values as a reader would see them, aliases expanded, and stops at the first limit."""
    count, stack = 0, [(raw, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise BadInput(f"{path}: over {MAX_VALUES:,} values once YAML aliases are expanded")
        if depth > MAX_DEPTH:
            raise BadInput(f"{path}: nested deeper than {MAX_DEPTH} levels")
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children)
