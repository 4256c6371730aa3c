#!/usr/bin/env python3
"""Check that a published asv dashboard renders a benchmark graph offline.

The dashboard is served from 127.0.0.1 with ``python -m http.server`` and
opened in headless Chromium.  Chromium is pointed at a local "proxy" that
answers every request with an error and records it: loopback traffic
bypasses the proxy, so anything the proxy sees is a request that would need
the internet.  This works the same whether or not the machine running the
check happens to be online.

The check fails (exit 1) when any of these holds:
  * an html file still references an external script/stylesheet,
  * the page tried to fetch anything that is not on 127.0.0.1 (Chromium's
    own update/account pings, listed in BROWSER_SERVICE_HOSTS, are ignored),
  * the local server answered any request with an error status,
  * the page fell back to asv's error.html (its "script failed to load" page),
  * the graph did not render: flot's canvas and axis tick labels must be in
    #main-graph, asv's error dialog must be empty, and the screenshot must
    show coloured (plotted) pixels in the graph area,
  * the regressions page (#regressions) did not get a sorted table, which is
    what the vendored stupidtable plugin provides,
  * any page logged an uncaught JavaScript error.

Exit status 2 means the check could not run (no index.html, no Chromium).

Usage:
    python benchmarks/dashboard/check_offline.py .asv/html
    python benchmarks/dashboard/check_offline.py .asv/html --bench bench_x.Class.time_y

Prints the screenshot path.  Standard library and matplotlib (a dependency of
metarl_bench, which reads the screenshot); installs Debian's ``chromium`` with
apt-get when it is missing and we are root.
"""

from __future__ import annotations

import argparse
import html.parser
import json
import os
import re
import shutil
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vendor_assets  # noqa: E402  (same directory; shares the definition of "external")

WINDOW = (1280, 800)
# Flags asked for by the project plus the ones headless Chromium needs in
# containers (small /dev/shm) and to keep its own background traffic quiet,
# so that whatever reaches the proxy is caused by the page.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--disable-default-apps",
    "--no-default-browser-check",
    "--disable-client-side-phishing-detection",
    "--disable-domain-reliability",
    "--no-pings",
    "--metrics-recording-only",
    "--disable-features=NetworkTimeServiceQuerying,AutofillServerCommunication,"
    "OptimizationHints,MediaRouter,Translate",
    "--hide-scrollbars",
    "--mute-audio",
    "--enable-logging=stderr",
    "--v=0",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
    # asv fetches index.json and the graph data with XHR after page load;
    # the virtual time budget makes Chromium wait for those before it dumps
    # the DOM or takes the screenshot (it ends early once the page is idle).
    "--virtual-time-budget=20000",
]
# Chromium still phones home to a few of its own services (component and
# extension updates, account checks) whatever the flags say.  Those requests
# come from the browser, not the dashboard, so they are ignored by exact host
# name.  Only hosts no web page would plausibly load assets from belong here;
# CDNs such as fonts.googleapis.com or ajax.googleapis.com must never be added.
BROWSER_SERVICE_HOSTS = {
    "accounts.google.com",
    "clients2.google.com",
    "clientservices.googleapis.com",
    "content-autofill.googleapis.com",
    "optimizationguide-pa.googleapis.com",
    "safebrowsingohttpgateway.googleapis.com",
    "update.googleapis.com",
    "redirector.gvt1.com",
    "edgedl.me.gvt1.com",
}
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class CheckError(Exception):
    pass


# --------------------------------------------------------------------------
# chromium
# --------------------------------------------------------------------------


