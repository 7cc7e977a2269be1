"""The page in a real browser: Debian's chromium (through chromium-driver and Selenium) draws a HOMUS
test sample with pointer events on a live `homus serve`, reads the model's answer off the page,
and saves the symbol in collect mode. Writes a screenshot (also to $HOMUS_SCREENSHOT when set).

docs/serve/page.png is made with a finished run that reads well:
    HOMUS_BROWSER_RUN=<run> HOMUS_SCREENSHOT=docs/serve/page.png pytest tests/test_browser.py"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port

from homus_render.strokes import parse_file

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
                                reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, "
                                       "/usr/bin/chromedriver): apt-get install chromium chromium-driver")
webdriver = pytest.importorskip("selenium.webdriver")
httpx = pytest.importorskip("httpx")


def wait_for(fn, timeout: float = 30.0, what: str = "the condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = fn()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def run(request, tmp_path_factory):
    """A tiny model trained here, or the finished run $HOMUS_BROWSER_RUN names (for a screenshot
    of a model that reads well)."""
    if os.environ.get("HOMUS_BROWSER_RUN"):
        return Path(os.environ["HOMUS_BROWSER_RUN"])
    return request.getfixturevalue("tiny_homus_run")


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    """A live `homus serve` of the tiny run on a free port, always stopped."""
    collect = tmp_path_factory.mktemp("browser-collect") / "collected"
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    log = (collect.parent / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "homus.cli", "serve", str(run), "--host", "127.0.0.1",
                             "--port", str(port), "--collect-dir", str(collect), "--log-level", "warning"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def up():
            if proc.poll() is not None:
                raise AssertionError(f"homus serve exited: {(collect.parent / 'server.log').read_text()}")
            try:
                return httpx.get(f"{url}/api/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 90, "homus serve to answer")
        yield {"url": url, "collect": collect}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def browser(tmp_path):
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1000,1000", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(arg)
    from selenium.webdriver.chrome.service import Service

    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def drawable_test_sample(run):
    """A test-split sample of the run that is quick to draw (few points, fits the pad)."""
    from classifier.runfolder import RunFolder

    raw = RunFolder(run).raw_dir()
    for sample_id in RunFolder(run).split()["test"]:
        writer = sample_id.split("-")[0]
        s = parse_file(raw / writer / f"{sample_id}.txt")
        n = sum(len(k) for k in s.strokes)
        if 2 <= len(s.strokes) <= 4 and 30 <= n <= 150:
            return s
    raise AssertionError("no drawable test sample")


def draw(driver, pad, strokes) -> None:
    """The strokes (tablet units), centred on the pad, drawn with pen pointer events."""
    import numpy as np
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", pad)  # all of it in the viewport
    pts = np.concatenate(strokes)
    shift = np.array([100, 135]) - (pts.min(0) + pts.max(0)) / 2  # the symbol's centre on the pad's
    w, h = pad.rect["width"], pad.rect["height"]
    for stroke in strokes:
        actions = ActionBuilder(driver, mouse=PointerInput(interaction.POINTER_PEN, "pen"), duration=0)
        for i, (x, y) in enumerate(stroke + shift):
            ox, oy = round(x / 200 * w - w / 2), round(y / 270 * h - h / 2)
            actions.pointer_action.move_to(pad, ox, oy)
            if i == 0:
                actions.pointer_action.pointer_down()
        actions.pointer_action.pointer_up()
        actions.perform()


def test_draw_read_and_collect_in_chromium(server, browser, run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    sample = drawable_test_sample(run)
    browser.get(server["url"] + "/")
    wait_for(lambda: browser.execute_script("return document.body.dataset.ready === '1'"), 30, "the page")
    pad = browser.find_element(By.ID, "pad")
    draw(browser, pad, list(sample.strokes))
    n = len(sample.strokes)
    sent = wait_for(lambda: browser.execute_script(
        "return window.homusPending === 0 && window.homusLastStrokes && window.homusLastStrokes.length === "
        f"{n} ? window.homusLastStrokes : null"), 30, "the page's prediction")
    assert all(len(s) >= 1 for s in sent)
    on_page = browser.find_element(By.ID, "top-label").text
    api = httpx.post(server["url"] + "/api/predict", json={"strokes": sent, "top_k": 5}, timeout=10).json()
    assert on_page == api["predictions"][0]["label"]
    rows = browser.find_elements(By.CSS_SELECTOR, "#predictions li")
    assert [r.get_attribute("data-label") for r in rows] == [p["label"] for p in api["predictions"]]
    assert browser.find_elements(By.CSS_SELECTOR, "#inputs img")
    maps = browser.find_elements(By.CSS_SELECTOR, "#saliency img")  # the top class's Grad-CAM over the ink
    assert len(maps) == 1 and maps[0].get_attribute("src").startswith("data:image/png;base64,")
    assert maps[0].is_displayed() and on_page in maps[0].get_attribute("alt")
    shot = tmp_path / "page.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("HOMUS_SCREENSHOT"):
        Path(os.environ["HOMUS_SCREENSHOT"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, os.environ["HOMUS_SCREENSHOT"])

    browser.find_element(By.ID, "mode-collect").click()
    Select(browser.find_element(By.ID, "label")).select_by_value(sample.label)
    writer = browser.find_element(By.ID, "writer")
    writer.clear()
    writer.send_keys("browser_test\n")  # Enter saves
    saved = wait_for(lambda: browser.execute_script("return window.homusLastSaved || null"), 30, "the save")
    path = server["collect"] / "browser_test" / "browser_test-1.txt"
    assert saved == {"path": str(path), "sample": "browser_test-1"}
    got = parse_file(path)
    assert got.label == sample.label and [s.tolist() for s in got.strokes] == sent
    wait_for(lambda: "browser_test" in browser.find_element(By.ID, "collect-status").text, 10, "the status line")
    assert browser.find_element(By.ID, "stroke-count").text == "0 strokes"  # the pad is clear for the next


def test_the_page_shows_no_answer_or_save_that_is_not_so(server, browser):
    """What a careless user does: Save double-clicked, Enter on a focused button, a long writer name,
    a stroke drawn while the server cannot be reached. The page saves once under the label it names,
    lets buttons do what they say, refuses rather than cuts a name, and never leaves an answer on
    screen for a drawing it does not belong to."""
    import numpy as np
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    line = [np.array([[100, 40], [100, 140], [101, 230]], float)]
    browser.get(server["url"] + "/")
    wait_for(lambda: browser.execute_script("return document.body.dataset.ready === '1'"), 30, "the page")
    pad, status = browser.find_element(By.ID, "pad"), browser.find_element(By.ID, "collect-status")
    count = browser.find_element(By.ID, "stroke-count")
    answered = "return window.homusPending === 0 && window.homusLastPrediction !== null"

    draw(browser, pad, line)  # a stroke while the server is out of reach: no answer shown for it
    wait_for(lambda: browser.execute_script(answered), 30, "the first answer")
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.emulateNetworkConditions", {"offline": True, "latency": 0,
                                                                 "downloadThroughput": -1, "uploadThroughput": -1})
    draw(browser, pad, line)
    error = browser.find_element(By.ID, "error")
    wait_for(lambda: error.is_displayed() and "did not answer" in error.text, 30, "the error")
    assert browser.find_element(By.ID, "top-label").text == "-"
    assert not browser.find_elements(By.CSS_SELECTOR, "#predictions li")
    assert browser.execute_script("return window.homusLastPrediction") is None
    browser.execute_cdp_cmd("Network.emulateNetworkConditions", {"offline": False, "latency": 0,
                                                                 "downloadThroughput": -1, "uploadThroughput": -1})
    browser.find_element(By.ID, "clear").click()
    wait_for(lambda: not error.is_displayed(), 10, "Clear to clear the error")

    browser.find_element(By.ID, "mode-collect").click()
    label = Select(browser.find_element(By.ID, "label"))
    label.select_by_index(3)
    chosen = label.first_selected_option.get_attribute("value")
    writer = browser.find_element(By.ID, "writer")
    writer.clear()
    writer.send_keys("a" * 40)  # longer than a writer may be: refused, never cut to 32 (names would merge)
    draw(browser, pad, line)
    browser.find_element(By.ID, "save").click()
    wait_for(lambda: "at most 32 characters (this one has 40)" in status.text, 10, "the writer's problem")
    assert writer.get_attribute("value") == "a" * 40 and not any(server["collect"].glob("a*"))

    writer.clear()
    writer.send_keys("twice")
    ActionChains(browser).double_click(browser.find_element(By.ID, "save")).perform()
    wait_for(lambda: browser.execute_script("return window.homusLastSaved || null"), 30, "the save")
    wait_for(lambda: count.text == "0 strokes" and browser.execute_script("return window.homusPending === 0"),
             10, "the pad to clear")
    time.sleep(1)  # a second save, were there one, has landed by now
    files = sorted((server["collect"] / "twice").glob("*.txt"))
    assert [f.name for f in files] == ["twice-1.txt"] and parse_file(files[0]).label == chosen
    assert status.text.startswith(f"Saved twice-1 ({chosen})")

    draw(browser, pad, line)
    draw(browser, pad, line)
    wait_for(lambda: count.text == "2 strokes", 10, "two strokes")
    browser.execute_script("document.getElementById('undo').focus()")
    browser.switch_to.active_element.send_keys(Keys.ENTER)  # Undo's Enter undoes; it does not save
    wait_for(lambda: count.text == "1 stroke", 10, "the undo")
    time.sleep(0.5)
    assert len(list((server["collect"] / "twice").glob("*.txt"))) == 1
