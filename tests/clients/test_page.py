"""Browser test of the catalogue's 'By photo' page (examples/search_service.py and examples/static/): headless
Chromium (Debian's chromium and chromium-driver) driven by selenium, against the example application it starts
itself, a real PostgreSQL with pg_clip, and photos served over HTTP by tests/http/server.py. Run by
scripts/test.sh after the other client tests.

It uploads a catalogue photo and finds that photo's product first; pages with "Show more"; "More like this"
finds the product itself first at distance 0; searches by words, English and Russian; shows the readable sentence
for a file that is not an image, an unsupported format, a picture with too many pixels, an upload over the
application's limit (refused before the database) and a database that cannot be reached; drops and pastes a photo;
reaches the results with the keyboard alone; stays readable at a phone's width. Screenshots go to target/page-screenshots/.

usage: test_page.py DSN INPUTS_DIR   (INPUTS_DIR: made by tests/pg_regress/make_inputs.py and served by the image
                                      host at $PG_CLIP_TEST_HTTP, default http://127.0.0.1:28836, under /img/)
env: CHROMIUM (default /usr/bin/chromium), CHROMEDRIVER (default /usr/bin/chromedriver),
     PAGE_SCREENSHOTS (default target/page-screenshots)
"""
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg

from checklist import check, finish

started = time.monotonic()
dsn, inputs = sys.argv[1], Path(sys.argv[2])
image_host = os.environ.get("PG_CLIP_TEST_HTTP", "http://127.0.0.1:28836").rstrip("/")
root = Path(__file__).resolve().parents[2]
shots = Path(os.environ.get("PAGE_SCREENSHOTS", root / "target/page-screenshots"))
TABLE = "page_catalog"
PAGE_SIZE = 4          # small pages, so that a 13-photo catalogue needs "Show more" three times
MAX_UPLOAD_MB = 5      # the application's limit in this test (its default is 20, pg_clip.max_image_bytes')
PHOTO_TIMEOUT = 2      # seconds the application gives one catalogue photo's download

# The catalogue: image_id i, product_id 1000 + i. small.tiff is a photo pg_clip embeds but browsers do not
# display: its card must say "No photo".
photos = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg",
          "retina.jpg", "ihc.png", "camera.png", "moon.png", "coins.png", "brick.png", "small.tiff"]
product = {name: 1000 + i for i, name in enumerate(photos, start=1)}
# Rows without a vector (never in results) whose photo URL misbehaves: the proxy must bound and refuse them.
bad_urls = {101: image_host + "/huge", 102: image_host + "/stall", 103: "file:///etc/passwd",
            104: image_host + "/html", 105: image_host + "/status/404"}

# Sentences the application says (examples/search_service.py); the test holds it to them word for word.
NOT_AN_IMAGE = "This file is not an image we can read, or it is damaged. Try a JPEG, PNG or WebP photo."
UNSUPPORTED = ("This image format is not supported (AVIF, HEIC, JPEG XL and SVG are not). "
               "Save the photo as JPEG or PNG and try again.")
TOO_MANY_PIXELS = "The photo is too large (over 5 MB, or too many pixels). Try a smaller photo or a screenshot of it."
TOO_LARGE = f"The photo is larger than {MAX_UPLOAD_MB} MB. Try a smaller one."
UNREACHABLE = "The catalogue database cannot be reached right now. Try again in a minute."


def http(url, timeout=30):
    """(status, headers, body, seconds) of a GET."""
    t = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.headers, r.read(), time.monotonic() - t
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read(), time.monotonic() - t
    except OSError as e:
        return None, {}, str(e).encode(), time.monotonic() - t


# --- the catalogue --------------------------------------------------------------------------------------------

status, _, _, _ = http(f"{image_host}/img/coffee.png")
check(f"the image host serves the test inputs at {image_host}/img/", status == 200, status)
if status != 200:
    finish("page")
