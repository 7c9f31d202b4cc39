"""The report index as a browser draws it (kdlib.lab.screenshot; the browser engine is an optional install)."""

import subprocess
import sys

import pytest

from kdlib.lab import screenshot


def test_a_missing_page_is_named_before_any_browser_starts(tmp_path):
    with pytest.raises(FileNotFoundError, match="no page to screenshot at .*index.html"):
        screenshot.screenshot(tmp_path / "index.html", tmp_path / "index.png")


@pytest.mark.slow
def test_headless_browser_draws_the_whole_page(tmp_path):
    pytest.importorskip("PyQt6.QtWebEngineWidgets", reason=screenshot.INSTALL_HINT)
    import matplotlib.image

    page = tmp_path / "index.html"
    page.write_text("<html><body style='margin:0'><div style='height:2400px;background:#ff0000'></div>"
                    "<p>end</p></body></html>")
    out = tmp_path / "shot.png"
    done = subprocess.run([sys.executable, "-m", "kdlib.lab.screenshot", str(page), str(out), "--width", "400"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    pixels = matplotlib.image.imread(out)
    assert pixels.shape[1] == 400 and pixels.shape[0] > 2400  # laid out at the width, grown to the full height
    top = pixels[10, 10, :3]
    assert top[0] > 0.9 and top[1] < 0.1 and top[2] < 0.1  # the page's red, not an empty white grab
