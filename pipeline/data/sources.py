"""Files the user brings: URLs checked against a sha256, archives extracted safely, image folders.

Everything here treats its input as hostile. A download is verified before it is used, an
archive with a member that would land outside the target (absolute paths, `..`) or that is a
link or a device is refused as a whole, and nothing is left behind under the final name when
any of that fails.
"""
from __future__ import annotations

import hashlib
import contextlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from pipeline.store.artifacts import atomic_dir, warn
from pipeline.store.outputs import missing_parents, remove_empty
from rvpt import files
from rvpt.errors import BadInput

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
CHUNK = 1 << 20


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def is_archive(path: str | Path) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, sha256: str | None, what: str) -> str:
    """The file's sha256, after checking it against `sha256` when one is given."""
    actual = sha256_of(path)
    if sha256 is not None and actual != sha256.lower():
        raise BadInput(f"{what}: sha256 is {actual}, expected {sha256.lower()}")
    return actual


def download(url: str, cache: Path, sha256: str | None, timeout: float) -> Path:
    """The URL's file in `cache`, fetched once; a URL must come with its sha256."""
    if not sha256:
        raise BadInput(f"{url}: a URL needs its sha256 (--sha256), so that what runs is what you meant")
    name = PurePosixPath(urllib.request.urlparse(url).path).name or "download"
    path = cache / sha256.lower()[:16] / name
    if path.is_file() and sha256_of(path) == sha256.lower():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            shutil.copyfileobj(response, out, CHUNK)
        verify(Path(temporary), sha256, url)
        os.replace(temporary, path)
    except OSError as error:
        raise BadInput(f"{url}: download failed ({error})") from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def _checked_name(name: str, archive: Path) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise BadInput(f"{archive}: member {name!r} would land outside the extraction folder")


class Budget:
    """What an archive may unpack to (params.yaml's data.archive): members, bytes per member, bytes
    in all, and bytes per compressed byte. A member's declared size bounds what is written for it
    (tarfile reads exactly that many bytes, zipfile stops there), so sizes are checked from the
    headers, before the member is written; past any limit the archive is refused whole."""

    def __init__(self, archive: Path, limits, target: Path):
        self.archive, self.limits, self.members, self.total = archive, limits, 0, 0
        self.packed = max(1, archive.stat().st_size)
        self.free = shutil.disk_usage(target.parent if target.parent.exists() else Path(".")).free

    def add(self, name: str, size: int) -> None:
        self.members += 1
        self.total += size
        limits, where = self.limits, f"{self.archive}: refused whole"
        if self.members > limits.max_members:
            raise BadInput(f"{where}, over {limits.max_members:,} members (data.archive.max_members)")
        if size > limits.max_member_gib * 2 ** 30:
            raise BadInput(f"{where}, member {name!r} unpacks to {size:,} bytes, over "
                           f"{limits.max_member_gib:g} GiB (data.archive.max_member_gib)")
        if self.total > limits.max_gib * 2 ** 30:
            raise BadInput(f"{where}, over {limits.max_gib:g} GiB unpacked (data.archive.max_gib)")
        if self.total > limits.max_ratio * self.packed:
            raise BadInput(f"{where}, it unpacks to over {limits.max_ratio:g} times its {self.packed:,} bytes "
                           f"(data.archive.max_ratio): a compression bomb")
        if self.total > self.free:
            raise BadInput(f"{where}, it unpacks to over the {self.free:,} bytes free on the disk")


def extract(archive: Path, target: Path, limits) -> Path:
    """Extracts a tar or zip archive into `target` (atomically), refusing it whole if any member is
    unsafe or the archive unpacks past `limits` (data.archive); nothing of a refused archive stays."""
    try:
        with atomic_dir(target) as out:
            _extract_into(archive, out, Budget(archive, limits, target))
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as error:
        raise BadInput(f"{archive}: not a safe, readable archive ({error})") from None
    return target