with psycopg.connect(dsn, autocommit=True) as conn:
    conn.execute("SET client_min_messages = error")
    conn.execute("CREATE EXTENSION IF NOT EXISTS pg_clip CASCADE")
    conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    conn.execute(f"CREATE TABLE {TABLE} (image_id int PRIMARY KEY, product_id int, image_url text, "
                 "image_embedding vector(512), model_version text)")
    for i, name in enumerate(photos, start=1):
        conn.execute(f"INSERT INTO {TABLE} VALUES (%s, %s, %s, clip_embed_bytes(%s))",
                     (i, product[name], f"{image_host}/img/{name}", (inputs / name).read_bytes()))
    for image_id, url in bad_urls.items():
        conn.execute(f"INSERT INTO {TABLE} (image_id, product_id, image_url) VALUES (%s, %s, %s)",
                     (image_id, 9000 + image_id, url))
    conn.execute(f"CREATE INDEX {TABLE}_hnsw ON {TABLE} USING hnsw (image_embedding vector_cosine_ops)")
    random_weights = conn.execute("SELECT random_weights FROM clip_model_info()").fetchone()[0]

# --- the application ------------------------------------------------------------------------------------------

logs = root / "target"
logs.mkdir(exist_ok=True)
apps = []


def start_app(app_dsn, log_name):
    log = open(logs / log_name, "w")
    process = subprocess.Popen(
        [sys.executable, str(root / "examples/search_service.py"), "--dsn", app_dsn, "--port", "0",
         "--table", TABLE, "--page-size", str(PAGE_SIZE), "--max-upload-mb", str(MAX_UPLOAD_MB),
         "--photo-timeout", str(PHOTO_TIMEOUT)],
        stdout=subprocess.PIPE, stderr=log, text=True)
    apps.append(process)
    line = process.stdout.readline()  # "listening on http://127.0.0.1:PORT", or "" if it died
    if not line.startswith("listening"):
        check("the example application starts", False, (logs / log_name).read_text()[-2000:])
        finish("page")
    return line.split()[-1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the browser ----------------------------------------------------------------------------------------------

os.environ["SE_OFFLINE"] = "true"  # selenium-manager must not try to download a driver or a browser
from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import TimeoutException, WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

profile = tempfile.mkdtemp(prefix="pg_clip-chromium-")
options = webdriver.ChromeOptions()
options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Headless as root; and nothing in the background: the machine has no network, and Chromium would keep trying.
for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
             "--disable-default-apps", "--disable-extensions", "--window-size=1280,900", "--lang=en-US",
             "--force-prefers-reduced-motion", f"--user-data-dir={profile}"):
    options.add_argument(flag)
options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
shutil.rmtree(shots, ignore_errors=True)
shots.mkdir(parents=True)
driver = None


def shot(name, full=True):
    """A screenshot: the whole page (full), or what the window shows."""
    if not full:
        driver.save_screenshot(str(shots / f"{name}.png"))
        return
    # Photos below the window are lazy: load them, so that the picture shows what a person scrolling would see.
    js("document.querySelectorAll('img[loading=lazy]').forEach(i => { i.loading = 'eager'; })")
    wait(lambda d: js("return Array.from(document.querySelectorAll('#results img.photo'))"
                      ".every(i => i.complete && i.naturalWidth > 0)"), 15)
    # Loaded is not yet painted (decoding="async"): wait for the decoding, then for a frame.
    driver.execute_async_script("""const done = arguments[arguments.length - 1];
        Promise.all(Array.from(document.images).map(i => i.decode().catch(() => null)))
          .then(() => requestAnimationFrame(() => requestAnimationFrame(() => done())));""")
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    picture = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
    (shots / f"{name}.png").write_bytes(base64.b64decode(picture["data"]))


def wait(condition, timeout=60):
    """True once condition(driver) is truthy, False after timeout (the check that follows says what failed)."""
    try:
        WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition(d))
        return True
    except TimeoutException:
        return False


def js(script, *args):
    return driver.execute_script(script, *args)


def searches():
    return int(js("return Number(document.documentElement.dataset.searches || 0)"))


def after_search(action, timeout=60):
    """Runs action(), then waits until the page has answered one more search (results or an error)."""
    before = searches()
    action()
    return wait(lambda d: searches() > before, timeout)


def results():
    return js("""return Array.from(document.querySelectorAll('#results .card')).map(c => ({
        product: Number(c.dataset.productId), image: Number(c.dataset.imageId),
        distance: c.querySelector('.distance').textContent, rank: c.querySelector('.rank').textContent,
        alt: (c.querySelector('img') || {}).alt || c.querySelector('.photo').getAttribute('aria-label'),
        broken: !!c.querySelector('.photo.broken')}))""")


def error_text():
    return js("const e = document.getElementById('error'); return e.hidden ? '' : e.firstChild.textContent")


def open_page(url):
    driver.get(url)
    return wait(lambda d: js("return document.documentElement.dataset.ready === 'true'"), 30)


