"""A screenshot of a report page as a reader's browser draws it (headless Chromium, through Qt WebEngine).

    python -m kdlib.lab.screenshot reports/index.html reports/index.png     # or: make screenshot

Why Qt WebEngine: it is the one full browser engine that installs from the package registry alone
(``pip install -r requirements-screenshot.txt``: PyQt6 and PyQt6-WebEngine, ~200 MB); Playwright and
pyppeteer download their browsers from the internet at first use, and an HTML-to-PDF renderer (WeasyPrint)
is not a browser. It runs without a display (``QT_QPA_PLATFORM=offscreen``) and without a GPU.

The page is loaded, laid out at `width` pixels, resized to its full height (at most `max_height`) and
grabbed once images have loaded. Nothing here is imported by the lab: the dependency is optional.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

INSTALL_HINT = "pip install -r requirements-screenshot.txt (PyQt6 and PyQt6-WebEngine from the package registry)"


def screenshot(page: str | Path, out: str | Path, *, width: int = 1280, max_height: int = 6000,
               settle_ms: int = 1000, timeout_s: float = 60.0) -> Path:
    """Render `page` (a local HTML file) to the PNG `out`; returns `out`. Raises naming the cause when the
    page is missing, the engine is not installed, or the page does not load."""
    page, out = Path(page).resolve(), Path(out)
    if not page.is_file():
        raise FileNotFoundError(f"no page to screenshot at {page} (run `make reports` or `python -m kdlib run` first)")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("QTWEBENGINE_CHROMIUM_FLAGS", "--no-sandbox --disable-gpu --log-level=3")
    os.environ.setdefault("QT_LOGGING_RULES", "*=false")  # no GL context offscreen: Qt says so at every start
    try:
        from PyQt6.QtCore import QSize, QTimer, QUrl
        from PyQt6.QtWebEngineWidgets import QWebEngineView
        from PyQt6.QtWidgets import QApplication
    except ImportError as exc:
        raise RuntimeError(f"the screenshot needs Qt WebEngine: {INSTALL_HINT} ({exc})") from exc

    app = QApplication.instance() or QApplication(sys.argv[:1])
    view = QWebEngineView()
    view.resize(QSize(width, 900))
    state: dict = {"error": None, "saved": False}

    def grab():
        out.parent.mkdir(parents=True, exist_ok=True)
        state["saved"] = view.grab().save(str(out), "PNG")
        app.quit()

    def sized(height):
        view.resize(QSize(width, min(int(height or 900), max_height)))
        QTimer.singleShot(settle_ms, grab)

    def loaded(ok: bool):
        if not ok:
            state["error"] = f"the browser could not load {page}"
            app.quit()
            return
        view.page().runJavaScript("document.documentElement.scrollHeight", sized)

    def give_up():
        state["error"] = f"no screenshot of {page} after {timeout_s:.0f} s"
        app.quit()

    view.loadFinished.connect(loaded)
    view.load(QUrl.fromLocalFile(str(page)))
    view.show()
    QTimer.singleShot(int(timeout_s * 1000), give_up)
    app.exec()
    view.close()
    if state["error"] or not state["saved"]:
        raise RuntimeError(state["error"] or f"could not write {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdlib.lab.screenshot", description=__doc__.splitlines()[0])
    parser.add_argument("page", nargs="?", default="reports/index.html")
    parser.add_argument("out", nargs="?", default="reports/index.png")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--max-height", type=int, default=6000)
    args = parser.parse_args(argv)
    try:
        path = screenshot(args.page, args.out, width=args.width, max_height=args.max_height)
    except (RuntimeError, FileNotFoundError) as exc:
        print(f"screenshot: {exc}", file=sys.stderr)
        return 2
    print(f"screenshot of {args.page}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
