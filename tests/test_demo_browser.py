"""demo/app.py end to end in a real headless browser: Debian's chromium, driven by Selenium through
chromedriver, against `streamlit run` on a free port with the tiny checkpoints the tests train. It asks for
digits and waits for the grid, uploads a WAV through the page's file input, clicks Reconstruct and waits
for the three players, and takes a screenshot of each tab (into the test's tmp folder; into docs/ for the
README with UPDATE_SCREENSHOTS=1). Skips, saying why, only where no chromium/chromedriver is installed
(.ci/run installs them with apt-get where it can).

README screenshots from real checkpoints:
    UPDATE_SCREENSHOTS=1 DEMO_IMAGE_CHECKPOINT=image_gen/models/diffusion_model.pt \
    DEMO_AUDIO_CHECKPOINT=audio_gen/models/audio_autoencoder.pt DEMO_UPLOAD=song.wav \
    python -m pytest tests/test_demo_browser.py
"""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import soundfile as sf

from conftest import ROOT, synthetic_music

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
TIMEOUT = 120  # seconds for any one thing to appear: a loaded CI machine is slow, a broken page never shows it
FIRST_LOAD_TIMEOUT = 600  # the page's first run compiles the U-Net (two graphs in fp32, each half a minute or more)


@pytest.fixture(scope="module")
def binaries():
    """(browser, chromedriver) paths, or skip naming what is missing (before any checkpoint is trained)."""
    browser = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        missing = " and ".join(name for name, path in (("chromium", browser), ("chromedriver", driver)) if not path)
        pytest.skip(f"no {missing} on this machine: install Debian's chromium and chromium-driver "
                    f"(apt-get install chromium chromium-driver; .ci/run does it where apt-get works)")
    return browser, driver


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(binaries, demo_checkpoints, tmp_path_factory):
    """The demo served by `streamlit run` as `make demo` starts it (from the repository root, whose
    .streamlit/config.toml holds its settings); yields its URL once it answers."""
    port, log_path = free_port(), tmp_path_factory.mktemp("streamlit") / "server.log"
    checkpoints = ["--image_checkpoint", os.environ.get("DEMO_IMAGE_CHECKPOINT", str(demo_checkpoints["image"])),
                   "--audio_checkpoint", os.environ.get("DEMO_AUDIO_CHECKPOINT", str(demo_checkpoints["audio"]))]
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "demo/app.py", "--server.port", str(port), "--", *checkpoints],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.read() == b"ok":
                        break
            except OSError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.5)
        assert f"URL: {url}" in log_path.read_text()  # what `make demo` prints
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(binaries):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = binaries
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    # --no-sandbox: Chromium's sandbox refuses to start as root, which CI machines often are
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def screenshot(driver, name, tmp_path):
    """The whole page as it is now, into docs/ (UPDATE_SCREENSHOTS=1) or tmp: the window grows to the page's
    height first, since Streamlit scrolls inside its own container."""
    height = driver.execute_script(
        "return document.querySelector('[data-testid=\"stMainBlockContainer\"]').scrollHeight")
    driver.set_window_size(1400, height + 120)
    time.sleep(1)  # let the layout settle at the new size
    folder = ROOT / "docs" if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(exist_ok=True)
    assert driver.save_screenshot(str(folder / name))
    driver.set_window_size(1400, 1000)


def test_digits_then_audio_in_a_real_browser(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, TIMEOUT)
    button = lambda label: (By.XPATH, f"//button[.//p[text()='{label}']]")  # noqa: E731
    browser.get(server)

    WebDriverWait(browser, FIRST_LOAD_TIMEOUT).until(EC.element_to_be_clickable(button("Generate"))).click()
    clicked = time.perf_counter()
    grid = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "[data-testid='stImage'] img")))
    wait.until(lambda _: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", grid))
    print(f"digits: grid on screen {time.perf_counter() - clicked:.2f} s after the click")
    assert "sampled in" in browser.find_element(By.CSS_SELECTOR, "[data-testid='stImage']").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "[data-testid='stDownloadButton']")) == 2
    screenshot(browser, "demo_digits.png", tmp_path)

    upload = os.environ.get("DEMO_UPLOAD")
    if upload is None:
        upload = tmp_path / "song.wav"
        sf.write(str(upload), synthetic_music(8.0, 11, 44_100), 44_100)
    next(tab for tab in browser.find_elements(By.CSS_SELECTOR, "[data-testid='stTab']") if tab.text == "Audio").click()
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "input[type='file']"))).send_keys(str(upload))
    wait.until(EC.element_to_be_clickable(button("Reconstruct"))).click()
    clicked = time.perf_counter()
    wait.until(lambda _: len(browser.find_elements(By.TAG_NAME, "audio")) == 3)
    # each player holds a 5-s clip the browser could read
    durations = wait.until(lambda _: browser.execute_script(
        "const d = [...document.querySelectorAll('audio')].map(a => a.duration); return d.every(x => x > 0) && d;"))
    print(f"audio: players on screen {time.perf_counter() - clicked:.2f} s after the click")
    assert np.allclose(durations, 5.0, atol=0.01)
    wait.until(lambda _: len(browser.find_elements(By.CSS_SELECTOR, "[data-testid='stImage'] img")) == 2)
    table = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "[data-testid='stTable']")))
    assert "oracle" in table.text
    assert not browser.find_elements(By.CSS_SELECTOR, "[data-testid='stException']")
    screenshot(browser, "demo_audio.png", tmp_path)
