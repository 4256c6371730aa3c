#!/usr/bin/env python3
"""Make an ``asv publish`` dashboard work without internet access.

asv's ``index.html`` pulls jQuery, flot, bootstrap and a few small plugins
from public CDNs.  Machines that view (or test) the dashboard offline cannot
reach those CDNs, but they can usually reach the npm registry at build time,
so this script:

1. scans the published html for external ``<script src>`` / ``<link href>``
   (and checks asv's own js/css for hard-coded external URLs, which would be
   dynamic loads we cannot rewrite safely),
2. maps each URL to a file inside an npm package via ``ASSETS`` below,
3. downloads those packages with ``npm pack`` into a cache directory,
4. copies the files into ``<html>/vendor/<package>@<version>/...`` and
   rewrites the html to point there.

Running it twice is harmless: already-rewritten references are only checked
for existence.  Any external reference without a mapping is a hard error, so
an asv upgrade that adds a new CDN dependency is noticed instead of silently
producing a dashboard that needs the internet.

Usage:
    python benchmarks/dashboard/vendor_assets.py .asv/html
    python benchmarks/dashboard/vendor_assets.py .asv/html --check   # scan only

Standard library only (plus the ``npm`` executable).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

VENDOR_DIRNAME = "vendor"


@dataclass(frozen=True)
class Asset:
    url_pattern: str  # regex, must match the whole URL
    package: str  # npm package name
    version: str  # exact npm version, never a range: the dashboard must be reproducible
    path: str  # file inside the package (relative to the tarball's package/ dir)
    # Other files inside the package that `path` references relatively
    # (glob patterns), e.g. the fonts bootstrap.css loads via url(../fonts/..).
    extras: tuple[str, ...] = ()
    note: str = ""


# The CDN references found in asv 0.6.6's www/index.html.  Versions match the
# CDN URLs except where npm does not publish that version (see notes).  When
# asv is upgraded, run this script: unmapped URLs make it fail and name them.
ASSETS: tuple[Asset, ...] = (
    Asset(
        r"https://code\.jquery\.com/jquery-3\.3\.1\.min\.js",
        "jquery", "3.3.1", "dist/jquery.min.js",
    ),
    # cdnjs serves its own minified builds of the flot plugins; the npm
    # tarball only ships the unminified sources of the same 0.8.3 release.
    Asset(
        r"https://cdnjs\.cloudflare\.com/ajax/libs/flot/0\.8\.3/jquery\.flot\.min\.js",
        "flot", "0.8.3", "jquery.flot.js", note="unminified (npm has no .min.js)",
    ),
    Asset(
        r"https://cdnjs\.cloudflare\.com/ajax/libs/flot/0\.8\.3/jquery\.flot\.time\.min\.js",
        "flot", "0.8.3", "jquery.flot.time.js", note="unminified (npm has no .min.js)",
    ),
    Asset(
        r"https://cdnjs\.cloudflare\.com/ajax/libs/flot/0\.8\.3/jquery\.flot\.selection\.min\.js",
        "flot", "0.8.3", "jquery.flot.selection.js", note="unminified (npm has no .min.js)",
    ),
    Asset(
        r"https://cdnjs\.cloudflare\.com/ajax/libs/flot/0\.8\.3/jquery\.flot\.categories\.min\.js",
        "flot", "0.8.3", "jquery.flot.categories.js", note="unminified (npm has no .min.js)",
    ),
    Asset(
        r"https://cdn\.jsdelivr\.net/npm/flot-orderbars@1\.0\.0/js/jquery\.flot\.orderBars\.js",
        "flot-orderbars", "1.0.0", "js/jquery.flot.orderBars.js",
    ),
    # stupidtable 1.0.1 was never published to npm; 1.1.3 (the only npm
    # release) keeps the API asv's regressions page uses: .stupidtable(sorters),
    # $th.stupidsort(dir) and the aftertablesort event's column/direction.
    Asset(
        r"https://cdnjs\.cloudflare\.com/ajax/libs/stupidtable/1\.0\.1/stupidtable\.min\.js",
        "stupid-table-plugin", "1.1.3", "stupidtable.min.js",
        note="CDN pins 1.0.1, which is not on npm; 1.1.3 is API-compatible",
    ),
    Asset(
        r"https://cdnjs\.cloudflare\.com/ajax/libs/blueimp-md5/2\.19\.0/js/md5\.min\.js",
        "blueimp-md5", "2.19.0", "js/md5.min.js", extras=("js/md5.min.js.map",),
    ),
    Asset(
        r"https://cdn\.jsdelivr\.net/npm/bootstrap@3\.1\.1/dist/js/bootstrap\.min\.js",
        "bootstrap", "3.1.1", "dist/js/bootstrap.min.js",
    ),
    Asset(
        r"https://cdn\.jsdelivr\.net/npm/bootstrap@3\.1\.1/dist/css/bootstrap\.min\.css",
        "bootstrap", "3.1.1", "dist/css/bootstrap.min.css",
        extras=("dist/fonts/*",),
    ),
)

# Attributes that only make sense for the CDN copy: the SRI hash no longer
# matches where npm ships a different build (flot, stupidtable), and
# crossorigin/referrerpolicy are pointless for same-origin files.
CDN_ONLY_ATTRIBUTES = ("integrity", "crossorigin", "referrerpolicy")

# <link rel=...> values for which the browser actually downloads the href.
# Others (alternate, canonical, ...) are just links and stay untouched.
FETCHED_LINK_RELS = {
    "stylesheet", "icon", "shortcut", "preload", "modulepreload",
    "prefetch", "manifest", "apple-touch-icon",
}

EXTERNAL_RE = re.compile(r"^(?:https?:)?//", re.IGNORECASE)
# Absolute URLs in js/css string literals or url()/@import: a hint of a
# dynamic load that cannot be rewritten by editing html tags.
DYNAMIC_URL_RE = re.compile(r"""(?:["'(]|@import\s+)\s*((?:https?:)?//[^"')\s]+)""", re.IGNORECASE)


class VendorError(Exception):
    pass


@dataclass
class Ref:
    """One resource-loading tag found in an html file."""

    file: Path
    offset: int  # character offset of the start tag in the file text
    tag_text: str  # the start tag exactly as written
    attr: str  # "src" or "href"
    url: str


@dataclass
class ScanResult:
    refs: list[Ref] = field(default_factory=list)
    dynamic: list[tuple[Path, str]] = field(default_factory=list)  # (file, url) in js/css


class _TagCollector(html.parser.HTMLParser):
    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        # getpos() reports (line, column); precompute line starts so a
        # position can be turned into an offset for exact in-place rewriting.
        self._line_starts = [0]
        for m in re.finditer("\n", text):
            self._line_starts.append(m.end())
        self.found: list[tuple[int, str, str, str]] = []

    def handle_starttag(self, tag, attrs):
        attrs_d = {k.lower(): (v or "") for k, v in attrs}
        attr = None
        if tag in ("script", "img", "iframe", "source", "audio", "video", "embed"):
            attr = "src"
        elif tag == "link":
            rels = set(attrs_d.get("rel", "").lower().split())
            if rels & FETCHED_LINK_RELS:
                attr = "href"
        if attr and attrs_d.get(attr):
            line, col = self.getpos()
            offset = self._line_starts[line - 1] + col
            self.found.append((offset, self.get_starttag_text(), attr, attrs_d[attr]))

    handle_startendtag = handle_starttag


# newline="" keeps the file's own line endings, so offsets from the parser
# match the text and rewriting changes only the tags it must.
def _read(path: Path) -> str:
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def _write(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def _iter_files(html_dir: Path, suffixes: tuple[str, ...]):
    vendor = html_dir / VENDOR_DIRNAME
    for p in sorted(html_dir.rglob("*")):
        if p.suffix.lower() in suffixes and p.is_file() and vendor not in p.parents:
            yield p


def scan(html_dir: Path) -> ScanResult:
    """Find every resource reference in html files and external URLs in js/css.

    The vendor/ directory is skipped: third-party files mention URLs in
    license headers and docs, which are never fetched.
    """
    result = ScanResult()
    for path in _iter_files(html_dir, (".html", ".htm")):
        text = _read(path)
        parser = _TagCollector(text)
        parser.feed(text)
        parser.close()
        for offset, tag_text, attr, url in parser.found:
            result.refs.append(Ref(path, offset, tag_text, attr, url))
    for path in _iter_files(html_dir, (".js", ".css")):
        text = path.read_text(encoding="utf-8", errors="replace")
        for m in DYNAMIC_URL_RE.finditer(text):
            result.dynamic.append((path, m.group(1)))
    return result


def is_external(url: str) -> bool:
    return bool(EXTERNAL_RE.match(url.strip()))


def find_asset(url: str) -> Asset | None:
    # Protocol-relative "//cdn..." URLs are matched as https.
    u = url.strip()
    if u.startswith("//"):
        u = "https:" + u
    for asset in ASSETS:
        if re.fullmatch(asset.url_pattern, u):
            return asset
    return None


# --------------------------------------------------------------------------
# npm download cache
# --------------------------------------------------------------------------


def _cache_key(package: str, version: str) -> str:
    # Scoped names contain "/", which must not become a directory level.
    return f"{package.replace('/', '+')}@{version}"


def fetch_package(package: str, version: str, cache_dir: Path, npm: str) -> Path:
    """Return the extracted package root, downloading it with ``npm pack`` once.

    ``npm pack`` (rather than ``npm install``) fetches exactly one tarball,
    verified against the registry's integrity hash, without resolving
    dependencies or running any install scripts.
    """
    root = cache_dir / "packages" / _cache_key(package, version)
    marker = root / ".complete"
    if marker.exists():
        return root

    tarballs = cache_dir / "tarballs"
    tarballs.mkdir(parents=True, exist_ok=True)
    spec = f"{package}@{version}"
    cmd = [npm, "pack", spec, "--json", "--pack-destination", str(tarballs)]
    print(f"  npm pack {spec}", file=sys.stderr)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        raise VendorError(f"'{npm}' not found; install Node.js/npm or pass --npm PATH") from None
    if proc.returncode != 0:
        raise VendorError(f"'{' '.join(cmd)}' failed (exit {proc.returncode}):\n{proc.stderr.strip()}")
    try:
        filename = json.loads(proc.stdout)[0]["filename"]
    except (ValueError, LookupError, TypeError):
        raise VendorError(f"unexpected output from '{' '.join(cmd)}':\n{proc.stdout[:2000]}") from None
    tgz = tarballs / filename

    # Extract into a sibling temp dir and rename, so an interrupted run never
    # leaves a half-extracted package that looks complete.
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=root.parent))
    try:
        with tarfile.open(tgz, "r:gz") as tf:
            if hasattr(tarfile, "data_filter"):
                tf.extractall(tmp, filter="data")
            else:  # Python < 3.11.4: no filter support; npm tarballs are plain files
                tf.extractall(tmp)
        # npm tarballs put everything under one top-level dir, usually "package/".
        tops = [p for p in tmp.iterdir() if p.is_dir()]
        if len(tops) != 1:
            raise VendorError(f"{tgz}: expected one top-level directory, found {[p.name for p in tops]}")
        if root.exists():
            shutil.rmtree(root)
        tops[0].rename(root)
        marker.write_text(f"{spec}\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


# --------------------------------------------------------------------------
# copying and rewriting
# --------------------------------------------------------------------------


def vendor_relpath(asset: Asset, rel_in_package: str) -> str:
    """Path of a vendored file relative to the html dir (always with "/")."""
    return f"{VENDOR_DIRNAME}/{_cache_key(asset.package, asset.version)}/{rel_in_package}"


def copy_asset(asset: Asset, pkg_root: Path, html_dir: Path) -> list[str]:
    """Copy the asset's main file and extras; return vendor paths copied."""
    wanted = [asset.path]
    for pattern in asset.extras:
        matches = sorted(p for p in pkg_root.glob(pattern) if p.is_file())
        if not matches:
            raise VendorError(f"{asset.package}@{asset.version}: no file matches extra '{pattern}'")
        wanted.extend(p.relative_to(pkg_root).as_posix() for p in matches)
    # Ship each package's license and package.json next to its files: the
    # published dashboard redistributes third-party code, and package.json
    # records exactly which release it came from.
    for p in sorted(pkg_root.iterdir()):
        if p.is_file() and (p.name.upper().startswith(("LICENSE", "LICENCE")) or p.name == "package.json"):
            wanted.append(p.name)
    copied = []
    for rel in wanted:
        src = pkg_root / rel
        if not src.is_file():
            raise VendorError(
                f"{asset.package}@{asset.version} has no file '{rel}' "
                f"(looked in {pkg_root}); fix ASSETS in {Path(__file__).name}"
            )
        dst = html_dir / vendor_relpath(asset, rel)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        copied.append(vendor_relpath(asset, rel))
    return copied


def sri_status(tag_text: str, local_file: Path) -> str:
    """Say whether the local copy is byte-identical to what the CDN tag pinned.

    Informational only: it tells a reviewer which vendored files are exactly
    what asv's authors tested against and which are equivalent builds.
    """
    m = re.search(r"""\bintegrity\s*=\s*["']([^"']+)["']""", tag_text)
    if not m:
        return "no SRI hash in tag"
    data = local_file.read_bytes()
    for token in m.group(1).split():
        alg, _, want = token.partition("-")
        if alg in ("sha256", "sha384", "sha512"):
            got = base64.b64encode(hashlib.new(alg, data).digest()).decode()
            if got == want:
                return "identical to CDN file (SRI hash matches)"
    return "differs from CDN file (SRI hash does not match; attribute dropped)"


def rewrite_tag(tag_text: str, attr: str, new_url: str) -> str:
    attr_value = r"""(\s*=\s*)("[^"]*"|'[^']*'|[^\s"'>]+)"""
    new_tag, n = re.subn(
        rf"(\s{attr}){attr_value}", lambda m: f'{m.group(1)}{m.group(2)}"{new_url}"', tag_text, count=1,
        flags=re.IGNORECASE,
    )
    if n != 1:
        raise VendorError(f"could not locate {attr}= in tag {tag_text!r}")
    for name in CDN_ONLY_ATTRIBUTES:
        new_tag = re.sub(rf"\s{name}(?:{attr_value})?(?=[\s/>])", "", new_tag, flags=re.IGNORECASE)
    return new_tag


def vendor(html_dir: Path, cache_dir: Path, npm: str, check_only: bool) -> int:
    if not (html_dir / "index.html").is_file():
        raise VendorError(f"{html_dir} has no index.html; run 'asv publish' first")

    result = scan(html_dir)
    external = [r for r in result.refs if is_external(r.url)]
    unmapped = sorted({r.url for r in external if find_asset(r.url) is None})
    problems = []
    if unmapped:
        problems.append(
            "no npm mapping for these external assets (add them to ASSETS in "
            f"{Path(__file__).name}):\n" + "\n".join(f"    {u}" for u in unmapped)
        )
    if result.dynamic:
        problems.append(
            "external URLs inside js/css (possible dynamic loads this script cannot rewrite):\n"
            + "\n".join(f"    {p.relative_to(html_dir)}: {u}" for p, u in result.dynamic)
        )
    # Local references into vendor/ must exist: catches a vendor/ dir that was
    # deleted or copied incompletely after an earlier run rewrote the html.
    for r in result.refs:
        if is_external(r.url) or r.url.startswith(("data:", "#")):
            continue
        target = (r.file.parent / r.url.split("?")[0].split("#")[0]).resolve()
        if VENDOR_DIRNAME in Path(r.url).parts and not target.is_file():
            problems.append(
                f"{r.file.relative_to(html_dir)} references missing {r.url}; "
                "re-run 'asv publish' and then this script"
            )
    if problems:
        raise VendorError("\n".join(problems))

    if check_only:
        if external:
            print(f"{len(external)} external reference(s) still to vendor:")
            for r in external:
                print(f"  {r.file.relative_to(html_dir)}: {r.url}")
            return 1
        print(f"OK: {html_dir} references no external assets")
        return 0

    if not external:
        print(f"nothing to do: {html_dir} references no external assets")
        return 0

    # Download/copy each distinct asset once, then rewrite per file from the
    # end of the text backwards so earlier offsets stay valid.
    vendored: dict[str, str] = {}  # url -> vendor path relative to html_dir
    for url in dict.fromkeys(r.url for r in external):
        asset = find_asset(url)
        pkg_root = fetch_package(asset.package, asset.version, cache_dir, npm)
        copy_asset(asset, pkg_root, html_dir)
        vendored[url] = vendor_relpath(asset, asset.path)

    by_file: dict[Path, list[Ref]] = {}
    for r in external:
        by_file.setdefault(r.file, []).append(r)
    for path, refs in by_file.items():
        text = _read(path)
        report = []
        for r in sorted(refs, key=lambda r: r.offset, reverse=True):
            if text[r.offset:r.offset + len(r.tag_text)] != r.tag_text:
                raise VendorError(f"{path}: tag at offset {r.offset} is not where the parser saw it")
            target = html_dir / vendored[r.url]
            local_url = Path(os.path.relpath(target, path.parent)).as_posix()
            status = sri_status(r.tag_text, target)
            text = text[:r.offset] + rewrite_tag(r.tag_text, r.attr, local_url) + text[r.offset + len(r.tag_text):]
            asset = find_asset(r.url)
            extra = f"; {asset.note}" if asset.note else ""
            report.append(f"  {r.url}\n    -> {local_url}  [{asset.package}@{asset.version}: {status}{extra}]")
        _write(path, text)
        print("\n".join(reversed(report)))
        print(f"rewrote {len(refs)} reference(s) in {path.relative_to(html_dir)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("html_dir", type=Path, help="asv html output directory (html_dir in asv.conf.json)")
    ap.add_argument("--cache-dir", type=Path, default=Path(".asv/npm-cache"),
                    help="where npm tarballs are cached between runs (default: %(default)s)")
    ap.add_argument("--npm", default=os.environ.get("NPM", "npm"), help="npm executable (default: npm or $NPM)")
    ap.add_argument("--check", action="store_true",
                    help="only scan; exit 1 if external references remain, 2 if any cannot be mapped")
    args = ap.parse_args(argv)
    try:
        return vendor(args.html_dir, args.cache_dir.resolve(), args.npm, args.check)
    except VendorError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