def find_chromium(explicit: str | None, allow_install: bool) -> str:
    if explicit:
        path = shutil.which(explicit)
        if not path:
            raise CheckError(f"--chromium {explicit!r} not found")
        return path
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    if allow_install and os.geteuid() == 0 and shutil.which("apt-get"):
        print("chromium not found; installing Debian's chromium package with apt-get ...", file=sys.stderr)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise CheckError(f"'{' '.join(cmd)}' failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        path = shutil.which("chromium")
        if path:
            return path
    raise CheckError(
        "no Chromium found; install it (Debian: 'apt-get install -y chromium') or pass --chromium PATH"
    )


def run_chromium(chromium: str, url: str, mode_args: list[str], proxy_port: int,
                 profile: Path, timeout: float) -> subprocess.CompletedProcess:
    cmd = [
        chromium, *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        # Everything not on loopback goes to the blocking proxy.  Chromium
        # never proxies localhost/127.0.0.1, so the dashboard loads directly.
        f"--proxy-server=http://127.0.0.1:{proxy_port}",
        *mode_args, url,
    ]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise CheckError(f"chromium did not finish within {timeout:.0f}s: {' '.join(cmd)}") from None


# --------------------------------------------------------------------------
# local servers
# --------------------------------------------------------------------------


class _BlockingProxyHandler(socketserver.StreamRequestHandler):
    def handle(self):
        try:
            request_line = self.rfile.readline(8192).decode("latin-1").strip()
            while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                pass  # drain headers
            if request_line:
                self.server.seen.append(request_line)
            self.wfile.write(b"HTTP/1.1 502 Blocked by check_offline\r\n"
                             b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        except OSError:
            pass


class BlockingProxy(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _BlockingProxyHandler)
        self.seen: list[str] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    @staticmethod
    def host_of(request_line: str) -> str:
        # "CONNECT host:443 HTTP/1.1" for https, "GET http://host/path HTTP/1.1" for http.
        parts = request_line.split()
        target = parts[1] if len(parts) > 1 else ""
        target = re.sub(r"^[a-z]+://", "", target, flags=re.IGNORECASE)
        return re.split(r"[/:?]", target, maxsplit=1)[0].lower()


class StaticServer:
    """``python -m http.server`` on a free port, with its access log kept."""

    def __init__(self, directory: Path, log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "w")
        # Port 0 lets the OS pick a free port atomically; the server prints it.
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
             "--directory", str(directory)],
            stdout=subprocess.PIPE, stderr=self._log, text=True,
        )
        line = self.proc.stdout.readline()
        m = re.search(r"port (\d+)", line)
        if not m:
            self.stop()
            raise CheckError(f"could not start http.server: {line!r}")
        self.port = int(m.group(1))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()

    def requests(self) -> list[tuple[str, int]]:
        """(request line, status) for every request served so far."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            m = re.search(r'"([^"]*)" (\d{3}) ', line + " ")
            if m:
                out.append((m.group(1), int(m.group(2))))
        return out


# --------------------------------------------------------------------------
# evidence that the graph rendered
# --------------------------------------------------------------------------


class _GraphDomFacts(html.parser.HTMLParser):
    """Collect what flot leaves in the DOM inside #main-graph.

    Flot 0.8 draws the data on a <canvas class="flot-base"> and writes axis
    tick labels as <div class="flot-tick-label"> text; the labels only exist
    once flot has laid out axes from real data.
    """

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self):
        super().__init__()
        self.depth = 0  # open elements inside #main-graph (0 = outside)
        self.in_tick = False
        self.in_error_msg = 0
        self.in_title = 0
        self.canvases: list[str] = []
        self.tick_labels: list[str] = []
        self.error_message = ""
        self.title = ""
        self.page_title = ""
        self._in_head_title = False
        self._in_legend = False
        # flot's legend: (left, top, width, height) of its background box,
        # relative to #main-graph.  Its colour swatches must not be mistaken
        # for plotted data.
        self.legend_box: tuple[float, float, float, float] | None = None

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        classes = a.get("class", "").split()
        if tag == "title":
            self._in_head_title = True
        if self.in_error_msg and tag not in self.VOID:
            self.in_error_msg += 1
        elif a.get("id") == "error-message":
            self.in_error_msg = 1
        if self.in_title and tag not in self.VOID:
            self.in_title += 1
        elif a.get("id") == "title":
            self.in_title = 1
        if self.depth:
            if tag == "canvas":
                self.canvases.append(a.get("class", ""))
            if "legend" in classes:
                self._in_legend = True
            elif self._in_legend and tag == "div" and self.legend_box is None:
                box = dict(re.findall(r"(left|top|width|height):\s*([\d.]+)px", a.get("style", "")))
                if len(box) == 4:
                    self.legend_box = tuple(float(box[k]) for k in ("left", "top", "width", "height"))
            if "flot-tick-label" in classes:
                self.in_tick = True
                self.tick_labels.append("")
            if tag not in self.VOID:
                self.depth += 1
        elif a.get("id") == "main-graph":
            self.depth = 1

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_head_title = False
        if tag in self.VOID:
            return
        if self.depth:
            self.depth -= 1
            self.in_tick = False
        if self.in_error_msg:
            self.in_error_msg -= 1
        if self.in_title:
            self.in_title -= 1

    def handle_data(self, data):
        if self.in_tick and self.tick_labels:
            self.tick_labels[-1] += data.strip()
        if self.in_error_msg:
            self.error_message += data.strip()
        if self.in_title:
            self.title += data.strip()
        if self._in_head_title:
            self.page_title += data.strip()


def read_png_rgb(path: Path):
    """The screenshot's pixels as an (height, width, 3) array of 0..255 RGB values, read by
    matplotlib (which reads PNG through Pillow)."""
    import matplotlib.image
    import numpy as np

    try:
        pixels = matplotlib.image.imread(path, format="png")
    except (OSError, ValueError, SyntaxError) as exc:
        raise CheckError(f"{path} is not a readable PNG: {exc}") from None
    rgb = pixels[..., :3]
    return np.round(rgb * 255) if rgb.dtype.kind == "f" else rgb.astype(float)


# Where asv 0.6's index.html puts #main-graph in the page: the graph column
# starts 220px from the left and 60px + 48px from the top; the bottom 110px
# belong to the overview strip.
MAIN_GRAPH_ORIGIN = (220, 108)


def count_plot_pixels(png: Path, legend_box: tuple[float, float, float, float] | None) -> int:
    """Count strongly coloured pixels inside #main-graph, legend excluded.

    Axes, grid, labels and page chrome are grey, while asv's series colours
    (#247AAD, #E24A33, ...) are saturated, so saturated pixels there mean flot
    drew data on its canvas.  Even a single-commit graph (one small circle)
    gives a few dozen.
    """
    import numpy as np

    rgb = read_png_rgb(png)
    height, width = rgb.shape[:2]
    ox, oy = MAIN_GRAPH_ORIGIN
    ys, xs = np.mgrid[:height, :width]
    inside = (xs >= ox) & (xs < width - 10) & (ys >= oy) & (ys < height - 110)
    if legend_box:
        left, top, w, h = legend_box
        inside &= ~((xs >= ox + left - 5) & (xs <= ox + left + w + 5)
                    & (ys >= oy + top - 5) & (ys <= oy + top + h + 5))
    saturated = rgb.max(-1) - rgb.min(-1) >= 60
    return int((inside & saturated).sum())


# --------------------------------------------------------------------------
# main check
# --------------------------------------------------------------------------


# A single data point is drawn as a small ring of ~40 coloured pixels.
MIN_PLOT_PIXELS = 15


def pick_benchmark(html_dir: Path) -> str:
    try:
        index = json.loads((html_dir / "index.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckError(f"cannot read {html_dir / 'index.json'} ({e}); run 'asv publish' first") from None
    names = sorted(index.get("benchmarks", {}))
    if not names:
        raise CheckError(f"{html_dir / 'index.json'} lists no benchmarks; run 'asv run' first")
    # after runs of a subset, the first benchmark may have no results and its page would
    # only say "No data": take the first that has a graph
    drawn = {p.stem for p in (html_dir / "graphs").rglob("*.json") if p.parent.name != "summary"}
    with_data = [name for name in names if name in drawn]
    if not with_data:
        raise CheckError(f"no benchmark in {html_dir} has results; run 'asv run' first")
    return with_data[0]


def check(html_dir: Path, bench: str | None, chromium: str, screenshot: Path,
          timeout: float, verbose: bool, ignore_hosts: set[str]) -> list[str]:
    problems: list[str] = []

    scan = vendor_assets.scan(html_dir)
    for r in scan.refs:
        if vendor_assets.is_external(r.url):
            problems.append(f"{r.file.relative_to(html_dir)} references external {r.url} "
                            "(run vendor_assets.py first)")
    for path, url in scan.dynamic:
        problems.append(f"{path.relative_to(html_dir)} contains external URL {url}")

    bench = bench or pick_benchmark(html_dir)
    work = Path(tempfile.mkdtemp(prefix="asv-offline-"))
    proxy = BlockingProxy()
    server = StaticServer(html_dir, work / "http.log")
    try:
        url = f"http://127.0.0.1:{server.port}/index.html#{bench}"
        print(f"checking {url}", file=sys.stderr)

        t0 = time.monotonic()
        dom_run = run_chromium(chromium, url, ["--dump-dom"], proxy.port, work / "profile-dom", timeout)
        t1 = time.monotonic()
        shot_run = run_chromium(chromium, url, [f"--screenshot={screenshot}"], proxy.port,
                                work / "profile-shot", timeout)
        t2 = time.monotonic()
        # The regressions page is the only user of the stupidtable plugin,
        # which is vendored at a different version than asv's CDN pin.
        reg_url = f"http://127.0.0.1:{server.port}/index.html#regressions"
        reg_run = run_chromium(chromium, reg_url, ["--dump-dom"], proxy.port, work / "profile-reg", timeout)
        t3 = time.monotonic()
        print(f"chromium: graph dump-dom {t1 - t0:.1f}s, screenshot {t2 - t1:.1f}s, "
              f"regressions dump-dom {t3 - t2:.1f}s", file=sys.stderr)
        (work / "dom.html").write_text(dom_run.stdout)
        (work / "regressions-dom.html").write_text(reg_run.stdout)
        (work / "chromium-dom.log").write_text(dom_run.stderr)
        (work / "chromium-shot.log").write_text(shot_run.stderr)
        (work / "chromium-regressions.log").write_text(reg_run.stderr)
    finally:
        server.stop()
        proxy.shutdown()
        proxy.server_close()

    for run, what in ((dom_run, "--dump-dom"), (shot_run, "--screenshot"), (reg_run, "regressions --dump-dom")):
        if run.returncode != 0:
            problems.append(f"chromium {what} exited with {run.returncode}; see {work}/chromium-*.log")

    ignored = []
    for line in dict.fromkeys(proxy.seen):
        if BlockingProxy.host_of(line) in ignore_hosts:
            ignored.append(line)
        else:
            problems.append(f"page tried to reach the network: {line}")

    served = server.requests()
    for req, status in served:
        if status >= 400:
            problems.append(f"local server answered {status} to {req}")
    if not any(f"/{bench}.json" in req and status == 200 for req, status in served):
        problems.append(f"the graph data for {bench} was never fetched from the local server")

    # Chromium logs console messages as CONSOLE lines; asv reports nothing
    # there when healthy, so an uncaught error means some script broke.
    for log in (dom_run.stderr, shot_run.stderr, reg_run.stderr):
        for line in log.splitlines():
            if "CONSOLE" in line and re.search(r"Uncaught|Failed to load resource|is not defined", line):
                problems.append(f"browser console: {line.split(']', 1)[-1].strip()}")

    facts = _GraphDomFacts()
    facts.feed(dom_run.stdout)
    if "error" in facts.page_title.lower() or "continental origin" in dom_run.stdout:
        problems.append("page redirected to asv's error.html: a script failed to load")
    else:
        if not any("flot-base" in c for c in facts.canvases):
            problems.append("no flot canvas inside #main-graph: the plot was not drawn")
        numeric_ticks = [t for t in facts.tick_labels if re.search(r"\d", t)]
        if len(numeric_ticks) < 2:
            problems.append(f"#main-graph has no axis tick labels ({facts.tick_labels!r}): flot had no data")
        if facts.error_message:
            problems.append(f"asv showed an error dialog: {facts.error_message}")
        if facts.title and bench not in facts.title:
            problems.append(f"page title is {facts.title!r}, expected the benchmark name {bench!r}")

    # stupidtable marks the sorted column "sorting-asc/desc" and asv's
    # aftertablesort handler adds "asc/desc"; both run even with no regressions.
    if "continental origin" in reg_run.stdout:
        problems.append("regressions page redirected to asv's error.html: a script failed to load")
    elif not re.search(r'<th[^>]*class="[^"]*\bsorting-(?:asc|desc)\b[^"]*\b(?:asc|desc)\b', reg_run.stdout):
        problems.append("regressions table was not sorted: the stupidtable plugin did not work")

    if not screenshot.is_file():
        problems.append(f"chromium wrote no screenshot to {screenshot}")
    else:
        coloured = count_plot_pixels(screenshot, facts.legend_box)
        if verbose or coloured < MIN_PLOT_PIXELS:
            print(f"coloured pixels in graph area: {coloured} (legend box {facts.legend_box})", file=sys.stderr)
        if coloured < MIN_PLOT_PIXELS:
            problems.append(f"screenshot shows no plotted data in the graph area ({coloured} coloured pixels)")

    if verbose:
        print(f"work dir (DOM, logs): {work}", file=sys.stderr)
        print(f"local requests served: {len(served)}", file=sys.stderr)
        for line in ignored:
            print(f"ignored browser background request: {line[:120]}", file=sys.stderr)
        print(f"canvases: {facts.canvases}; tick labels: {facts.tick_labels}", file=sys.stderr)
    # The graph page is loaded twice (DOM, screenshot), so drop repeats.
    problems = list(dict.fromkeys(problems))
    if problems:
        print(f"(DOM and browser logs kept in {work})", file=sys.stderr)
    elif not verbose:
        shutil.rmtree(work, ignore_errors=True)
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("html_dir", type=Path, help="published asv html directory")
    ap.add_argument("--bench", help="benchmark whose graph page to open (default: the first in index.json "
                         "that has results)")
    ap.add_argument("--screenshot", type=Path,
                    help="where to write the PNG (default: a new temporary directory)")
    ap.add_argument("--chromium", help="browser executable (default: first of %s on PATH)" % ", ".join(CHROMIUM_NAMES))
    ap.add_argument("--no-install", action="store_true", help="never apt-get install chromium")
    ap.add_argument("--timeout", type=float, default=120, help="seconds per chromium run (default: %(default)s)")
    ap.add_argument("--ignore-host", action="append", default=[], metavar="HOST",
                    help="another host of Chromium's own background traffic to ignore (repeatable)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)

    html_dir = args.html_dir.resolve()
    screenshot = (args.screenshot or Path(tempfile.mkdtemp(prefix="asv-shot-")) / "graph.png").resolve()
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    if screenshot.exists():
        screenshot.unlink()  # never mistake an old screenshot for a fresh one
    try:
        if not (html_dir / "index.html").is_file():
            raise CheckError(f"{html_dir} has no index.html; run 'asv publish' first")
        chromium = find_chromium(args.chromium, not args.no_install)
        ignore_hosts = BROWSER_SERVICE_HOSTS | {h.lower() for h in args.ignore_host}
        problems = check(html_dir, args.bench, chromium, screenshot, args.timeout, args.verbose, ignore_hosts)
    except CheckError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"screenshot: {screenshot}")
    if problems:
        print("FAIL: the dashboard does not render offline:", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print("OK: graph rendered with no external requests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
