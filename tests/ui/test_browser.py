"""The dashboard in a real browser: Debian's headless Chromium, driven by Selenium, against the
server running on a free port of 127.0.0.1, on a store of demo runs (and one with a hostile
name): the runs page lists, filters, sorts and refreshes them; a run page draws its plots with
data; compare draws the chosen runs on one plot. No page logs a browser error (a blocked
script or style would). Skipped without Chromium, unless DACAPO_STORE_REQUIRE_BROWSER=1."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

import pytest

from dacapo_store.testing.browser import missing_browser, wait_for

from .conftest import HOSTILE, require_ui_extra, required

require_ui_extra()
if missing_browser() and not required():
    pytest.skip(missing_browser(), allow_module_level=True)

from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

from dacapo_store.cli import main  # noqa: E402
from dacapo_store.testing.browser import chromium  # noqa: E402
from dacapo_store.ui.app import create_app  # noqa: E402
from dacapo_store.ui.formatting import query_url  # noqa: E402
from dacapo_store.ui.queries import open_dashboard_stores  # noqa: E402
from dacapo_store.ui.serving import BackgroundServer  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a headless Chromium per module
DEMO_RUNS = {"demo-6": "6", "demo-4": "4", HOSTILE: "2"}
"""Run name -> ``--iterations`` of the demo runs in the store."""
SCORE_PLOTS = 6  # 2 validation datasets x 3 criteria


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    directory = str(tmp_path_factory.mktemp("browser") / "store")
    for name, iterations in DEMO_RUNS.items():
        with contextlib.redirect_stdout(io.StringIO()):
            main(["demo", "--store", directory, "--device", "cpu", "--iterations", iterations, "--name", name],
                 standalone_mode=False)
    return directory


@pytest.fixture(scope="module")
def server(store) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(open_dashboard_stores(store), refresh_seconds=0.5)) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with chromium() as driver:
        yield driver


@pytest.fixture
def page(browser, server):
    """Open a path of the dashboard; after the test, no browser errors were logged."""
    browser.get_log("browser")  # forget what earlier tests logged

    def open_page(path: str) -> object:
        browser.get(server.url + path)
        return browser

    yield open_page
    severe = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == []


def visible_runs(driver) -> list[str]:
    return [link.text for link in driver.find_elements(By.CSS_SELECTOR, "tr.run-row:not([hidden]) a.run-link")]


def drawn_points(driver, selector: str) -> list[int]:
    """How many points each drawn plot matching ``selector`` holds (its traces' x values)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).filter(e => e.dataset.drawn)"
        ".map(e => e.data.reduce((n, trace) => n + trace.x.length, 0))",
        selector,
    )


def test_the_runs_page_lists_filters_sorts_and_refreshes_the_runs(page) -> None:
    driver = page("/")
    assert visible_runs(driver) == [HOSTILE, "demo-4", "demo-6"]  # the hostile name shown as text
    driver.find_element(By.ID, "run-filter").send_keys("demo")
    assert visible_runs(driver) == ["demo-4", "demo-6"]
    assert driver.find_element(By.ID, "run-count").text == "2 of 3"
    driver.find_element(By.CSS_SELECTOR, 'th[data-key="latest"]').click()  # numbers: largest first
    assert visible_runs(driver) == ["demo-6", "demo-4"]
    driver.find_element(By.CSS_SELECTOR, 'th[data-key="latest"]').click()
    assert visible_runs(driver) == ["demo-4", "demo-6"]
    rows = driver.find_elements(By.CSS_SELECTOR, "tr.run-row")
    wait_for(lambda: driver.find_element(By.ID, "runs").get_attribute("data-refreshed"), "a refresh of the rows")
    assert visible_runs(driver) == ["demo-4", "demo-6"]  # sorting and filter survive the refresh
    assert all(row.get_attribute("data-name") for row in driver.find_elements(By.CSS_SELECTOR, "tr.run-row"))
    assert len(rows) == 3
    with pytest.raises(NoAlertPresentException):  # the hostile name's script never ran
        driver.switch_to.alert


def test_a_run_page_draws_its_loss_and_score_plots_with_data(page) -> None:
    driver = page(query_url("/run", name="demo-6"))
    wait_for(lambda: len(drawn_points(driver, ".plot")) == 1 + SCORE_PLOTS, "the run's plots")
    loss, *scores = drawn_points(driver, ".plot")
    assert loss == 2 * 6  # the loss and its moving mean, at 6 iterations each
    assert scores == [6 + 1] * SCORE_PLOTS  # a checkpoint every iteration, and the best marked
    captions = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#score-plots figcaption")]
    assert "validate_0 / f1_score" in captions[0] and "\u2191 higher is better" in captions[0]
    assert any("lower is better" in caption for caption in captions)
    assert driver.find_elements(By.CSS_SELECTOR, "#checkpoints tbody tr")


def test_a_hostile_run_page_shows_its_name_as_text(page) -> None:
    driver = page(query_url("/run", name=HOSTILE))
    assert driver.find_element(By.ID, "run-name").text == HOSTILE
    wait_for(lambda: len(drawn_points(driver, ".plot")) == 1 + SCORE_PLOTS, "the run's plots")


def test_compare_draws_the_chosen_runs_on_one_plot(page) -> None:
    driver = page("/compare")
    for name in ("demo-4", "demo-6"):
        driver.find_element(By.CSS_SELECTOR, f'.choice[data-name="{name}"] input').click()
    Select(driver.find_element(By.ID, "dataset")).select_by_value("validate_1")
    Select(driver.find_element(By.ID, "criterion")).select_by_value("iou")
    driver.find_element(By.CSS_SELECTOR, "#compare-form button[type=submit]").click()
    wait_for(lambda: drawn_points(driver, "#compare-curves"), "the comparison plot")
    names = driver.execute_script(
        "return document.getElementById('compare-curves').data.filter(t => t.showlegend !== false).map(t => t.name)"
    )
    assert names == ["demo-4", "demo-6"]
    assert drawn_points(driver, "#compare-curves") == [4 + 1 + 6 + 1]  # each run's curve and its best
    assert "validate_1 / iou" in driver.find_element(By.CSS_SELECTOR, "#compare-plot figcaption").text
