"""The HTML report loads in headless Chromium with no console errors, shows every figure, and is not blank."""

import shutil
import subprocess

import pytest

from exitlab.recipes.compare.report import build_report

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium not found: install Debian's chromium package (apt-get install chromium)")
    return path


def test_report_in_headless_chromium(compared, tmp_path):
    out, summary = compared
    page = build_report(out)
    html = page.read_text()
    assert "http://" not in html and "https://" not in html  # self-contained: nothing to fetch
    assert html.count("data:image/png;base64,") == 3
    url = page.resolve().as_uri()
    dom = subprocess.run([_chromium(), *FLAGS, f"--user-data-dir={tmp_path / 'p1'}", "--enable-logging=stderr",
                          "--v=0", "--virtual-time-budget=5000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120)
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    assert 'data-images="3/3"' in dom.stdout  # every figure decoded with a non-zero size
    for row in ("joint", "disjoint", "mixed"):
        assert f"<td>{row}</td>" in dom.stdout
    shot = tmp_path / "shot.png"
    subprocess.run([_chromium(), *FLAGS, f"--user-data-dir={tmp_path / 'p2'}", "--window-size=1200,2000",
                    "--virtual-time-budget=5000", f"--screenshot={shot}", url], capture_output=True, timeout=120)
    from PIL import Image

    img = Image.open(shot).convert("L")
    hist = img.histogram()  # 256 bins of grey levels
    dark = sum(hist[:200]) / sum(hist)
    assert img.size == (1200, 2000)
    assert dark > 0.01, f"screenshot is (nearly) blank: {dark:.4f} of pixels are not white"


def test_report_without_results_is_a_clear_error(tmp_path):
    from exitlab.errors import ExitlabError

    with pytest.raises(ExitlabError, match="holds no comparison results"):
        build_report(tmp_path)
