"""The operator page's tabs in a real headless Chromium against a running simulated line:
camera (Chromium's fake camera), batch test, charts, CSV export, and a phone-sized screen.
Each test writes its screenshots to SCRAPSORT_SCREENSHOTS (default runs/screenshots)."""
import csv
import io
import json
import os
import shutil
import sqlite3
import zipfile
from pathlib import Path

import cv2
import pytest

from edge.vision.backends import open_backend
from edge.vision.images import read_image
from edge.vision.predict import Classifier
from tests.conftest import CLASSES, TOKEN, operator_line, running, wait_for
from tests.test_lifecycle import stamped_copy

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = Path(os.environ.get("SCRAPSORT_SCREENSHOTS", "runs/screenshots"))
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]  # a synthetic camera


@pytest.fixture
def line(tmp_path, trained_run):
    _, run = trained_run
    sets = tmp_path / "test-sets"
    small = sets / "small"
    for label in CLASSES:  # two images of each class: a folder the page may read
        (small / label).mkdir(parents=True)
        for image in sorted((run.parent / "data" / label).glob("*.jpg"))[:2]:
            shutil.copy(image, small / label / image.name)
    models = tmp_path / "models"  # what the Model box may swap to: a retrained copy, a wrong one
    models.mkdir()
    stamped_copy(run / "model.onnx", models / "v2.onnx", **{"scrapsort.version": "v2"})
    stamped_copy(run / "model.onnx", models / "rocks.onnx", **{"scrapsort.classes": json.dumps(CLASSES[:5] + ["rocks"])})
    sorter = operator_line(tmp_path, run, models={"dir": str(models), "canary": str(run.parent / "data")},
                           batch_root=str(sets))
    with running(sorter):
        yield sorter, f"http://127.0.0.1:{sorter.web.port}", run, small


@pytest.fixture
def page(line):
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        tab = context.new_page()
        tab.goto(line[1])
        tab.wait_for_selector("#ready.ok", timeout=15000)
        tab.fill("#token", TOKEN)
        yield tab
        browser.close()


def expected_accuracy(run: Path, folder: Path):
    """Scored here, independently of the page: the model over every image of the folder."""
    with open_backend(run / "model.onnx") as backend:
        classifier = Classifier(backend)
        outcomes = [classifier.classify(read_image(path))["class"] == path.parent.name
                    for path in sorted(folder.glob("*/*.jpg"))]
    return sum(outcomes), len(outcomes)


def test_camera_tab_classifies_the_webcam_and_files_a_frame_for_review(line, page, tmp_path):
    page.click("a[href='#camera']")
    page.click("#camera-start")
    page.wait_for_function("document.getElementById('camera-video').videoWidth > 0", timeout=15000)
    page.wait_for_function(f"{CLASSES!r}.some(c => document.getElementById('camera-label').textContent.startsWith(c))",
                           timeout=20000)
    assert page.text_content("#camera-top3").count("%") == 3
    page.screenshot(path=str(SCREENSHOTS / "camera.png"))
    page.select_option("#camera-class", "glass")
    page.click("#camera-save")
    page.wait_for_selector("#camera-saved:has-text('saved to')", timeout=10000)
    saved = list((tmp_path / "line" / "review" / "glass").glob("camera-*.jpg"))
    assert len(saved) == 1 and cv2.imread(str(saved[0])) is not None


@pytest.mark.parametrize("source", ["folder", "zip"])
def test_batch_tab_shows_the_right_accuracy_the_matrix_and_the_misses(line, page, tmp_path, source):
    sorter, base, run, small = line
    correct, total = expected_accuracy(run, small)
    page.click("a[href='#batch']")
    if source == "folder":
        page.fill("#batch-folder", "small")
        page.click("#batch-run-folder")
    else:
        archive = tmp_path / "set.zip"
        with zipfile.ZipFile(archive, "w") as z:
            for path in sorted(small.glob("*/*.jpg")):
                z.write(path, f"set/{path.parent.name}/{path.name}")
            z.writestr("../../outside/evil.jpg", b"\xff\xd8 not written anywhere")  # a hostile name: skipped
            z.writestr("set/README.txt", "not an image")
        page.set_input_files("#batch-zip", str(archive))
        page.click("#batch-run-zip")
    page.wait_for_selector("#batch-result:not([hidden])", timeout=60000)
    assert f"({correct}/{total};" in page.text_content("#batch-accuracy")
    cells = page.locator("#batch-matrix rect")
    assert cells.count() == len(CLASSES) ** 2
    assert sum(int(cells.nth(i).get_attribute("data-count")) for i in range(cells.count())) == total
    assert page.locator(".miss").count() == total - correct
    if total - correct:
        page.wait_for_function("[...document.querySelectorAll('.miss img')].every(i => i.naturalWidth > 0)")
    page.screenshot(path=str(SCREENSHOTS / f"batch-{source}.png"), full_page=True)
    with page.expect_download() as download:
        page.click("#batch-csv")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert len(rows) == total and sum(int(r["correct"]) for r in rows) == correct
    if source == "zip":
        assert "skipped" in page.text_content("#batch-msg")
        assert not (tmp_path / "outside").exists() and not any(tmp_path.parent.glob("outside"))


