"""The admin console in a real browser (headless Chromium driven by Selenium) against
a grid of real node processes: log in with the printed link, open every page, see
the real jobs and datasets, drain the node and watch it stop claiming, cancel a
runaway job. Screenshots go to $GRIDNODE_ARTIFACTS (default test-artifacts/)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import trio

from node.client import Client
from steering import JobSpec
from tests.integration.grid import Grid, running_grid
from tests.integration.test_datasets import make_files, run_cli

pytestmark = pytest.mark.slow

ARTIFACTS = Path(os.environ.get("GRIDNODE_ARTIFACTS", "test-artifacts")) / "console"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def spec(*argv: str, **kw) -> JobSpec:
    return JobSpec.from_mapping({"argv": list(argv), **kw})


@pytest.fixture
def browser():
    # Installed by .ci/run (scripts/ensure-browser): a missing browser fails, it is
    # not skipped.
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The browser, with waits for what the grid does in its own time."""

    def __init__(self, driver, base: str) -> None:
        self.d, self.base = driver, base

    async def open(self, path: str) -> str:
        await trio.to_thread.run_sync(self.d.get, self.base + path)
        return self.text()

    def text(self) -> str:
        return self.d.find_element("tag name", "body").text

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        assert self.d.save_screenshot(str(ARTIFACTS / f"{name}.png"))

    async def until(self, path: str, *words: str, limit: float = 60) -> str:
        text = ""
        with trio.move_on_after(limit):
            while True:
                text = await self.open(path)
                if all(w in text for w in words):
                    return text
                await trio.sleep(0.5)
        raise AssertionError(f"{path} did not show {words} in {limit:g} s; it showed:\n{text}")

    async def submit(self, form_id: str, **fields: str) -> None:
        """Fill a form, press its button, and wait for the page it leads to."""
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.wait import WebDriverWait

        def go() -> None:
            before = self.d.find_element("tag name", "html")
            form = self.d.find_element("id", form_id)
            for name, value in fields.items():
                box = form.find_element("name", name)
                box.clear()
                box.send_keys(value)
            form.find_element("tag name", "button").click()
            wait = WebDriverWait(self.d, 30)
            wait.until(expected_conditions.staleness_of(before))
            wait.until(lambda d: d.execute_script("return document.readyState") == "complete")
        await trio.to_thread.run_sync(go)


