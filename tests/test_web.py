"""The operator page in a real headless Chromium (Playwright), against a running daemon."""
import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import CLASSES, operator_line, running, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = Path(os.environ.get("SCRAPSORT_SCREENSHOTS", "runs/screenshots"))
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")


@pytest.fixture
def line(tmp_path, trained_run):
    _, run = trained_run
    sorter = operator_line(tmp_path, run)
    with running(sorter):
        yield sorter, f"http://127.0.0.1:{sorter.web.port}", run


def test_operator_page(line, tmp_path):
    from playwright.sync_api import sync_playwright

    sorter, base, run = line
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(base)
        page.wait_for_selector("#ready.ok", timeout=15000)

        # Live view: the MJPEG stream renders and the latest decision shows up.
        page.wait_for_function("document.getElementById('live').naturalWidth > 0", timeout=15000)
        page.wait_for_function("document.getElementById('last').textContent.startsWith('last item')", timeout=20000)
        first = page.text_content("#last")
        page.wait_for_function(f"document.getElementById('last').textContent !== {first!r}", timeout=20000)
        page.screenshot(path=str(SCREENSHOTS / "live.png"))

        # Without the token, classify and the controls are refused, and say why.
        image = sorted((run.parent / "data" / "glass").glob("*.jpg"))[0]
        page.click("a[href='#classify']")
        page.set_input_files("#files", str(image))
        page.click("#classify")
        page.wait_for_selector(".result .error", timeout=15000)
        assert "token" in page.text_content(".result .error")
        page.click("a[href='#line']")
        page.click("#pause")
        page.wait_for_selector("#control-msg.error", timeout=5000)
        assert "token" in page.text_content("#control-msg")
        assert sorter.controls.state() == (False, None)

        # With it: classify an uploaded image (class, confidence and top-3), pause and resume.
        page.fill("#token", "s3cret-token")
        page.click("a[href='#classify']")
        page.click("#classify")
        page.wait_for_selector(".result .label", timeout=15000)
        assert page.text_content(".result .label") in CLASSES
        assert page.text_content(".result .top3").count("%") == 3
        page.screenshot(path=str(SCREENSHOTS / "classify.png"))
        page.click("a[href='#line']")
        page.click("#pause")
        page.wait_for_function("document.getElementById('control-msg').textContent === 'sorting paused'")
        assert sorter.controls.state()[0] is True
        page.click("#resume")
        page.wait_for_function("document.getElementById('control-msg').textContent === 'sorting'")

        # Review queue: relabel the first low-confidence capture as metal, signed by the operator.
        page.fill("#reviewer", "Ana Lima")
        page.click("a[href='#review']")
        page.wait_for_selector(".review", timeout=20000)
        item = page.locator(".review").first
        decision_id = item.get_attribute("data-id")
        item.locator("select").select_option("metal")
        item.locator("button.label").click()
        page.wait_for_selector(".review .msg:has-text('saved to')", timeout=5000)
        page.screenshot(path=str(SCREENSHOTS / "review.png"))
        browser.close()

    saved = list((tmp_path / "line" / "review" / "metal").glob(f"review-{decision_id}-*.jpg"))
    assert len(saved) == 1 and saved[0].read_bytes().startswith(b"\xff\xd8")
    filed = [json.loads(line) for line in (tmp_path / "line" / "review" / "reviews.jsonl").read_text().splitlines()]
    assert len(filed) == 1 and filed[0]["reviewer"] == "Ana Lima" and filed[0]["decision_id"] == int(decision_id)
    assert filed[0]["file"] == f"metal/{saved[0].name}" and filed[0]["line_model"] == sorter.model.sha256[:12]

    def logged():
        with sqlite3.connect(str(sorter.audit.path), timeout=5) as db:
            return [json.loads(d) for k, d in db.execute("SELECT kind, detail FROM events WHERE kind IN "
                                                         "('operator', 'relabel') ORDER BY id")]
    assert wait_for(lambda: len(logged()) == 3, timeout=5)   # pause, resume, relabel; the refused one is not
    assert [e.get("action") for e in logged()[:2]] == ["pause", "resume"] and logged()[2]["label"] == "metal"
