"""The report in a real browser: headless Chromium through Selenium.

Needs /usr/bin/chromium and /usr/bin/chromedriver (``scripts/install-chromium.sh``).
The page is opened from ``file://``, built from results with and without a planted
truth; every image must decode, the findings table and the summary figure must
render on the first screen, the console must stay free of errors and no request may
leave the machine. Screenshots are saved in the test's temporary folder and, when
``IMMUNE_AGING_SCREENSHOT_DIR`` is set, in ``truth/`` or ``no-truth/`` below it.
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


@pytest.mark.parametrize("truth", [True, False], ids=["truth", "no-truth"])
def test_report_renders_offline_in_chromium(driver, tmp_path, monkeypatch, truth):
    monkeypatch.setenv("IMMUNE_AGING_LOG_DIR", str(tmp_path / "logs"))
    from immune_aging.stages import report as report_stage

    root = make_results(tmp_path / "results", truth=truth)["root"]
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
    assert len(images) == 3
    for complete, width, alt in images:
        assert complete and width > 0, alt

    # the answer on the first screen: the summary figure and the findings table
    first_screen = driver.execute_script(
        "const fig = document.querySelector('#findings figure img');"
        "const table = document.querySelector('#findings table.findings');"
        "const rows = table.querySelectorAll('tbody tr');"
        "const box = e => e.getBoundingClientRect();"
        "return {fig: [fig.complete, fig.naturalWidth, box(fig).top, box(fig).height],"
        " table: [rows.length, box(table).top, box(rows[0]).height],"
        " screen: window.innerHeight,"
        " validation: document.getElementById('validation') !== null};"
    )
    complete, width, top, height = first_screen["fig"]
    assert complete and width > 0 and height > 100 and top < first_screen["screen"]
    n_rows, table_top, row_height = first_screen["table"]
    assert n_rows == 3 and row_height > 0 and table_top < first_screen["screen"]
    assert first_screen["validation"] is truth

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
        folder = Path(target) / ("truth" if truth else "no-truth")
        folder.mkdir(parents=True, exist_ok=True)
        for shot in shots:
            shutil.copy(shot, folder / shot.name)
