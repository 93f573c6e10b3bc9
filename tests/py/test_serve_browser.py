"""Headless Chromium (Debian's chromium and chromium-driver) drives the demo page: pick a city,
show a banner, click it; then loads the dashboard; then a page shaped like the prototype's
templates/banner.html (jQuery calls to /adclick/...) against the compat routes. Screenshots are
kept in test-artifacts/."""
import json
import shutil
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.support.ui import Select, WebDriverWait

from serve_fixture import ARTIFACTS, run, start_service, stop_service

CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")
JQUERY = Path("/usr/share/javascript/jquery/jquery.min.js")  # Debian's libjs-jquery

# The prototype's banner page: on load, GET /adclick/{platform}/{slot}/{location}/{pastmin} and
# show the banner; on a click, POST /adclick/?bannerid=&location=&... The city is sent as the
# visitor picked it (`Pune`), which the prototype accepted.
PROTOTYPE_PAGE = """<!doctype html>
<html><head><title>banner</title><script>%(jquery)s</script></head>
<body>
<img id="banner" alt="banner" width="600">
<p id="status">loading</p>
<script>
var platform = "ajio", slot = "hero", location_ = "Pune";
$.get("/adclick/" + platform + "/" + slot + "/" + location_ + "/720", function (data) {
  $("#banner").attr("src", "/static/banners/" + data.value).attr("data-key", data.key);
  $("#status").text("shown " + data.key);
});
$("#banner").click(function () {
  $.post("/adclick/?bannerid=" + $(this).attr("data-key") + "&location=" + location_ +
         "&clicked=1&customerid=c-1&platform=" + platform + "&slot=" + slot + "&referral=ads",
         function (data) { $("#status").text(data[0].key + " " + data[0].value); });
});
</script>
</body></html>"""


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


def options(driver, select_id):
    """The values of a select's options, read in one call (the page replaces them as it loads)."""
    return driver.execute_script(
        "return Array.from(document.getElementById(arguments[0]).options, o => o.value)", select_id)


def selected(driver, select_id, value):
    """Selects `value`; False (to retry) when the page redrew the options meanwhile."""
    try:
        Select(driver.find_element(By.ID, select_id)).select_by_value(value)
        return driver.find_element(By.ID, select_id).get_attribute("value") == value
    except StaleElementReferenceException:
        return False


def test_demo_page_decides_and_records_a_click(service, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    wait = WebDriverWait(browser, 20)
    browser.get(f"{service.base}/#key={service.serve_key}")
    wait.until(lambda d: len(options(d, "city")) >= 8)
    wait.until(lambda d: selected(d, "slot", "hero"))
    wait.until(lambda d: "pune" in options(d, "city") and d.execute_script("return document.getElementById('post-city').textContent") != "…")
    wait.until(lambda d: selected(d, "city", "pune"))
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
    # Read in one call: the dashboard redraws every few seconds.
    cities = set(browser.execute_script(
        "return Array.from(document.querySelectorAll('svg.curves'), c => c.dataset.city)"))
    _, body = service.request("GET", "/v1/tenants/ajio/slots/footer/posteriors")
    assert cities == {c["city"] for c in json.loads(body)["cities"]}, cities
    assert len(cities) == 9, "8 cities and the pooled posterior"
    rows = browser.find_elements(By.CSS_SELECTOR, "#traffic-table tbody tr")
    assert len(rows) == 8
    assert "IST" in browser.find_element(By.ID, "as-of").text
    series = browser.find_elements(By.CSS_SELECTOR, "#series-svg path")
    assert len(series) == 10, "one CTR line per banner"
    browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))


def test_the_prototypes_banner_page_works_on_the_compat_routes_with_a_mixed_case_city(service, browser, tmp_path):
    assert JQUERY.exists(), "libjs-jquery is installed by scripts/install.sh"
    ARTIFACTS.mkdir(exist_ok=True)
    wait = WebDriverWait(browser, 20)
    # The page must come from the service's origin, as the prototype's did: open a page of the
    # service and replace it with the prototype's.
    browser.get(f"{service.base}/static/app.css")
    browser.execute_script("document.open(); document.write(arguments[0]); document.close();",
                           PROTOTYPE_PAGE % {"jquery": JQUERY.read_text()})
    wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "shown b"))
    img = browser.find_element(By.ID, "banner")
    shown = img.get_attribute("data-key")
    assert img.get_attribute("src").endswith(f"/static/banners/{shown}.svg")
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img))
    img.click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "200 Record updated successfully"))
    browser.save_screenshot(str(ARTIFACTS / "prototype-page.png"))
    # The log holds the page's impression and click, in the city `pune`.
    stop_service(service)
    out = run("consume", "--log", f"file:{tmp_path / 'log'}", "--print", "messages")
    events = [json.loads(json.loads(line)["payload"]) for line in out.splitlines() if line.startswith("{")]
    assert [(e["kind"], e["city"], e["banner"]) for e in events] == [("impression", "pune", shown), ("click", "pune", shown)]
