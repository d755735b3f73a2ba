"""Time the web demo as a user sees it: seconds from a click to the finished result in a real browser.

    python scripts/bench_demo.py --image_checkpoint image_gen/models/diffusion_model.pt --clicks 4
    python scripts/bench_demo.py --image_checkpoint ... --classes 8 --per_class 2 -- --precision fp32 --no-compile

Starts `streamlit run demo/app.py` (arguments after `--` go to the demo), opens it in headless chromium
through Selenium, keeps the first `--classes` classes of the digits tab, sets the images per class, and
clicks Generate `--clicks` times (a new seed each time), printing for each click the seconds until the
new grid is fully loaded and the sampling time the page reports. With `--audio FILE`, it then uploads the
file and times Reconstruct until the three players can play. Needs chromium and chromedriver (Debian's
chromium and chromium-driver) and a machine otherwise idle: the figures are wall-clock seconds.
"""
import argparse
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image_checkpoint", required=True, help="image_gen checkpoint to serve")
    p.add_argument("--audio_checkpoint", default=None, help="audio_gen checkpoint (needed with --audio)")
    p.add_argument("--classes", type=int, choices=range(1, 11), default=8, metavar="1-10",
                   help="keep this many classes (0, 1, ...) in the page's class list")
    p.add_argument("--per_class", type=int, default=2, help="images per class")
    p.add_argument("--clicks", type=int, default=4, help="Generate clicks to time")
    p.add_argument("--audio", default=None, help="an audio file to upload and reconstruct once, timed")
    p.add_argument("--startup_timeout", type=float, default=300, help="seconds allowed for the page's first load")
    p.add_argument("demo_args", nargs="*", help="arguments for demo/app.py, after --")
    return p.parse_args()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, port):
    command = [sys.executable, "-m", "streamlit", "run", "demo/app.py", "--server.port", str(port), "--",
               "--image_checkpoint", args.image_checkpoint, *args.demo_args]
    if args.audio_checkpoint:
        command += ["--audio_checkpoint", args.audio_checkpoint]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read() == b"ok":
                    return process, url
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise SystemExit("error: the demo did not start")


def open_browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                     "--disable-background-networking", "--disable-component-update"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def main():
    args = parse_args()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    process, url = start_server(args, free_port())
    driver = open_browser()
    try:
        button = (By.XPATH, "//button[.//p[text()='Generate']]")
        started = time.perf_counter()
        driver.get(url)
        WebDriverWait(driver, args.startup_timeout).until(EC.element_to_be_clickable(button))
        print(f"page ready {time.perf_counter() - started:.1f} s after opening (checkpoint load, compile, warm-up)")
        wait = WebDriverWait(driver, 120, poll_frequency=0.02)  # the default 0.5 s would round the times up
        chosen = driver.find_element(By.CSS_SELECTOR, "[data-testid='stMultiSelect'] input")
        for _ in range(10 - args.classes):
            chosen.send_keys(Keys.BACKSPACE)  # drops the last chosen class
            time.sleep(0.3)
        count = driver.find_element(By.CSS_SELECTOR, "[data-testid='stNumberInput'] input[aria-label^='Images']")
        count.send_keys(Keys.CONTROL, "a")
        count.send_keys(str(args.per_class), Keys.ENTER)
        seed = driver.find_elements(By.CSS_SELECTOR, "[data-testid='stNumberInput'] input[aria-label='Seed']")[0]
        time.sleep(1.5)
        for click in range(args.clicks):
            seed.send_keys(Keys.CONTROL, "a")
            seed.send_keys(str(click), Keys.ENTER)
            time.sleep(1.5)  # let the page take the new seed before the click
            old = [img.get_attribute("src") for img in driver.find_elements(By.CSS_SELECTOR, "[data-testid='stImage'] img")]
            wait.until(EC.element_to_be_clickable(button)).click()
            clicked = time.perf_counter()
            image = wait.until(lambda d: next((img for img in d.find_elements(By.CSS_SELECTOR, "[data-testid='stImage'] img")
                                               if img.get_attribute("src") not in old), False))
            wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image))
            seconds = time.perf_counter() - clicked
            caption = driver.find_element(By.CSS_SELECTOR, "[data-testid='stImage']").text
            sampled = re.search(r"(\d+) images, (.*): sampled in ([\d.]+) s", caption)
            print(f"click {click + 1}: grid on screen after {seconds:.2f} s ({sampled.group(1)} images, "
                  f"{sampled.group(2)}, sampling {sampled.group(3)} s)", flush=True)
        if args.audio:
            tab = next(t for t in driver.find_elements(By.CSS_SELECTOR, "[data-testid='stTab']") if t.text == "Audio")
            tab.click()
            wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "input[type='file']"))).send_keys(
                str(Path(args.audio).resolve()))
            wait.until(EC.element_to_be_clickable((By.XPATH, "//button[.//p[text()='Reconstruct']]"))).click()
            clicked = time.perf_counter()
            wait.until(lambda d: d.execute_script("const a = [...document.querySelectorAll('audio')];"
                                                  "return a.length == 3 && a.every(x => x.duration > 0);"))
            print(f"audio: three players ready after {time.perf_counter() - clicked:.2f} s")
    finally:
        driver.quit()
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    main()
