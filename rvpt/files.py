"""Files a user names, read as hostile input: regular files of bounded size, and nothing else.

A device (/dev/zero), a FIFO or a socket would be read forever or block; a huge file would be
read into memory. Each is refused from its `stat`, before a byte is read, with one line that
names the path.
"""
from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

from rvpt.errors import BadInput, shown

TEXT_LIMIT = 64 << 20       # bytes of a JSON or text file (a 1,000-class summary.json is a few MB)
JSON_DEPTH = 64             # nesting of a JSON document; deeper is refused before Python recurses into it


def _stat(path: Path, what: str) -> os.stat_result:
    try:
        return path.stat()
    except FileNotFoundError:
        raise BadInput(f"{what}{path}: no such file or folder") from None
    except OSError as error:
        raise BadInput(f"{what}{path}: unreadable ({error.strerror or error})") from None


def regular_file(path: str | os.PathLike, limit: int | None = None, what: str = "") -> Path:
    """The path, if it is a regular file (links followed) of at most `limit` bytes."""
    path = Path(path)
    info = _stat(path, what)
    if not stat.S_ISREG(info.st_mode):
        raise BadInput(f"{what}{path}: not a regular file (a device, FIFO, socket or folder is refused)")
    if limit is not None and info.st_size > limit:
        raise BadInput(f"{what}{path}: {info.st_size:,} bytes, over the limit of {limit:,}")
    return path


def file_or_folder(path: str | os.PathLike, limit: int | None = None, what: str = "") -> Path:
    """The path, if it is a folder or a regular file of at most `limit` bytes."""
    path = Path(path)
    if stat.S_ISDIR(_stat(path, what).st_mode):
        return path
    return regular_file(path, limit, what)


def read_bytes(path: str | os.PathLike, limit: int = TEXT_LIMIT, what: str = "") -> bytes:
    path = regular_file(path, limit, what)
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)  # the file may have grown since its stat
    except OSError as error:
        raise BadInput(f"{what}{path}: unreadable ({error.strerror or error})") from None
    if len(data) > limit:
        raise BadInput(f"{what}{path}: over the limit of {limit:,} bytes")
    return data


def read_text(path: str | os.PathLike, limit: int = TEXT_LIMIT, what: str = "") -> str:
    try:
        return read_bytes(path, limit, what).decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadInput(f"{what}{path}: not UTF-8 text (byte {error.start})") from None


def read_json(path: str | os.PathLike, limit: int = TEXT_LIMIT, what: str = ""):
    """A JSON document of bounded size and nesting."""
    text = read_text(path, limit, what)
    check_depth(text, f"{what}{path}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise BadInput(f"{what}{path}: not valid JSON ({shown(str(error))})") from None


def check_depth(text: str, where: str, limit: int = JSON_DEPTH) -> None:
    """Refuses JSON nested deeper than `limit`, counted from its brackets outside strings, so that a
    hostile file cannot make the parser (or a later walk of the result) recurse without bound."""
    depth = 0
    for bracket in _BRACKETS.findall(_STRINGS.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        if depth > limit:
            raise BadInput(f"{where}: nested deeper than {limit} levels")


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(r"[\[\]{}]")
