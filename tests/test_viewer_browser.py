"""The viewer page in headless Chromium (selenium), served by uvicorn on 127.0.0.1 from a tiny store built here.

Skipped only where Chromium is not installed and ``CI`` is not set (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time

import cv2
import numpy as np
import pytest

from navml.viewer import create_app
from navml.viewer.review import read_collection

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER) and not os.environ.get("CI"), reason="chromium / chromedriver not installed (apt-get install chromium chromium-driver)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """uvicorn serving ``app`` on a free 127.0.0.1 port in a thread (stopped by :meth:`stop`)."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def chrome(width: int = 1400, height: int = 900):
    """Headless Chromium through chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--use-gl=swiftshader", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(DRIVER), options=opts)


def wait(driver, script: str, timeout: float = 30):
    """Poll a JS expression until truthy; its value."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = driver.execute_script(f"return {script}")
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {script}")


def test_page_loads_shows_tiles_toggles_layers_and_marks_false(tmp_path, small_grid):
    from selenium.webdriver.common.by import By
    from test_viewer import make_city

    paths, _, _ = make_city(tmp_path, small_grid)
    negatives = tmp_path / "mining" / "hard_negatives.geojson"
    served = Served(create_app({"test": paths}, negatives, tmp_path / "review.geojson"))
    driver = chrome()
    try:
        driver.get(served.url + "/")
        wait(driver, "window.navml && window.navml.ready")
        wait(driver, "document.querySelectorAll('img.leaflet-tile-loaded[src*=\"/imagery/\"]').length >= 4")
        wait(driver, "navml.layers().vectors.predictions.getLayers().length === 1")
        # every request of the page went to this server
        names = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert names and all(n.startswith(served.url + "/") for n in names), names
        # a rendered tile: the map shows the random imagery, not a uniform colour
        shot = cv2.imdecode(np.frombuffer(driver.get_screenshot_as_png(), "uint8"), cv2.IMREAD_COLOR)
        box = driver.find_element(By.ID, "map").rect
        region = shot[int(box["y"]) : int(box["y"] + box["height"]), int(box["x"]) : int(box["x"] + box["width"])]
        assert region.std() > 20
        # toggle the masks layer on in the layers control: mask tiles are requested and drawn
        labels = driver.find_elements(By.CSS_SELECTOR, ".leaflet-control-layers-overlays label")
        masks = next(lbl for lbl in labels if lbl.text.strip() == "masks")
        masks.find_element(By.TAG_NAME, "input").click()
        wait(driver, "document.querySelectorAll('img.leaflet-tile-loaded[src*=\"/masks/\"]').length >= 1")
        # select the prediction and press "mark false"
        driver.execute_script("const f = navml.layers().vectors.predictions.toGeoJSON().features[0]; navml.select('predictions', f);")
        driver.find_element(By.ID, "mark-false").click()
        wait(driver, "document.getElementById('review-msg').textContent.startsWith('saved')")
        neg = read_collection(negatives)
        assert len(neg) == 1 and neg[0]["properties"]["keep"] is True and neg[0]["properties"]["class"] == "parking"
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "404" not in e["message"]]
        assert not errors, errors
    finally:
        driver.quit()
        served.stop()


def test_dvc_plots_template_renders_offline(tmp_path):
    """``plots.html_template`` of .dvc/config: a page with the vendored Vega scripts that draws a plot with no network."""
    import configparser
    from pathlib import Path

    from dvc_render import VegaRenderer, render_html
    from selenium.webdriver.common.by import By

    root = Path(__file__).resolve().parents[1]
    cfg = configparser.ConfigParser()
    cfg.read(root / ".dvc" / "config")
    template = (root / ".dvc" / cfg["plots"]["html_template"]).resolve()
    text = template.read_text()
    assert "{plot_divs}" in text and "{scripts}" not in text  # no CDN script tags injected
    assert "http" not in text.replace("http-equiv", "")
    # the page's relative script paths expect dvc_plots/ beside navml/, as at the repository root
    (tmp_path / "navml").symlink_to(root / "navml")
    points = [{"step": i, "loss": 1 / (i + 1)} for i in range(20)]
    out = tmp_path / "dvc_plots" / "index.html"
    render_html([VegaRenderer(points, "loss", template="linear", x="step", y="loss")], out, html_template=template)
    driver = chrome(900, 600)
    try:
        driver.get(out.as_uri())
        wait(driver, "document.querySelector('svg.marks, canvas.marks') !== null")
        wait(driver, "document.querySelectorAll('.marks path, .marks line').length > 0 || !!document.querySelector('canvas.marks')")
        srcs = driver.execute_script("return Array.from(document.scripts).map(s => s.src).filter(s => s)")
        assert len(srcs) == 3 and all(s.startswith("file://") for s in srcs), srcs  # the vendored files only
        names = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert all(n.startswith("file://") for n in names), names  # nothing left the machine
        # the plot is drawn: its area holds dark line pixels on the white page, not only an empty element
        rect = driver.find_element(By.CSS_SELECTOR, "svg.marks, canvas.marks").rect
        shot = cv2.imdecode(np.frombuffer(driver.get_screenshot_as_png(), "uint8"), cv2.IMREAD_GRAYSCALE)
        area = shot[int(rect["y"]) : int(rect["y"] + rect["height"]), int(rect["x"]) : int(rect["x"] + rect["width"])]
        assert area.size and (area < 128).mean() > 0.005, (area < 128).mean()
        page = out.read_text()
        assert 'src="http' not in page and "cdn." not in page  # ("$schema" URLs are names, never fetched)
    finally:
        driver.quit()
