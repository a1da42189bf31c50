"""The search page at `/` in a real headless browser (Debian's chromium via selenium) against a real
`vp-retail serve`: choose a photo, drop a photo, change k, see the gallery with scores and product
images; a non-image shows the server's sentence. A screenshot is written as a test artefact."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser(tmp_path, require):
    require(
        CHROMIUM is not None and CHROMEDRIVER is not None,
        "chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)",
    )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager (which would download a driver) never runs.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait_state(driver, state: str, timeout: float = 60.0) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.find_element("tag name", "body").get_attribute("data-state") == state)


def _cards(driver) -> list[tuple[str, str]]:
    return [
        (c.get_attribute("data-product-id"), c.find_element("css selector", ".score").text)
        for c in driver.find_elements("css selector", ".result")
    ]


@pytest.mark.slow  # ~24 s on 2 busy cores (12 s of it the deployed index and the server)
def test_search_page_in_headless_chromium(deployed, serve, browser, tmp_path):
    from selenium.webdriver.support.ui import Select, WebDriverWait

    index = tmp_path / "deploy"
    shutil.copytree(deployed / "deploy", index)
    server = serve(index)
    photo = deployed / "catalog" / "images" / "P0003" / "1.png"

    browser.get(server.url + "/")
    assert browser.title == "Visual product search"
    WebDriverWait(browser, 30).until(lambda d: "12 products" in d.find_element("id", "info").text)
    categories = [o.text for o in Select(browser.find_element("id", "category")).options]
    assert categories[0] == "all categories" and len(categories) > 2

    # Choose a photo: the gallery shows k=10 products, the photo's own product first with score 1.
    browser.find_element("id", "file").send_keys(str(photo))
    _wait_state(browser, "done")
    cards = _cards(browser)
    assert len(cards) == 10 and cards[0] == ("P0003", "score 1.000")
    assert all(score.startswith("score ") for _, score in cards)
    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script(
            "return [...document.querySelectorAll('.result img')].every(i => i.complete && i.naturalWidth > 0)"
        )
    )
    assert "10 results in" in browser.find_element("id", "status").text
    shot = Path(os.environ.get("VP_TEST_ARTIFACTS", tmp_path)) / "retail_search_page.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")

    # Fewer results.
    browser.execute_script("document.body.dataset.state = ''")
    Select(browser.find_element("id", "k")).select_by_visible_text("5")
    _wait_state(browser, "done")
    assert len(_cards(browser)) == 5

    # Drop a photo (a real drop event carrying a File) of another product.
    browser.execute_script("document.body.dataset.state = ''")
    browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        fetch('/items/P0007/image').then(r => r.blob()).then(blob => {
          const dt = new DataTransfer();
          dt.items.add(new File([blob], 'dropped.png', {type: 'image/png'}));
          document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
          done();
        });
        """
    )
    _wait_state(browser, "done")
    assert _cards(browser)[0] == ("P0007", "score 1.000")

    # A file that is not an image: the server's sentence, shown as an error.
    bad = tmp_path / "notes.png"
    bad.write_text("not really a picture")
    browser.execute_script("document.body.dataset.state = ''")
    browser.find_element("id", "file").send_keys(str(bad))
    _wait_state(browser, "error")
    status = browser.find_element("id", "status")
    assert "not an image of an allowed format" in status.text and status.get_attribute("class") == "error"
