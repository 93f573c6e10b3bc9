"""Headless Chromium (Debian's chromium and chromium-driver) drives the demo page: pick a city,
show a banner, click it; then loads the dashboard. Screenshots are kept in test-artifacts/."""
import json
import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from serve_fixture import ARTIFACTS, start_service, stop_service

CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")


@pytest.fixture()
def service(tmp_path):
    s = start_service(tmp_path, backfill=True)
    yield s
    stop_service(s)


@pytest.fixture()
def browser():
    assert CHROMIUM and DRIVER, "chromium and chromium-driver are installed by scripts/install.sh"
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1100"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=DRIVER))
    yield driver
    driver.quit()


def clicks_accepted(service):
    _, text = service.request("GET", "/metrics")
    for line in text.decode().splitlines():
        if line.startswith('slotbandit_clicks_total{outcome="accepted"}'):
            return float(line.split()[-1])
    return 0.0


def test_demo_page_decides_and_records_a_click(service, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    wait = WebDriverWait(browser, 20)
    browser.get(f"{service.base}/#key={service.serve_key}")
    wait.until(lambda d: len(Select(d.find_element(By.ID, "city")).options) >= 8)
    Select(browser.find_element(By.ID, "slot")).select_by_value("hero")
    wait.until(lambda d: "pune" in [o.get_attribute("value") for o in Select(d.find_element(By.ID, "city")).options])
    Select(browser.find_element(By.ID, "city")).select_by_value("pune")
    browser.find_element(By.ID, "decide").click()
    img = wait.until(EC.visibility_of_element_located((By.ID, "banner-img")))
    shown = browser.find_element(By.ID, "shown-banner").text
    assert shown.startswith("b") and img.get_attribute("src").endswith(f"{shown}.svg")
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img))
    img.click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "recorded (202)"))
    assert shown in browser.find_element(By.ID, "status").text
    assert clicks_accepted(service) == 1
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#posteriors tbody tr")) == 10)
    browser.save_screenshot(str(ARTIFACTS / "demo-page.png"))


def test_dashboard_draws_every_city(service, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    wait = WebDriverWait(browser, 20)
    browser.set_window_size(1280, 2400)
    browser.get(f"{service.base}/dashboard#key={service.serve_key}")
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "true")
    curves = browser.find_elements(By.CSS_SELECTOR, "svg.curves")
    cities = {c.get_attribute("data-city") for c in curves}
    _, body = service.request("GET", "/v1/tenants/ajio/slots/footer/posteriors")
    assert cities == {c["city"] for c in json.loads(body)["cities"]}, cities
    assert len(cities) == 9, "8 cities and the pooled posterior"
    rows = browser.find_elements(By.CSS_SELECTOR, "#traffic-table tbody tr")
    assert len(rows) == 8
    assert "IST" in browser.find_element(By.ID, "as-of").text
    series = browser.find_elements(By.CSS_SELECTOR, "#series-svg path")
    assert len(series) == 10, "one CTR line per banner"
    browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))
