"""The report in a real browser: headless Chromium through Selenium.

Needs /usr/bin/chromium and /usr/bin/chromedriver (``scripts/install-chromium.sh``).
The page is opened from ``file://``; every image must decode, the console must stay
free of errors and no request may leave the machine. A screenshot is saved in the
test's temporary folder and, when ``IMMUNE_AGING_SCREENSHOT_DIR`` is set, there too.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import pytest
from tests.test_report import argv, make_results

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="headless Chromium not installed (/usr/bin/chromium and /usr/bin/chromedriver); "
        "run scripts/install-chromium.sh",
    ),
]


@pytest.fixture
def driver(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    drv = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield drv
    finally:
        drv.quit()


def save_screenshots(drv, folder: Path) -> list[Path]:
    """Save the first screen and the whole page as PNG files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    top = folder / "report.png"
    drv.save_screenshot(str(top))
    width = drv.execute_script("return document.documentElement.scrollWidth")
    height = drv.execute_script("return document.documentElement.scrollHeight")
    shot = drv.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        },
    )
    full = folder / "report_full.png"
    full.write_bytes(base64.b64decode(shot["data"]))
    return [top, full]


def test_report_renders_offline_in_chromium(driver, tmp_path, monkeypatch):
    monkeypatch.setenv("IMMUNE_AGING_LOG_DIR", str(tmp_path / "logs"))
    from immune_aging.stages import report as report_stage

    root = make_results(tmp_path / "results")["root"]
    out = tmp_path / "report.html"
    assert report_stage.main(argv(root, out)) == 0
    url = out.resolve().as_uri()

    driver.get("about:blank")
    driver.get_log("performance")  # drop what the browser's start page requested
    driver.get_log("browser")
    driver.get(url)
    assert driver.execute_script("return document.readyState") == "complete"
    assert "Immune aging" in driver.title

    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt]);"
    )
    assert len(images) == 2
    for complete, width, alt in images:
        assert complete and width > 0, alt

    # anchors of the table of contents lead to sections that exist
    missing = driver.execute_script(
        "return Array.from(document.querySelectorAll('nav.toc a'))"
        ".map(a => a.getAttribute('href').slice(1))"
        ".filter(id => !document.getElementById(id));"
    )
    assert missing == []

    severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert severe == []

    requested = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            requested.append(message["params"]["request"]["url"])
    assert requested, "the performance log recorded no request at all"
    external = [u for u in requested if not u.startswith(("file://", "data:"))]
    assert external == []

    shots = save_screenshots(driver, tmp_path / "screenshots")
    assert all(p.stat().st_size > 0 for p in shots)
    if target := os.environ.get("IMMUNE_AGING_SCREENSHOT_DIR"):
        for shot in shots:
            Path(target).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(target) / shot.name)
