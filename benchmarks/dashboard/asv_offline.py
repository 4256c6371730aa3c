"""asv plugin: plain ``asv publish`` writes a dashboard that renders with no internet.

asv's page loads jQuery, flot, bootstrap and a few plugins from public CDNs, and asv has no
setting for where they come from. It does run every ``OutputPublisher`` subclass it knows
of after copying its page template into ``html_dir``, and it imports the modules listed
under ``"plugins"`` in ``asv.conf.json`` (a leading dot: from the folder asv is run in).
This module is listed there; its publisher runs ``vendor_assets.vendor`` on the freshly
written page (the same files from the npm registry, copied next to it, cached in
``.asv/npm-cache``). Without npm or the registry, ``asv publish`` still succeeds and says
loudly that its page needs the internet.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from asv.console import log
from asv.publishing import OutputPublisher

from benchmarks.dashboard import vendor_assets


class OfflineAssets(OutputPublisher):
    """Vendor the page's CDN assets; runs after asv's own pages (order: last)."""

    order = math.inf

    @classmethod
    def publish(cls, conf, repo, benchmarks, graphs, revisions):
        html = Path(conf.html_dir)
        try:
            vendor_assets.vendor(html, (html.parent / "npm-cache").resolve(),
                                 os.environ.get("NPM", "npm"), check_only=False)
        except vendor_assets.VendorError as exc:
            log.warning(f"the dashboard still loads its scripts from CDNs, so it needs the "
                        f"internet to render: vendoring them from npm failed: {exc}")