def drop(data: bytes, name: str, kind: str, paste=False):
    """A file dropped on the drop zone, or pasted into the words box, as the browser itself would deliver it."""
    js("""const [b64, name, type, paste] = arguments;
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, {type}));
        if (paste) {
          document.getElementById('words').dispatchEvent(
            new ClipboardEvent('paste', {bubbles: true, cancelable: true, clipboardData: dt}));
        } else {
          const zone = document.getElementById('dropzone');
          for (const t of ['dragenter', 'dragover', 'drop'])
            zone.dispatchEvent(new DragEvent(t, {bubbles: true, cancelable: true, dataTransfer: dt}));
        }""", base64.b64encode(data).decode(), name, kind, paste)


def post_raw(size):
    """What the application answers to a raw upload of `size` bytes sent by the page's own origin."""
    return driver.execute_async_script("""const [size, done] = arguments;
        fetch('/api/search-by-image', {method: 'POST', body: new Uint8Array(size)})
          .then(async r => done({status: r.status, body: await r.json()}))
          .catch(e => done({status: null, body: String(e)}));""", size)


def upload(name):
    driver.find_element(By.ID, "photo").send_keys(str((inputs / name).resolve()))


def tab_until(predicate, limit=12):
    """Presses Tab until predicate(active element) holds; returns the ids/classes passed on the way."""
    seen = []
    for _ in range(limit):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        active = driver.switch_to.active_element
        seen.append(active.get_attribute("id") or active.get_attribute("class"))
        if predicate(active):
            return True, seen
    return False, seen