def _extract_into(archive: Path, out: Path, budget: Budget) -> None:
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as handle:
            for member in handle.infolist():  # the central directory: every header before any byte is written
                _checked_name(member.filename, archive)
                if (member.external_attr >> 16) & 0o170000 == 0o120000:
                    raise BadInput(f"{archive}: member {member.filename!r} is a symbolic link")
                budget.add(member.filename, member.file_size)
            handle.extractall(out)
        return
    with tarfile.open(archive) as handle:
        # Headers are read as the stream goes, so a limit stops the archive at the member that
        # crosses it instead of after decompressing all of it; what was written goes with the staging folder.
        for member in handle:
            _checked_name(member.name, archive)
            if not (member.isfile() or member.isdir()) or member.issparse():
                raise BadInput(f"{archive}: member {member.name!r} is a link or a special file")
            budget.add(member.name, member.size)
            # The "data" filter re-checks all of the above inside tarfile itself.
            handle.extract(member, out, filter="data")


def materialise(source: str, cache: Path, sha256: str | None, timeout: float, limits,
                fresh: list[Path] | None = None) -> Path:
    """A local file or folder for a path or URL; archives are verified and extracted next to the
    cache (an extraction made now is appended to `fresh`). Anything but a folder or a regular file
    (a device, a FIFO) is refused before a byte of it is read."""
    if is_url(source):
        path, digest = download(source, cache, sha256, timeout), sha256.lower()  # verified by download
    else:
        path = files.file_or_folder(source)
        if path.is_dir():
            if sha256:
                raise BadInput(f"{source}: --sha256 applies to a file or URL, not a folder")
            return path
        digest = verify(path, sha256, source)
    if not is_archive(path):
        return path
    target = cache / "extracted" / digest[:16]
    if not target.is_dir():
        extract(path, target, limits)
        if fresh is not None:
            fresh.append(target)
    root = target
    inside = [p for p in root.iterdir() if not p.name.startswith(".")]
    # Most archives wrap everything in one top folder; the data starts inside it.
    return inside[0] if len(inside) == 1 and inside[0].is_dir() else root


@contextlib.contextmanager
def fetched(source: str, cache: Path, sha256: str | None, timeout: float, limits):
    """`materialise` for a block that reads what it gets: when the block refuses the content
    (BadInput: no class folders, no readable image), an archive extracted for it is removed again,
    so that a refused archive leaves nothing in the cache."""
    fresh: list[Path] = []
    made = missing_parents(cache / "extracted" / "x")
    path = materialise(source, cache, sha256, timeout, limits, fresh)
    try:
        yield path
    except BadInput:
        for folder in fresh:
            shutil.rmtree(folder, ignore_errors=True)
        remove_empty(made)
        raise


def inside(path: Path, resolved_root: Path) -> bool:
    """Whether `path`, links resolved, lies within the already resolved root."""
    return path.resolve().is_relative_to(resolved_root)


def image_files(folder: Path, root: Path) -> list[Path]:
    """The image files below `folder`, sorted, never leaving `root` through a link.

    Linked folders are not descended into; a linked file that resolves outside `root` is left
    out, with a warning, as is a class folder that is itself such a link.
    """
    resolved_root = root.resolve()  # once, not per file
    if not inside(folder, resolved_root):
        raise BadInput(f"{folder}: a link out of the data root {root} (refused)")
    found, outside = [], []
    for parent, _, names in os.walk(folder, followlinks=False):
        for name in names:
            path = Path(parent) / name
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if path.is_symlink() and not inside(path, resolved_root):
                outside.append(path)
            elif path.is_file():
                found.append(path)
    if outside:
        warn(f"{folder}: left out {len(outside)} linked files outside the data root (first: {outside[0]})")
    return sorted(found)


def image_folder(root: Path) -> tuple[list[str], dict[str, list[Path]]]:
    """Class folder names (sorted) and each class's image files, from the ImageFolder layout root/<class>/*."""
    if not root.is_dir():
        raise BadInput(f"{root}: not a folder of class folders")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = {name: image_files(root / name, root) for name in classes}
    empty = [name for name, paths in files.items() if not paths]
    if len(classes) < 2:
        raise BadInput(f"{root}: needs at least two class folders, found {len(classes)}")
    if empty:
        raise BadInput(f"{root}: class folders without images: {empty[:5]}")
    return classes, files