async def test_console_in_a_browser(short_tmp, browser):
    def console_on_any_port(g: Grid) -> None:
        for i in range(3):
            g.edit_config(i, ('[console]\nlisten = "auto"', '[console]\nlisten = "127.0.0.1:0"'),
                          ("[monitor]\ninterval = 10.0", "[monitor]\ninterval = 0.5"))

    async with running_grid(short_tmp, 3, console_on_any_port) as g:
        code, out, err = await run_cli("console", "--data-dir", str(g.dir(0)), "--json")
        assert code == 0, err
        link = json.loads(out)["login"]
        base = json.loads(out)["url"]
        page = Page(browser, base)

        # Without the token: the page says how to log in, and shows no data.
        text = await page.open("/")
        assert "401" in text and "gridnode console" in text and g.ids[0].hex() not in text
        # Real data for the pages: a dataset, a finished job, a long job on this node.
        src = short_tmp / "src"
        make_files(src)
        async with Client.connect(g.address(0), user_dir=g.user_dir) as c:
            rec = await c.put("raw", [src], close=True)
            [done] = await c.submit([spec("sh", "-c", "echo hello from the grid",
                                          name="greeting")])
            [runaway] = await c.submit([spec("sleep", "300", sites=["site-0"],
                                             name="runaway")])
            with trio.fail_after(60):
                await c.wait(done, poll=0.3)
        dataset = str(rec.name)

        await trio.to_thread.run_sync(browser.get, link)
        text = page.text()
        assert "site-0" in text and g.ids[0].hex() in text and "claiming jobs" in text
        page.shot("node")

        text = await page.until("/grid", "site-1", "site-2")
        rows = browser.find_elements("css selector", "#grid-table tbody tr")
        assert len(rows) == 3 and "(this node)" in text
        assert all(any(s in r.text for s in ("ok", "congested")) for r in rows)

        def filter_and_sort() -> tuple[list[str], str]:
            box = browser.find_element("css selector", "input[data-filter]")
            box.send_keys("site-2")
            shown = [r.text for r in rows if r.is_displayed()]
            box.clear()
            box.send_keys(" ")  # an input event: every row again
            browser.find_elements("css selector", "#grid-table thead th")[0].click()
            browser.find_elements("css selector", "#grid-table thead th")[0].click()
            first = browser.find_element("css selector", "#grid-table tbody tr").text
            return shown, first

        shown, first = await trio.to_thread.run_sync(filter_and_sort)
        assert len(shown) == 1 and "site-2" in shown[0]
        assert first.startswith("site-2")  # sorted by site, descending
        page.shot("grid")

        text = await page.until("/jobs", "greeting", "runaway")
        assert done.hex()[:12] in text and "finished" in text
        page.shot("jobs")
        text = await page.until(f"/jobs/{done.hex()}", "hello from the grid")
        assert "finished" in text and "running" in text  # its history
        placed = browser.find_elements("css selector", "#placements tbody tr")
        assert len(placed) == 1 and placed[0].text.startswith("1 ")  # attempt 1 and why
        assert "at most" in placed[0].text and "finished" in placed[0].text
        page.shot("job")

        text = await page.until("/datasets", dataset)
        page.shot("datasets")
        text = await page.until(f"/datasets/{dataset}", "Holders", "site-")
        holders = browser.find_elements("css selector", "#holders tbody tr")
        assert len(holders) >= rec.policy.min_replicas
        assert "sub/many" in text and browser.find_elements("css selector", "svg.plot")
        page.shot("dataset")
        # The copy to the second holder went over a link its receiver measured.
        receiver = next(h.text.split()[0] for h in holders if "site-0" not in h.text)
        text = await page.until("/grid", "of its best", limit=30)
        links = browser.find_elements("css selector", "#links-table tbody tr")
        assert any(r.text.startswith(f"{receiver} site-0 ok") for r in links), text
        page.shot("grid-links")

        text = await page.until("/health", "load per core")
        assert len(browser.find_elements("css selector", "svg.plot polyline")) >= 3
        page.shot("health")

        # Cancel the runaway job from its page, with a reason.
        text = await page.until(f"/jobs/{runaway.hex()}", "cancel this job")
        await page.submit("cancel-form", reason="runaway test job")
        text = await page.until(f"/jobs/{runaway.hex()}", "cancelled")
        assert "runaway test job" in text
        page.shot("job-cancelled")

        # Drain: the node stops claiming; jobs that need it wait, the others run elsewhere.
        await page.open("/")
        await page.submit("drain-form", reason="disk swap")
        text = page.text()
        assert "done: drained: disk swap; running jobs finish" in text
        assert "drained since" in text and "disk swap" in text
        page.shot("drained")
        status = g.status(0)
        assert status is not None and status["site_controls"]["drained"]
        before = status["worker"]["jobs_claimed"]
        async with Client.connect(g.address(1), user_dir=g.user_dir) as c:
            ids = await c.submit([spec("sh", "-c", "sleep 0.2") for _ in range(12)])
            with trio.fail_after(120):
                for j in ids:
                    [r] = await c.wait(j, poll=0.3)
                    assert r.state == "finished"
        status = g.status(0)
        assert status is not None and status["worker"]["jobs_claimed"] == before
        assert "site.drained" in (g.dir(0) / "node.log").read_text()
        # Resume, and it claims again.
        await page.open("/")
        await page.submit("resume-form", reason="swap done")
        assert "claiming jobs" in page.text()
        async with Client.connect(g.address(0), user_dir=g.user_dir) as c:
            [here] = await c.submit([spec("true", sites=["site-0"])])
            with trio.fail_after(60):
                [r] = await c.wait(here, poll=0.3)
        assert r.state == "finished"