try:
    driver = webdriver.Chrome(service=Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")),
                              options=options)
    driver.set_script_timeout(60)
    base = start_app(dsn, "page-app.log")

    # --- the page itself -------------------------------------------------------------------------------------
    check("the page loads and reads the model's facts from the database", open_page(base + "/"))
    check("title and heading", driver.title == "Search the catalogue by photo"
          and driver.find_element(By.TAG_NAME, "h1").text == "Search by photo", driver.title)
    note = driver.find_element(By.ID, "model-note")
    check("the random-weights note is shown exactly when clip_model_info().random_weights",
          note.is_displayed() == bool(random_weights) and ("random weights" in note.text) == bool(random_weights),
          note.text)
    check("the upload limit shown is the application's", driver.find_element(By.ID, "max-mb").text == str(MAX_UPLOAD_MB))
    inputs_ok = js("""return Array.from(document.querySelectorAll('input')).every(i => i.labels.length > 0)
        && document.documentElement.lang === 'en'
        && document.querySelector('input[type=file][accept="image/*"][capture]') !== null""")
    check("every input has a label; a camera input (accept=image/*, capture) is there for phones", inputs_ok)

    # --- a catalogue photo finds its own product -------------------------------------------------------------
    ok = after_search(lambda: upload("coffee.png"))
    found = results()
    check("uploading a catalogue photo answers", ok and not error_text(), error_text())
    check("the photo's own product comes first, at distance 0",
          found and found[0]["product"] == product["coffee.png"] and found[0]["distance"] == "distance 0.0000", found[:2])
    check(f"one page is {PAGE_SIZE} results, with 'Show more'",
          len(found) == PAGE_SIZE and driver.find_element(By.ID, "more").is_displayed(), len(found))
    status_text = driver.find_element(By.ID, "status").text
    check("the time the search took in the database is shown", " ms in the database" in status_text, status_text)
    check("every result has alt text naming its product", all(r["alt"] == f"Photo of product {r['product']}"
                                                               for r in found), [r["alt"] for r in found])
    check("the results' photos load through the application",
          wait(lambda d: js("""const imgs = Array.from(document.querySelectorAll('#results img.photo'));
              return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0)"""), 30))
    check("the query photo is shown beside the results",
          js("const i = document.getElementById('query-photo'); return !i.hidden && i.src.startsWith('blob:')"))
    shot("01-photo-search")

    # --- show more -------------------------------------------------------------------------------------------
    more = driver.find_element(By.ID, "more")
    for _ in range(len(photos)):
        if not more.is_displayed() or not after_search(more.click) or error_text():
            break
    check("'Show more' answers, and goes away after the last page", not error_text() and not more.is_displayed(),
          error_text())
    everything = results()
    check(f"'Show more' pages through the whole catalogue ({len(photos)} products, each once)",
          sorted(r["product"] for r in everything) == sorted(product.values()), [r["product"] for r in everything])
    check("ranks run 1..N and distances ascend across pages",
          [r["rank"] for r in everything] == [f"#{i}" for i in range(1, len(everything) + 1)]
          and [r["distance"] for r in everything] == sorted(r["distance"] for r in everything))
    tiff = [r for r in everything if r["product"] == product["small.tiff"]]
    check("a photo browsers cannot display (TIFF) becomes 'No photo', with a label",
          wait(lambda d: js("return document.querySelector('#results .photo.broken') !== null"), 15)
          and tiff and results()[everything.index(tiff[0])]["broken"])
    js("window.scrollTo(0, 0)")
    shot("02-show-more")

    # --- more like this --------------------------------------------------------------------------------------
    third = everything[2]
    button = driver.find_elements(By.CSS_SELECTOR, "#results .card .like")[2]
    ok = after_search(button.click)
    like = results()
    check("'More like this' answers", ok and not error_text(), error_text())
    check("'More like this' finds the product itself first, at distance 0",
          like and like[0]["product"] == third["product"] and like[0]["distance"] == "distance 0.0000", like[:2])
    check("'More like this' says what it compared with and puts it in the address",
          driver.find_element(By.ID, "query-text").text == f"More like product {third['product']}"
          and f"like={third['image']}" in driver.current_url, driver.current_url)
    shot("03-more-like-this")

    # --- words -----------------------------------------------------------------------------------------------
    words = driver.find_element(By.ID, "words")
    words.clear()
    words.send_keys("a cup of coffee on a table")
    ok = after_search(lambda: driver.find_element(By.CSS_SELECTOR, "#text-form button[type=submit]").click())
    found = results()
    check("a text query returns results", ok and not error_text() and len(found) == PAGE_SIZE, (error_text(), found))
    check("the text query is in the address (a link to it searches again)", "q=a%20cup%20of%20coffee" in driver.current_url,
          driver.current_url)
    shot("04-text-search")
    # Russian words: the words box says it takes them (the application chose the multilingual encoder, which the
    # test model has), and they search as they are.
    hint = driver.find_element(By.ID, "words-hint").text
    check("the words box does not say English only", "Russian" in hint and "English only" not in hint, hint)
    words.clear()
    words.send_keys("красный рюкзак")
    ok = after_search(lambda: words.send_keys(Keys.ENTER))
    found = results()
    check("a Russian text query returns results", ok and not error_text() and len(found) == PAGE_SIZE,
          (error_text(), found))
    check("the Russian words are in the address and on the page",
          "q=%D0%BA%D1%80%D0%B0%D1%81%D0%BD%D1%8B%D0%B9" in driver.current_url
          and "красный рюкзак" in driver.find_element(By.ID, "query-text").text,
          (driver.current_url, driver.find_element(By.ID, "query-text").text))
    shot("04b-text-search-russian")
    ok = after_search(lambda: driver.back())
    check("Back returns to the English words", ok and "q=a%20cup%20of%20coffee" in driver.current_url, driver.current_url)
    ok = after_search(lambda: driver.back())
    check("Back returns to the previous search", ok and results() and results()[0]["product"] == third["product"])

    # --- errors a person understands -------------------------------------------------------------------------
    ok = after_search(lambda: upload("page.html"))
    check("a file that is not an image gives the readable sentence, with its SQLSTATE as a code",
          ok and error_text() == NOT_AN_IMAGE and "Error code 22P03" in driver.find_element(By.ID, "error").text,
          error_text())
    check("... and no results, no 'Show more', no stack trace", results() == []
          and not driver.find_element(By.ID, "more").is_displayed() and "Traceback" not in driver.page_source
          and "ERROR:" not in driver.find_element(By.ID, "error").text)
    shot("05-not-an-image")
    ok = after_search(lambda: upload("avif.bin"))
    check("an unsupported format (AVIF) gives its sentence", ok and error_text() == UNSUPPORTED, error_text())
    ok = after_search(lambda: upload("bomb.png"))
    check("a picture with too many pixels (a 50000 x 50000 PNG header) gives the too-large sentence",
          ok and error_text() == TOO_MANY_PIXELS, error_text())
    upload("empty.bin")
    check("an empty file is refused on the page",
          wait(lambda d: error_text() == "The file is empty. Choose a photo.", 10), error_text())

    # An upload over the application's limit: the page does not send it; sent anyway, the application refuses it.
    before = searches()
    js("""const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array(arguments[0])], 'big.jpg', {type: 'image/jpeg'}));
        document.getElementById('dropzone').dispatchEvent(
          new DragEvent('drop', {bubbles: true, cancelable: true, dataTransfer: dt}));""",
       MAX_UPLOAD_MB * 1024 * 1024 + 1)
    check("an upload over the limit is refused on the page, without sending it",
          error_text() == TOO_LARGE and searches() == before, error_text())
    shot("06-too-large")
    answer = post_raw(MAX_UPLOAD_MB * 1024 * 1024 + 1)
    check("sent anyway, the application answers 413 with the same sentence",
          answer["status"] == 413 and answer["body"].get("error") == TOO_LARGE, answer)

    # --- drop and paste --------------------------------------------------------------------------------------
    ok = after_search(lambda: drop((inputs / "chelsea.png").read_bytes(), "chelsea.png", "image/png"))
    found = results()
    check("a dropped photo is searched: its product first",
          ok and found and found[0]["product"] == product["chelsea.png"] and found[0]["distance"] == "distance 0.0000",
          (error_text(), found[:1]))
    ok = after_search(lambda: drop((inputs / "rocket.jpg").read_bytes(), "image.jpg", "image/jpeg", paste=True))
    found = results()
    check("a pasted photo is searched: its product first",
          ok and found and found[0]["product"] == product["rocket.jpg"], (error_text(), found[:1]))

    # --- the keyboard alone ----------------------------------------------------------------------------------
    open_page(base + "/")
    js("if (document.activeElement) document.activeElement.blur()")  # Tab starts from the top of the page
    reached, path = tab_until(lambda e: e.get_attribute("id") == "words")
    check("Tab reaches the photo picker, then the words box", reached and "photo" in path and path.index("photo") <
          path.index("words"), path)
    ActionChains(driver).send_keys("a rocket on its launch pad").perform()
    ok = after_search(lambda: ActionChains(driver).send_keys(Keys.ENTER).perform())
    check("Enter in the words box searches", ok and len(results()) == PAGE_SIZE, error_text())
    reached, path = tab_until(lambda e: "like" in (e.get_attribute("class") or ""))
    active = driver.switch_to.active_element
    check("Tab goes on to the first result's 'More like this'", reached and active.get_attribute("aria-label")
          == f"More like product {results()[0]['product']}", path)
    check("the focused button shows a focus ring", js(
        "return getComputedStyle(document.activeElement).outlineStyle") != "none")
    shot("07-keyboard", full=False)
    target = results()[0]
    ok = after_search(lambda: ActionChains(driver).send_keys(Keys.ENTER).perform())
    check("Enter on it searches by that product: itself first, distance 0",
          ok and results() and results()[0]["product"] == target["product"]
          and results()[0]["distance"] == "distance 0.0000", results()[:1])
    check("the focus moves to the new results' heading", driver.switch_to.active_element.get_attribute("id")
          == "results-heading")
    reached, path = tab_until(lambda e: e.get_attribute("id") == "more", limit=PAGE_SIZE + 2)
    ok = reached and after_search(lambda: ActionChains(driver).send_keys(Keys.ENTER).perform())
    check("'Show more' works from the keyboard, and the focus lands on the first new result",
          ok and len(results()) == 2 * PAGE_SIZE
          and driver.switch_to.active_element.get_attribute("aria-label")
          == f"More like product {results()[PAGE_SIZE]['product']}", path)

    # --- a phone ---------------------------------------------------------------------------------------------
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True})
    driver.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": True, "maxTouchPoints": 5})
    open_page(base + "/?q=" + urllib.request.quote("a photo of a cat"))
    wait(lambda d: searches() > 0)
    phone = js("""const d = document.documentElement, cards = document.querySelectorAll('#results .card');
        return {width: window.innerWidth, scroll: d.scrollWidth, cards: cards.length,
                cardWidth: cards.length ? cards[0].getBoundingClientRect().width : 0,
                font: parseFloat(getComputedStyle(document.body).fontSize),
                camera: getComputedStyle(document.querySelector('label[for=camera]')).display,
                buttons: Math.min(...Array.from(document.querySelectorAll('.button'))
                  .filter(b => b.offsetParent).map(b => b.getBoundingClientRect().height))}""")
    check("at a phone's width (390 px) nothing scrolls sideways", phone["width"] == 390
          and phone["scroll"] <= phone["width"], phone)
    check("... results in two columns, 16 px text, finger-sized buttons",
          phone["cards"] == PAGE_SIZE and 120 <= phone["cardWidth"] <= 195 and phone["font"] >= 16
          and phone["buttons"] >= 40, phone)
    check("... and 'Take a photo' (camera capture) is offered on a touch screen", phone["camera"] != "none", phone)
    shot("08-phone")
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    driver.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": False})

    # --- offline: nothing from another origin; no script errors ----------------------------------------------
    foreign = js("""return performance.getEntriesByType('resource').map(e => e.name)
        .filter(n => !n.startsWith(location.origin) && !n.startsWith('blob:'))""")
    check("the page fetched nothing from another origin", foreign == [], foreign)
    uncaught = [e["message"] for e in driver.get_log("browser") if "Uncaught" in e["message"]]
    check("no uncaught script error in the browser's console", uncaught == [], uncaught)

    # --- the photo proxy: only the table's URLs, bounded ---------------------------------------------------
    status, headers, body, _ = http(f"{base}/photo/{product['coffee.png'] - 1000}")
    check("a photo comes through the application with its type, nosniff and a cache lifetime",
          status == 200 and body == (inputs / "coffee.png").read_bytes() and headers.get("Content-Type") == "image/png"
          and headers.get("X-Content-Type-Options") == "nosniff" and "max-age" in headers.get("Cache-Control", ""),
          (status, dict(headers)))
    status, _, _, seconds = http(f"{base}/photo/101")
    check("an endless photo download is cut at the size limit (502)", status == 502 and seconds < 10, (status, seconds))
    status, _, _, seconds = http(f"{base}/photo/102")
    check(f"a stalled photo download gives up after about {PHOTO_TIMEOUT} s (504)",
          status == 504 and seconds < 2 * PHOTO_TIMEOUT + 1, (status, seconds))
    status, _, body, _ = http(f"{base}/photo/103")
    check("a file: URL in the table is never read (502)", status == 502 and b"root:" not in body, (status, body[:80]))
    status, _, _, _ = http(f"{base}/photo/104")
    check("an HTML page instead of a photo is not passed on (502)", status == 502, status)
    status, _, _, _ = http(f"{base}/photo/105")
    check("a photo the image host does not have is 404", status == 404, status)
    codes = [http(f"{base}{path}")[0] for path in ("/photo/424242", "/photo/abc",
                                                    "/photo/" + urllib.request.quote(image_host + "/img/coffee.png"),
                                                    "/static/../search_service.py", "/static/app.js?x=1")]
    check("unknown ids 404; anything but an id (a URL, a path) is refused; static files by exact name only",
          codes == [404, 400, 400, 404, 200], codes)
    status, headers, _, _ = http(base + "/")
    check("the page is served with a Content-Security-Policy that allows only its own origin",
          "script-src 'self'" in headers.get("Content-Security-Policy", "")
          and "default-src 'none'" in headers.get("Content-Security-Policy", ""), dict(headers))

    # --- the database unreachable ----------------------------------------------------------------------------
    dead = start_app(f"host=127.0.0.1 port={free_port()} dbname=nowhere user=nobody connect_timeout=2",
                     "page-app-unreachable.log")
    check("with the database unreachable the page says so on arrival", open_page(dead + "/")
          and wait(lambda d: error_text() == UNREACHABLE, 30), error_text())
    driver.find_element(By.ID, "words").send_keys("red backpack", Keys.ENTER)
    check("... and on a search, as a sentence (no stack trace)",
          wait(lambda d: searches() > 0 and error_text() == UNREACHABLE, 30)
          and "Traceback" not in driver.page_source and "psycopg" not in driver.page_source, error_text())
    shot("09-database-unreachable")
    answer = post_raw(MAX_UPLOAD_MB * 1024 * 1024 + 1)
    check("an upload over the limit is refused before the database (413 even with the database down)",
          answer["status"] == 413 and answer["body"].get("error") == TOO_LARGE, answer)
except WebDriverException as e:
    check("the browser session ran to the end", False, str(e).splitlines()[0] if str(e) else repr(e))
finally:
    if driver is not None:
        driver.quit()
    for process in apps:
        process.terminate()
        process.wait(timeout=10)
    shutil.rmtree(profile, ignore_errors=True)

print(f"page: screenshots in {shots}, {time.monotonic() - started:.1f} s")
finish("page")