def test_charts_tab_draws_the_last_hour_from_the_daemons_own_counters(line, page):
    sorter = line[0]
    assert wait_for(lambda: sorter.telemetry.decisions >= 10, timeout=30)
    page.click("a[href='#charts']")
    page.wait_for_function("Number(document.getElementById('chart-items').dataset.total) >= 10", timeout=15000)
    total = int(page.get_attribute("#chart-items", "data-total"))
    assert total <= sorter.telemetry.decisions
    histogram = page.locator("#chart-confidence rect")
    assert histogram.count() == 10   # every decision lands in one confidence bin: the same total
    assert sum(int(histogram.nth(i).get_attribute("data-count")) for i in range(10)) == total
    assert page.locator("#chart-items path[data-series]").count() >= 1
    assert page.locator("#chart-latency path[data-series='inference p50']").count() == 1
    assert page.locator("#chart-rejects path").count() == 1
    assert page.locator("#chart-links rect[data-state='up']").count() >= 1   # the simulated valves' link
    page.screenshot(path=str(SCREENSHOTS / "charts.png"), full_page=True)


def test_export_tab_csv_round_trips_the_audit_rows_of_the_range(line, page):
    sorter = line[0]
    assert wait_for(lambda: sorter.audit.committed >= 10, timeout=30)
    page.click("a[href='#export']")
    page.screenshot(path=str(SCREENSHOTS / "export.png"))
    href = page.get_attribute("#export-link", "href")
    since, until = (float(part.split("=")[1]) for part in href.split("?")[1].split("&"))
    with page.expect_download() as download:
        page.click("#export-button")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    with sqlite3.connect(str(sorter.audit.path)) as db:
        ids = [r[0] for r in db.execute("SELECT id FROM decisions WHERE t_wall >= ? AND t_wall < ? ORDER BY id",
                                        (since, until))]
    # the line keeps sorting while the file streams: every row up to the last exported one is there, once
    assert ids[:len(rows)] == [int(r["id"]) for r in rows] and len(rows) >= 10
    assert {r["class"] for r in rows} <= set(CLASSES) and all(len(r["model_sha256"]) == 12 for r in rows)


def test_phone_screen_needs_no_sideways_scrolling_and_nothing_leaves_the_device(line, page):
    base, requested = line[1], []
    page.on("request", lambda request: requested.append(request.url))
    page.reload()
    page.set_viewport_size({"width": 390, "height": 844})
    for tab in ("charts", "camera", "classify", "batch", "review", "export", "line"):
        page.click(f"a[href='#{tab}']")
        page.wait_for_timeout(300)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, tab
    page.screenshot(path=str(SCREENSHOTS / "phone-line.png"), full_page=True)
    assert requested and all(url.startswith(base) for url in requested)   # no CDN, no fonts: works offline


def test_the_model_box_swaps_refuses_a_wrong_model_and_rolls_back(line, page):
    sorter, base, run, _ = line
    first = sorter.model
    page.wait_for_function(f"document.getElementById('model-running').textContent.includes({first.label!r})")
    assert page.eval_on_selector_all("#model-file option", "o => o.map(x => x.textContent)") == ["rocks.onnx", "v2.onnx"]
    page.select_option("#model-file", "rocks.onnx")
    page.click("#model-swap")
    page.wait_for_selector("#model-msg.error", timeout=20000)
    assert "differ from the line's" in page.text_content("#model-msg") and sorter.model.sha256 == first.sha256
    page.select_option("#model-file", "v2.onnx")
    page.click("#model-swap")
    page.wait_for_function("document.getElementById('model-msg').textContent.endsWith('running') || "
                           "document.getElementById('model-msg').textContent.includes('running ·')", timeout=30000)
    page.wait_for_function("document.getElementById('model-running').textContent.includes('v2@')", timeout=10000)
    assert sorter.model.version == "v2"
    page.screenshot(path=str(SCREENSHOTS / "model.png"))
    page.click("#model-rollback")
    page.wait_for_function(f"document.getElementById('model-running').textContent.includes('sorting with {first.label}')",
                           timeout=30000)
    assert sorter.model.sha256 == first.sha256
