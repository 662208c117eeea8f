"""Reading a params file that may be hostile: a small regular file of YAML with bounded size once
its aliases are expanded (a few kilobytes of anchors can stand for billions of values), no key
given twice (YAML would keep the last one silently) and no control character in any text."""
from __future__ import annotations

import unicodedata
from pathlib import Path

import yaml

from rvpt import files
from rvpt.errors import BadInput, shown

MAX_FILE_BYTES = 1 << 20   # params.yaml is about 12 KB; a file 80 times larger is not a params file
MAX_VALUES = 100_000       # values once YAML aliases are expanded (an alias bomb expands exponentially)
MAX_DEPTH = 32


class _UniqueKeys(yaml.SafeLoader):
    """yaml.safe_load, except that a mapping repeating one of its own keys is an error, not a silent
    override. Keys a merge (`<<: *anchor`) brings in may still be overridden: that is what it is for."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {shown(key)} given twice (line {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read(path: Path) -> dict:
    """The params file as a mapping, refused when it is not a small regular file of bounded YAML."""
    try:
        text = files.read_bytes(path, MAX_FILE_BYTES).decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadInput(f"{path}: unreadable as UTF-8 text (byte {error.start})") from None
    except BadInput as error:
        if "no such file" in str(error):
            raise BadInput(f"{path}: not found (run from the repository root)") from None
        raise
    try:
        raw = yaml.load(text, Loader=_UniqueKeys)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        raise BadInput(f"{path}: not valid YAML ({shown(' '.join(str(error).split()))})") from None
    except RecursionError:
        raise BadInput(f"{path}: nested too deeply") from None
    if not isinstance(raw, dict):
        raise BadInput(f"{path}: expected a mapping at the top level")
    check_size(raw, path)
    return raw


def check_size(raw: dict, path: Path) -> None:
    """Counts values as a reader would see them, aliases expanded, and stops at the first limit;
    on the way, refuses control characters (a NUL, a newline) in every key and text value."""
    count, stack = 0, [(raw, 1, "")]
    while stack:
        node, depth, where = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise BadInput(f"{path}: over {MAX_VALUES:,} values once YAML aliases are expanded")
        if depth > MAX_DEPTH:
            raise BadInput(f"{path}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            for key, child in node.items():
                check_printable(key, f"{where}{shown(key)} (a key)", path)
                stack.append((child, depth + 1, f"{where}{key}."))
        elif isinstance(node, list):
            stack.extend((child, depth + 1, f"{where}{i}.") for i, child in enumerate(node))
        else:
            check_printable(node, where.rstrip("."), path)


def check_printable(value, where: str, path: Path) -> None:
    if isinstance(value, str) and any(unicodedata.category(c) == "Cc" for c in value):
        raise BadInput(f"{path}: {where}: {shown(value)} holds a control character")
