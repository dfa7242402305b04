"""Debian's headless Chromium driven by Selenium, for the dashboard's browser tests and its
screenshots: no browser or driver is downloaded (``/usr/bin/chromium`` and
``/usr/bin/chromedriver``, from ``apt-get install chromium chromium-driver``), and Chromium is
told not to reach the network on its own.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
REQUIRE_BROWSER_ENV = "DACAPO_STORE_REQUIRE_BROWSER"
"""Set to 1 (as CI does), a missing browser fails the browser tests instead of skipping them."""
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)
WAIT_SECONDS = 60.0
"""How long :func:`wait_for` polls before giving up: generous, only a failure waits it out."""


def missing_browser() -> str | None:
    """Why the browser tests cannot run here (``None`` when they can)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install selenium)"
    return None


@contextmanager
def chromium(width: int = 1400, height: int = 900, scale: float = 1.0) -> Iterator[Any]:
    """A Selenium WebDriver of headless Chromium with a fresh profile (removed afterwards) and
    a ``width`` x ``height`` window; ``scale`` is the device pixel ratio of screenshots."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="dacapo-store-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.add_argument(f"--force-device-scale-factor={scale}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(condition: Callable[[], Any], what: str, timeout: float = WAIT_SECONDS) -> Any:
    """Poll ``condition()`` until it returns something true and return that.

    Raises:
        TimeoutError: still false after ``timeout`` seconds, naming ``what``.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)
