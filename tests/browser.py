"""Drive the app in a real browser: the page (`medxpert.app.streamlit_command`) on a free
local port, and headless Chromium (Debian's chromium and chromedriver) through Selenium. Used
by tests/test_browser.py and scripts/app_screenshot.py.

    with streamlit_app(env, log) as url, chromium(profile) as driver:
        page = AppPage(driver, url).open()
        page.choose("Text query")
        page.type_text("Text query", "cardiomegaly with effusion")
        page.diagnose()
        page.wait_for_text("Impression")
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from medxpert.app import PAGE, streamlit_command
from tests.builders import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Without the background-networking flags Chromium's own connections are refused in a sandbox
# with no network, and the page load stalls.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
WINDOW = (1400, 2000)


def missing_browser() -> str | None:
    """Why headless Chromium cannot run here (chromium or chromedriver absent), else None."""
    absent = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if absent:
        return (
            f"{' and '.join(absent)} not found (Debian: apt-get install chromium chromium-driver)"
        )
    return None


@contextmanager
def streamlit_app(env: Mapping[str, str], log: Path, *, timeout_s: float = 90) -> Iterator[str]:
    """Serve the app on 127.0.0.1 with `env` added to this process's environment (offline hub);
    yield its URL once healthy; always stop it. Its output goes to `log`."""
    port = free_port()
    command = streamlit_command("127.0.0.1", port)
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **env}
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=PAGE.parents[2], env=environment, stdout=output, stderr=subprocess.STDOUT
        )
        try:
            _wait_healthy(url, process, log, timeout_s)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with {process.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)  # poll interval
    raise RuntimeError(f"streamlit was not healthy after {timeout_s:.0f} s:\n{_tail(log)}")


def _tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.is_file() else "(no output)"


@contextmanager
def chromium(profile: Path, *, window: tuple[int, int] = WINDOW) -> Iterator[WebDriver]:
    """Headless Chromium with a fresh profile in `profile`; always quit."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={window[0]},{window[1]}")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


class AppPage:
    """The app's page in a browser: choose, type, upload, press Diagnose, wait for text."""

    def __init__(self, driver: WebDriver, url: str, *, timeout_s: float = 60) -> None:
        self.driver, self.url, self.timeout_s = driver, url, timeout_s

    def open(self) -> AppPage:
        self.driver.get(self.url)
        self.wait_for_text("MedXpert", "Diagnose")
        return self

    @property
    def text(self) -> str:
        """The page's visible text."""
        return self.driver.find_element(By.TAG_NAME, "body").text

    def wait_for_text(self, *texts: str) -> str:
        """Wait until the script has run and every one of `texts` is on the page; the text."""
        self._wait(lambda _: self._idle() and all(t in self.text for t in texts), repr(texts))
        return self.text

    def wait_idle(self) -> None:
        """Wait until the script is not running and no stale output is left on the page."""
        self._wait(lambda _: self._idle(), "the app to finish its run")

    def choose(self, option: str) -> None:
        """Click a radio option by its label."""
        xpath = f'//label[@data-testid="stRadioOption"][.//p[normalize-space()="{option}"]]'
        self._clickable(By.XPATH, xpath).click()
        self._wait(
            lambda d: d.find_element(By.XPATH, xpath).get_attribute("data-selected") == "true",
            f"{option} selected",
        )
        self.wait_idle()

    def type_text(self, label: str, text: str) -> None:
        """Type into the text area labelled `label` (replacing what is there)."""
        area = self._clickable(By.CSS_SELECTOR, f'textarea[aria-label="{label}"]')
        area.clear()
        area.send_keys(text)

    def upload(self, path: Path) -> None:
        """Choose `path` in the file uploader and wait until it is uploaded."""
        field = self._wait(lambda d: d.find_element(By.CSS_SELECTOR, 'input[type="file"]'), path)
        field.send_keys(str(path))
        chips = '[data-testid="stFileChipName"]'
        busy = '[data-testid="stFileChipIconSpinner"], [data-testid="stFileChipIconError"]'
        self._wait(
            lambda d: (
                [e.text for e in d.find_elements(By.CSS_SELECTOR, chips)] == [path.name]
                and not d.find_elements(By.CSS_SELECTOR, busy)
            ),
            f"the upload of {path.name}",
        )

    def select(self, label: str, option: str) -> None:
        """Pick `option` (typed, then Enter) in the select box labelled `label`."""
        box = self._clickable(By.CSS_SELECTOR, f'input[aria-label^="{label}"]')
        box.click()
        box.send_keys(option, Keys.ENTER)
        self._wait(lambda _: box.get_attribute("value").startswith(option), f"{option} chosen")
        self.wait_idle()

    def diagnose(self) -> None:
        self.wait_idle()
        self._clickable(By.XPATH, '//button[.//p[normalize-space()="Diagnose"]]').click()

    def screenshot(self, path: Path) -> Path:
        """Save the whole page (the window grown to the content's height) as a PNG."""
        height = self.driver.execute_script(
            "return Math.max(...[document.body, ...document.querySelectorAll("
            '\'[data-testid="stMain"], [data-testid="stAppViewContainer"]\')]'
            ".map(e => e.scrollHeight))"
        )
        width = self.driver.get_window_size()["width"]
        self.driver.set_window_size(width, int(height) + 120)
        self._wait(
            lambda d: d.execute_script("return [...document.images].every(i => i.complete)"),
            "the images to load",
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self.driver.save_screenshot(str(path)):
            raise RuntimeError(f"Chromium could not save a screenshot to {path}")
        return path

    def _idle(self) -> bool:
        return self.driver.execute_script(
            "const app = document.querySelector('[data-testid=\"stApp\"]');"
            "return app !== null && app.dataset.testScriptState === 'notRunning'"
            " && document.querySelector('[data-stale=\"true\"]') === null"
        )

    def _clickable(self, by: str, selector: str) -> WebElement:
        def found(driver: WebDriver) -> WebElement | bool:
            elements = [e for e in driver.find_elements(by, selector) if e.is_displayed()]
            return elements[0] if elements and elements[0].is_enabled() else False

        return self._wait(found, selector)

    def _wait(self, condition: Callable[[WebDriver], object], what: object):
        """`condition`'s first truthy value, retried while the page re-renders."""
        return WebDriverWait(
            self.driver,
            self.timeout_s,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
        ).until(condition, message=f"waited {self.timeout_s:.0f} s for {what}")
