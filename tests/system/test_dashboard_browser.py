"""The dashboard in headless Chromium, driven by selenium: log in, read the counts, see the
chart, requeue a dead task, cancel a waiting one, watch the page refresh itself, and see a
hostile identifier as text. Every page is saved as a screenshot in tests/screenshots/ (ignored
by git) for a person to look at."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from api_support import PROCESSOR_ARGS, api_server
from dashboard_support import DASHBOARD_TOKEN, add_task, state_of
from harness import wait_for

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra")
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOTS = Path(__file__).resolve().parents[1] / "screenshots"
HOSTILE = "<script>alert('pwned')</script>"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="headless Chromium is not installed: apt-get install -y chromium chromium-driver",
    ),
]


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--disable-extensions",
        "--disable-background-networking",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(
        options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER)
    )
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver, name: str) -> None:
    """The whole page, not just the window."""
    SCREENSHOTS.mkdir(exist_ok=True)
    size = driver.get_window_size()
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(size["width"], min(max(height + 140, 600), 4000))
    driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
    driver.set_window_size(size["width"], size["height"])


def text_of(driver, css: str) -> str:
    """The element's text; empty while a refresh is replacing it."""
    try:
        return driver.find_element(By.CSS_SELECTOR, css).text
    except StaleElementReferenceException:
        return ""


def no_alert(driver) -> bool:
    try:
        _ = driver.switch_to.alert
    except NoAlertPresentException:
        return True
    return False


@pytest.fixture
def populated(conn):
    """Two dead tasks (one with a hostile identifier), a delayed waiting one, and an hour of
    attempts for the chart."""
    tasks = {
        "dead": add_task(
            conn,
            "mail.send",
            "dead",
            error="Traceback (most recent call last):\nSMTPError: 550 mailbox full",
        ),
        "hostile": add_task(conn, HOSTILE, "dead", args='["<b>bold?</b>"]'),
        "delayed": add_task(conn, "report.build", due_in_seconds=3600),
        "delayed_too": add_task(conn, "report.build", due_in_seconds=7200),
    }
    with conn.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO task_processor.runs (task_id, attempt, worker, started_at, finished_at,
                                             result, error)
            SELECT %s, 1, 'p/0.1', now() - i * interval '20 seconds',
                   now() - i * interval '20 seconds',
                   CASE WHEN i %% 9 = 0 THEN 'failure' ELSE 'success' END, NULL
            FROM generate_series(1, 170) AS i""",
            (tasks["dead"],),
        )
    return tasks


def test_log_in_read_the_counts_see_the_chart_and_act(
    browser, conn, database_url, populated, start_processor
):
    processor = start_processor(*PROCESSOR_ARGS, tasks=())
    processor.wait_ready(2)
    with api_server(database_url, TASK_PROCESSOR_DASHBOARD_TOKEN=DASHBOARD_TOKEN) as server:
        browser.get(server.base + "/dashboard/login")
        screenshot(browser, "01-login")
        browser.find_element(By.ID, "token").send_keys(DASHBOARD_TOKEN)
        browser.find_element(By.ID, "login").click()
        wait_for(lambda: browser.title.startswith("Overview"), timeout=20)
        assert text_of(browser, "#access-mode") == "full access"
        # Held elements must not be replaced under the test: refresh off (remembered across
        # pages) until the refresh itself is tested below.
        browser.find_element(By.ID, "auto-refresh").click()

        # The counts.
        assert text_of(browser, "#count-dead") == "2"
        assert text_of(browser, "#count-scheduled") == "2"
        assert text_of(browser, "#count-due") == "0"

        # The chart: bars drawn for the last hour, succeeded and failed.
        chart = browser.find_element(By.ID, "throughput-chart")
        assert chart.is_displayed()
        heights = [
            float(bar.get_attribute("height"))
            for bar in chart.find_elements(By.CSS_SELECTOR, "rect.bar-succeeded")
        ]
        assert len(heights) == 60 and sum(1 for h in heights if h > 0) >= 50
        assert any(
            float(bar.get_attribute("height")) > 0
            for bar in chart.find_elements(By.CSS_SELECTOR, "rect.bar-failed")
        )

        # The processor and its workers, with each worker's resident memory.
        wait_for(
            lambda: len(browser.find_elements(By.CSS_SELECTOR, "#processors .state-idle")) == 2,
            timeout=30,
        )
        wait_for(
            lambda: (
                len(
                    [
                        cell
                        for cell in browser.find_elements(By.CSS_SELECTOR, "#processors td.num")
                        if cell.text.endswith(" MiB")
                    ]
                )
                == 2
            ),
            timeout=30,
            message="the workers' memory",
        )

        # A hostile identifier is text, and no script of its ran.
        identifiers = [
            cell.text
            for cell in browser.find_elements(By.CSS_SELECTOR, "#identifiers td:first-child")
        ]
        assert HOSTILE in identifiers
        assert no_alert(browser)
        screenshot(browser, "02-overview")

        # Requeue a dead task from its page.
        browser.get(f"{server.base}/dashboard/tasks/{populated['dead']}")
        assert "SMTPError: 550 mailbox full" in browser.page_source
        screenshot(browser, "03-task-dead")
        browser.find_element(By.XPATH, "//button[text()='Requeue']").click()
        wait_for(lambda: "Requeued 1 dead task(s)." in browser.page_source, timeout=20)
        assert state_of(conn, populated["dead"]) == "waiting"
        screenshot(browser, "04-task-requeued")

        # Cancel a waiting task from the list, confirming the dialog.
        browser.get(f"{server.base}/dashboard/tasks?state=waiting&identifier=report.build")
        row = browser.find_element(By.CSS_SELECTOR, f"tr[data-task-id='{populated['delayed']}']")
        row.find_element(By.XPATH, ".//button[text()='Cancel']").click()
        browser.switch_to.alert.accept()
        wait_for(lambda: "Cancelled 1 waiting task(s)." in browser.page_source, timeout=20)
        assert state_of(conn, populated["delayed"]) == "cancelled"
        screenshot(browser, "05-tasks-after-cancel")

        # The hostile task's page shows its identifier and arguments as text.
        browser.get(f"{server.base}/dashboard/tasks/{populated['hostile']}")
        assert text_of(browser, "#task-identifier") == HOSTILE
        assert "<b>bold?</b>" in text_of(browser, "#task-args")
        assert no_alert(browser)
        screenshot(browser, "06-task-hostile")

        browser.get(server.base + "/dashboard/recurring")
        screenshot(browser, "07-recurring")

        # The overview refreshes itself: a task of a new identifier shows up without a reload.
        browser.get(server.base + "/dashboard/")
        assert not browser.find_element(By.ID, "auto-refresh").is_selected()
        browser.find_element(By.ID, "auto-refresh").click()
        browser.execute_script("window.notReloaded = true")
        add_task(conn, "refresh.check", "dead")
        wait_for(
            lambda: "refresh.check" in text_of(browser, "#identifiers"),
            timeout=30,
            message="the page to refresh itself",
        )
        assert browser.execute_script("return window.notReloaded") is True

        # The dark theme follows the system's setting.
        browser.execute_cdp_cmd(
            "Emulation.setEmulatedMedia",
            {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
        )
        background = browser.execute_script(
            "return getComputedStyle(document.body).backgroundColor"
        )
        assert background == "rgb(17, 21, 28)"
        screenshot(browser, "08-overview-dark")
