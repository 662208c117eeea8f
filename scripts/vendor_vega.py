"""Builds .dvc/plots.html: DVC's plot page with vega, vega-lite and vega-embed inlined, so
that `dvc plots show` and `dvc plots diff` render offline (DVC's own page loads them from a CDN).

    npm pack vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0      # in an empty folder
    uv run python scripts/vendor_vega.py THAT_FOLDER

Each tarball is checked against the npm registry's sha512 below before anything is read from it.
.dvc/config points `plots.html_template` at the page.
"""
from __future__ import annotations

import base64
import hashlib
import sys
import tarfile
from pathlib import Path

PACKAGES = {  # name: (version, the file inlined, npm's sha512 integrity of the tarball)
    "vega": ("5.33.1", "build/vega.min.js",
              "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw=="),
    "vega-lite": ("5.23.0", "build/vega-lite.min.js",
                  "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA=="),
    "vega-embed": ("6.29.0", "build/vega-embed.min.js",
                   "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q=="),
}
PAGE = Path(__file__).resolve().parent.parent / ".dvc" / "plots.html"
HEAD = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{refresh_tag}
<title>rvpt plots</title>
<!-- vega {vega}, vega-lite {vega_lite}, vega-embed {vega_embed} (BSD-3-Clause, (c) the Vega project),
     inlined by scripts/vendor_vega.py so that the page needs no network -->
"""
TAIL = """<style>body{font-family:sans-serif} table{border-spacing:15px}</style>
</head>
<body>
{plot_divs}
</body>
</html>
"""


def integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def script(folder: Path, name: str) -> str:
    version, member, expected = PACKAGES[name]
    tarball = folder / f"{name}-{version}.tgz"
    found = integrity(tarball)
    if found != expected:
        raise SystemExit(f"{tarball}: sha512 {found} is not npm's {expected}")
    with tarfile.open(tarball) as archive:  # one named member is read; nothing is extracted to disk
        code = archive.extractfile(f"package/{member}").read().decode()
    if "</script" in code.lower() or "{plot_divs}" in code:
        raise SystemExit(f"{tarball}: {member} cannot be inlined as it is")
    return f"<script>{code}</script>\n"


def main(folder: Path) -> None:
    versions = {key.replace("-", "_"): version for key, (version, _, _) in PACKAGES.items()}
    # DVC fills {refresh_tag} and {plot_divs}; no {scripts}, so it adds no CDN <script> tags.
    page = HEAD.replace("{vega}", versions["vega"]).replace("{vega_lite}", versions["vega_lite"]) \
        .replace("{vega_embed}", versions["vega_embed"])
    page += "".join(script(folder, name) for name in PACKAGES) + TAIL
    PAGE.write_text(page)
    print(f"wrote {PAGE} ({len(page) // 1024} KiB)")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
