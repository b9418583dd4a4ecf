"""Build ``plots_offline/index.html``: DVC's plots page with Vega inlined, so that
``dvc plots show`` renders with no network (DVC's default page loads Vega from a CDN).

Run once by a maintainer when upgrading the Vega versions; never at run time::

    npm pack vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0   # from the npm registry
    python plots_offline/build_template.py vega-5.33.1.tgz vega-lite-5.23.0.tgz \
        vega-embed-6.29.0.tgz

The three packages are BSD-3-Clause (University of Washington Interactive Data Lab); their
licence texts go into the page next to the code. ``.dvc/config`` points DVC at the result
(``[plots] html_template``). DVC fills ``{plot_divs}`` (and ``{refresh_tag}``); the page has
no ``{scripts}`` placeholder, so DVC's CDN ``<script>`` tags are never added.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGES = {  # npm name -> minified UMD build inside the tarball
    "vega": "package/build/vega.min.js",
    "vega-lite": "package/build/vega-lite.min.js",
    "vega-embed": "package/build/vega-embed.min.js",
}
LICENSE = HERE / "LICENSES.txt"

PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {{refresh_tag}}
    <title>DVC Plot (offline)</title>
    <!-- Vega, Vega-Lite and Vega-Embed inlined by plots_offline/build_template.py:
{versions}
         BSD-3-Clause, see the licence texts at the end of this page. -->
{scripts}
    <style>
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {{plot_divs}}
<!--
{licenses}
-->
</body>
</html>
"""


def main(tarballs: list[str]) -> None:
    scripts, versions = [], []
    for tgz in tarballs:
        with tarfile.open(tgz) as tar:
            meta = json.load(io.TextIOWrapper(tar.extractfile("package/package.json")))
            name, version = meta["name"], meta["version"]
            if meta.get("license") != "BSD-3-Clause":
                raise SystemExit(f"{name}: licence {meta.get('license')!r}, expected BSD-3-Clause")
            code = tar.extractfile(PACKAGES[name]).read().decode("utf-8")
        if "</script" in code.lower():
            raise SystemExit(f"{name}: contains '</script', cannot be inlined")
        digest = hashlib.sha256(code.encode()).hexdigest()
        versions.append(f"         {name}@{version} ({PACKAGES[name]}, sha256 {digest})")
        scripts.append(f"    <script>/* {name}@{version} */\n{code}\n    </script>")
    order = list(PACKAGES)
    pairs = sorted(zip(versions, scripts, strict=True),
                   key=lambda p: order.index(p[0].split("@")[0].strip()))
    page = PAGE.format(
        versions="\n".join(v for v, _ in pairs),
        scripts="\n".join(s for _, s in pairs),
        licenses=LICENSE.read_text().replace("--", "- -"),
    )
    (HERE / "index.html").write_text(page)
    print(f"wrote {HERE / 'index.html'} ({len(page):,} bytes)")


if __name__ == "__main__":
    main(sys.argv[1:])
