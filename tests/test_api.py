"""The REST API (api/) as a client meets it: a real uvicorn server started by `python -m api.serve` on a
free port, spoken to through httpx, over the tiny checkpoints conftest's demo_checkpoints trains. Every
endpoint, every bad input answered by a JSON 4xx, batched images equal to the same requests alone and to
image_gen's infer, /health during a long request, the API key, the bounded queue and a clean shutdown."""
import base64
import concurrent.futures
import hashlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from conftest import ROOT, write_music_file

KEY = "test-key-0123456789"


class Server:
    """`python -m api.serve ...` on port 0; `url` once it says where it listens. Its output is kept in `lines`."""

    def __init__(self, *args, env=None):
        self.proc = subprocess.Popen([sys.executable, "-u", "-m", "api.serve", "--port", "0", "--device", "cpu", *args],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, **(env or {})})
        self.lines, self.url = [], None
        for line in self.proc.stdout:
            self.lines.append(line)
            found = re.search(r"API on (http://\S+)", line)
            if found:
                self.url = found.group(1)
                break
        assert self.url, "".join(self.lines)
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def ckpt(demo_checkpoints):
    return demo_checkpoints


def model_args(ckpt):
    return ["--image_checkpoint", str(ckpt["image"]), "--image_results", str(ckpt["image_results"]),
            "--audio_checkpoint", str(ckpt["audio"]), "--audio_results", str(ckpt["audio_results"])]


@pytest.fixture(scope="module")
def server(ckpt):
    """The default server, except that the oldest request waits up to 300 ms for others to join it."""
    s = Server(*model_args(ckpt), "--max_wait_ms", "300", "--max_images", "8")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def pixels(png_b64):
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(png_b64))))


def generate(client, **body):
    response = client.post("/v1/images/generations", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_health_and_models(client, ckpt):
    health = client.get("/health").json()
    assert health["ready"] is True and health["device"] == "cpu"
    image, audio = health["models"]
    assert image["id"] == "ddpm-mnist" and image["dataset"] == "mnist" and image["epochs"] == 1
    assert image["sha256"] == hashlib.sha256(ckpt["image"].read_bytes()).hexdigest()
    assert audio["id"] == "mel-autoencoder" and audio["epochs"] == 1
    assert audio["sha256"] == hashlib.sha256(ckpt["audio"].read_bytes()).hexdigest()
    cards = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    ddpm = cards["ddpm-mnist"]
    assert ddpm["classes"] == [str(i) for i in range(10)] and ddpm["num_timesteps"] == 1000
    assert ddpm["scores"]["training"] is None  # trained with --fid_samples 0: no FID is claimed
    ae = cards["mel-autoencoder"]
    assert ae["sample_rate"] == 16000 and ae["clip_seconds"] == 5
    training = ae["scores"]["training"]  # the validation PESQ/STOI beside the Griffin-Lim oracle
    assert training["epoch"] == 1 and 0 <= training["stoi"] <= 1 and 0 <= training["oracle_stoi"] <= 1
    assert client.get("/docs").status_code == 200 and "/v1/images/generations" in client.get("/openapi.json").text


def test_generation_matches_infer(client, ig, ckpt, mnist_dir, tmp_path):
    """Same seed and settings as image_gen's infer in fp32: the same pixels (the API samples in fp32, eager, so
    that a request draws the same pixels in any batch)."""
    result = generate(client, model="ddpm-mnist", prompt="7", n=3, seed=5, steps=4, guidance_scale=1.0)
    assert result["class"] == "7" and result["seed"] == 5 and result["sampler"] == "dpm++2m-4, w=1"
    assert len(result["data"]) == 3 and all(d["class"] == "7" for d in result["data"])
    ig.main(["--mode", "infer", "--digits", "7", "--num_samples", "3", "--seed", "5", "--sampling_steps", "4",
             "--guidance_scale", "1.0", "--device", "cpu", "--precision", "fp32", "--checkpoint", str(ckpt["image"]),
             "--results_dir", str(tmp_path), "--data_dir", str(mnist_dir)])
    for i, item in enumerate(result["data"]):
        infer = np.asarray(Image.open(tmp_path / "samples" / f"digit7_{i:03d}.png"))
        assert pixels(item["b64_json"]).shape[:2] == (28, 28)  # RGB, as torchvision writes infer's PNGs
        assert np.array_equal(pixels(item["b64_json"]), infer)
    again = generate(client, prompt=7, n=3, seed=5, steps=4, guidance_scale=1.0)  # an int prompt, the same class
    assert [d["b64_json"] for d in again["data"]] == [d["b64_json"] for d in result["data"]]
    other = generate(client, prompt="7", n=1, seed=6, steps=4, guidance_scale=1.0)
    assert other["data"][0]["b64_json"] != result["data"][0]["b64_json"]


def test_random_prompt_and_default_seed(client):
    first = generate(client, prompt="random", n=2, steps=2)
    assert first["class"] == "random" and first["guidance_scale"] is None and first["sampler"] == "dpm++2m-2"
    assert 0 <= first["seed"] < 2**31
    replay = generate(client, prompt="random", n=2, steps=2, seed=first["seed"])
    assert [d["b64_json"] for d in replay["data"]] == [d["b64_json"] for d in first["data"]]


def test_concurrent_requests_are_batched_and_draw_what_they_draw_alone(client):
    """Requests with the same settings arriving together share one batch; each gets the images it gets alone."""
    bodies = [dict(prompt=str(c), n=n, seed=s, steps=3, guidance_scale=2.0)
              for c, n, s in ((1, 2, 10), (4, 3, 11), (1, 1, 12), (9, 2, 13))]
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda body: generate(client, **body), bodies))
    assert max(r["batch"]["requests"] for r in together) > 1, [r["batch"] for r in together]
    for body, batched in zip(bodies, together):
        alone = generate(client, **body)
        assert alone["batch"] == {"requests": 1, "images": body["n"]}
        for a, b in zip(alone["data"], batched["data"]):
            assert np.array_equal(pixels(a["b64_json"]), pixels(b["b64_json"]))


def test_health_answers_during_a_long_request(client, server):
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        long = pool.submit(generate, client, prompt="3", n=8, sampler="ddpm", seed=0)
        deadline = time.time() + 30
        while not client.get("/health").json()["image_queue"]["busy"]:
            assert time.time() < deadline and not long.done()
            time.sleep(0.05)
        start = time.perf_counter()
        health = client.get("/health")
        answered = time.perf_counter() - start
        assert health.status_code == 200 and health.json()["image_queue"]["busy"] is True
        assert not long.done(), "the DDPM request ended before /health was asked: nothing was measured"
        assert answered < 1.0
        assert long.result()["sampler"].startswith("ddpm-1000, w=")


def error_of(response, status):
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    return error


@pytest.mark.parametrize("body, status, says", [
    (dict(model="gan-mnist", prompt="1"), 404, "unknown model 'gan-mnist'"),
    (dict(prompt="10"), 400, "class 10 is out of range"),
    (dict(prompt="ankle boot"), 400, "unknown prompt 'ankle boot'"),
    (dict(prompt="1", n=9), 400, "limit of 8 images"),
    (dict(prompt="1", n=0), 400, "n: Input should be greater than or equal to 1"),
    (dict(prompt="1", guidance_scale=-1), 400, "guidance_scale: Input should be greater than or equal to 0"),
    (dict(prompt="random", guidance_scale=1), 400, "guidance_scale needs a class prompt"),
    (dict(prompt="1", sampler="euler"), 400, "sampler: Input should be 'ddim', 'ddpm' or 'dpm++2m'"),
    (dict(prompt="1", steps=0), 400, "steps: Input should be greater than or equal to 1"),
    (dict(prompt="1", steps=1001), 400, "dpm++2m takes 1 to 1000 steps"),
    (dict(prompt="1", response_format="url"), 400, "response_format: Input should be 'b64_json'"),
    (dict(prompt="1", size="1024x1024"), 400, "size '1024x1024' is not served: ddpm-mnist draws 28x28 images"),
])
def test_bad_image_requests(client, body, status, says):
    assert says in error_of(client.post("/v1/images/generations", json=body), status)["message"]


def test_malformed_json(client):
    response = client.post("/v1/images/generations", content=b'{"prompt": ', headers={"content-type": "application/json"})
    assert "not valid JSON" in error_of(response, 400)["message"]


def reconstruction(client, data, name="clip.wav", **fields):
    return client.post("/v1/audio/reconstructions", files={"file": (name, data)},
                       data={k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()})


def test_audio_reconstruction(client, ckpt):
    data = (ckpt["music"] / "test" / "d.wav").read_bytes()  # 12 s the model never trained on
    response = reconstruction(client, data, start=2.5, oracle=True)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["start"] == 2.5 and result["sample_rate"] == 16000 and result["clip_seconds"] == 5
    assert abs(result["duration_seconds"] - 12.0) < 0.01
    for key in ("reconstruction", "oracle"):
        audio, rate = sf.read(io.BytesIO(base64.b64decode(result[key]["b64_wav"])))
        assert rate == 16000 and audio.shape == (80000,) and np.abs(audio).max() > 0.01
    scores = result["audio"]
    assert scores["clips"] == 1 and 0 <= scores["stoi"] <= 1 and 0 <= scores["oracle_stoi"] <= 1
    assert result["mel"]["clips"] == 1 and result["mel"]["mse"] > 0
    wav = reconstruction(client, data, start=2.5, response_format="wav")
    assert wav.headers["content-type"] == "audio/wav"
    assert json.loads(wav.headers["x-scores"])["audio"]["stoi"] == pytest.approx(scores["stoi"])
    assert wav.content == base64.b64decode(result["reconstruction"]["b64_wav"])  # seeded Griffin-Lim
    assert reconstruction(client, data).json()["oracle"] is None


def test_bad_audio_requests(client, ckpt, tmp_path):
    assert "cannot be read as audio" in error_of(reconstruction(client, b"not audio at all" * 100, "x.mp3"), 400)["message"]
    assert "is empty" in error_of(reconstruction(client, b"", "e.wav"), 400)["message"]
    silent = io.BytesIO()
    sf.write(silent, np.zeros(16000 * 6, np.float32), 16000, format="WAV")
    assert "silent" in error_of(reconstruction(client, silent.getvalue(), "s.wav"), 400)["message"]
    nan = io.BytesIO()
    wave = np.sin(np.arange(16000 * 6) / 10).astype(np.float32)
    wave[100:105] = np.nan
    sf.write(nan, wave, 16000, format="WAV", subtype="FLOAT")
    assert "not finite" in error_of(reconstruction(client, nan.getvalue(), "n.wav"), 400)["message"]
    music = (ckpt["music"] / "test" / "d.wav").read_bytes()
    assert "past the end" in error_of(reconstruction(client, music, start=20), 400)["message"]
    assert "start: Input should be greater than or equal to 0" in error_of(
        reconstruction(client, music, start=-1), 400)["message"]
    assert "unknown model" in error_of(reconstruction(client, music, model="vae"), 404)["message"]
    missing = client.post("/v1/audio/reconstructions", data={"start": "0"})
    assert "file: Field required" in error_of(missing, 400)["message"]


def test_audio_generation_from_a_vae_and_its_refusals(client, ckpt, tmp_path):
    refused = client.post("/v1/audio/generations", json={"n": 1})  # the default server holds the plain autoencoder
    assert "plain autoencoder" in error_of(refused, 400)["message"]
    s = Server("--audio_checkpoint", str(ckpt["vae"]))
    try:
        with httpx.Client(base_url=s.url, timeout=120) as c:
            assert c.get("/health").json()["models"][0]["can_generate"] is True
            response = c.post("/v1/audio/generations", json={"n": 2, "seed": 3})
            assert response.status_code == 200, response.text
            result = response.json()
            assert result["model"] == "mel-vae" and result["seed"] == 3 and len(result["data"]) == 2
            clips = [base64.b64decode(d["b64_wav"]) for d in result["data"]]
            for data in clips:
                audio, rate = sf.read(io.BytesIO(data))
                assert rate == 16000 and audio.shape == (80000,)
            again = c.post("/v1/audio/generations", json={"n": 1, "seed": 3}).json()
            assert base64.b64decode(again["data"][0]["b64_wav"]) == clips[0]  # seeded: the same first clip
            assert "limit of 4 clips" in error_of(c.post("/v1/audio/generations", json={"n": 5}), 400)["message"]
            assert "n: Input should be greater than or equal to 1" in error_of(
                c.post("/v1/audio/generations", json={"n": 0}), 400)["message"]
            assert "Extra inputs are not permitted" in error_of(
                c.post("/v1/audio/generations", json={"prompt": "jazz"}), 400)["message"]
            assert isinstance(c.post("/v1/audio/generations", json={}).json()["seed"], int)  # a random seed, returned
    finally:
        s.stop()


def raw_request(url, head, body=b""):
    """Send a request by hand and return (status, the response's body): for bodies httpx would not send."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + body)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    status = int(response.split(b" ", 2)[1])
    return status, response.split(b"\r\n\r\n", 1)[1]


def test_upload_over_the_limit_is_refused_unread(server):
    """A declared 2 GB body gets 413 after its first kilobyte: the server does not wait for the rest."""
    head = (b"POST /v1/audio/reconstructions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 2000000000\r\n\r\n")
    status, body = raw_request(server.url, head, b"--b\r\n" + b"x" * 1000)
    assert status == 413 and "limit of 50 MB" in json.loads(body)["error"]["message"]


def test_chunked_upload_over_the_limit(ckpt):
    """Without a Content-Length, the body is counted as it arrives and refused once over the limit."""
    s = Server("--audio_checkpoint", str(ckpt["audio"]), "--image_checkpoint", str(ckpt["image"]),
               "--max_upload_mb", "0.5")
    try:
        def chunks():
            yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n"
            for _ in range(40):
                yield b"\0" * 65536
            yield b"\r\n--b--\r\n"
        response = httpx.post(f"{s.url}/v1/audio/reconstructions", content=chunks(), timeout=60,
                              headers={"content-type": "multipart/form-data; boundary=b"})
        assert "limit of 0.5 MB" in error_of(response, 413)["message"]
    finally:
        s.stop()


def test_api_key(ckpt):
    refused = subprocess.run([sys.executable, "-m", "api.serve", "--host", "0.0.0.0", "--image_checkpoint",
                              str(ckpt["image"])], cwd=ROOT, capture_output=True, text=True,
                             env={k: v for k, v in os.environ.items() if k != "IMAGEAUDIOGEN_API_KEY"}, timeout=120)
    assert refused.returncode == 2 and "set IMAGEAUDIOGEN_API_KEY" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    s = Server("--image_checkpoint", str(ckpt["image"]), env={"IMAGEAUDIOGEN_API_KEY": KEY})
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            response = httpx.get(f"{s.url}/health", headers=headers)
            assert "API key" in error_of(response, 401)["message"]
            assert response.headers["www-authenticate"] == "Bearer"
        assert httpx.post(f"{s.url}/v1/images/generations", json={"prompt": "1"}).status_code == 401
        ok = httpx.get(f"{s.url}/health", headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200 and ok.json()["models"][0]["id"] == "ddpm-mnist"
        assert ok.json()["audio_queue"] and len(ok.json()["models"]) == 1
        audio = httpx.post(f"{s.url}/v1/audio/reconstructions", headers={"Authorization": f"Bearer {KEY}"},
                           files={"file": ("a.wav", b"RIFF")})
        assert "no audio model is loaded" in error_of(audio, 400)["message"]
    finally:
        s.stop()


def test_full_queue_answers_503_with_retry_after(ckpt):
    """One request drawing and one waiting fill a queue of 1: a third gets 503 at once, the two get their images.
    The steps are driven through /health, not left to how six threads happen to be scheduled."""
    s = Server("--image_checkpoint", str(ckpt["image"]), "--max_queue", "1", "--no-batching")

    def queue_reaches(state):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            queue = httpx.get(f"{s.url}/health").json()["image_queue"]
            if all(queue[key] == value for key, value in state.items()):
                return
            time.sleep(0.01)
        raise AssertionError(f"the image queue never reached {state}: {queue}")

    try:
        body = dict(prompt="2", n=4, sampler="ddpm", seed=0)
        post = lambda: httpx.post(f"{s.url}/v1/images/generations", json=body, timeout=300)  # noqa: E731
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            drawing = pool.submit(post)
            queue_reaches({"busy": True, "queued_requests": 0})
            waiting = pool.submit(post)
            queue_reaches({"busy": True, "queued_requests": 1})
            refused = post()
            served = [drawing.result(), waiting.result()]
        assert int(refused.headers["retry-after"]) >= 1 and "busy" in error_of(refused, 503)["message"]
        assert [r.status_code for r in served] == [200, 200]
        assert served[0].json()["data"] == served[1].json()["data"]  # one at a time: the same seed, the same pixels
    finally:
        s.stop()


def test_clean_shutdown(ckpt):
    s = Server("--image_checkpoint", str(ckpt["image"]))
    assert httpx.get(f"{s.url}/health").status_code == 200
    assert s.stop() == 130  # Ctrl-C's exit status, after uvicorn's shutdown
    time.sleep(0.2)
    assert "API server stopped." in "".join(s.lines)
    assert "Traceback" not in "".join(s.lines)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{s.url}/health")


def test_a_gan_checkpoint_is_served_in_one_pass(ckpt, ig, mnist_dir, tmp_path):
    """The GAN's images are infer's; 'random' and the DDPM's sampler settings are 400s that say why."""
    server = Server("--image_checkpoint", str(ckpt["gan"]))
    try:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            card = c.get("/v1/models").json()["data"][0]
            assert card["id"] == "gan-mnist" and card["kind"] == "gan" and card["num_timesteps"] is None
            result = generate(c, prompt="7", n=2, seed=5)
            assert result["sampler"] == "GAN generator (EMA), one pass" and result["guidance_scale"] is None
            ig.main(["--mode", "infer", "--digits", "7", "--num_samples", "2", "--seed", "5", "--device", "cpu",
                     "--checkpoint", str(ckpt["gan"]), "--results_dir", str(tmp_path), "--data_dir", str(mnist_dir)])
            for i, item in enumerate(result["data"]):
                assert np.array_equal(pixels(item["b64_json"]),
                                      np.asarray(Image.open(tmp_path / "samples" / f"digit7_{i:03d}.png")))
            for body, says in ((dict(prompt="random"), "has no unconditional samples"),
                               (dict(prompt="7", steps=10), "steps does not apply"),
                               (dict(prompt="7", guidance_scale=1.0), "guidance_scale does not apply")):
                answer = c.post("/v1/images/generations", json=body)
                assert answer.status_code == 400 and says in answer.json()["error"]["message"], answer.text
    finally:
        assert server.stop() == 130


def test_missing_checkpoints(tmp_path):
    run = subprocess.run([sys.executable, "-m", "api.serve", "--image_checkpoint", str(tmp_path / "none.pt")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and f"--image_checkpoint {tmp_path / 'none.pt'}: no such file" in run.stderr
    write_music_file(tmp_path / "x.wav", 1.0, 0)
    run = subprocess.run([sys.executable, "-m", "api.serve", "--image_checkpoint", str(tmp_path / "x.wav")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "Traceback" not in run.stderr and run.stderr.strip()


def test_the_api_serves_a_learned_prior_and_a_vocoder(ckpt, ag, tmp_path):
    """--audio_prior and --audio_inverse vocoder-pghi --vocoder: /health names both, and a generation is byte for
    byte what `audio_gen.py --mode generate` writes with the same prior, inverse and seed."""
    cache = ["--cache_dir", str(tmp_path / "cache")]
    prior, vocoder = tmp_path / "prior.pt", tmp_path / "vocoder.pt"
    ag.main(["--mode", "train_prior", "--checkpoint", str(ckpt["vae"]), "--prior", str(prior), "--epochs", "1",
             "--prior_hidden", "16", "--prior_blocks", "2", "--batch_size", "2", "--warmup_steps", "2",
             "--device", "cpu", "--results_dir", str(tmp_path / "prior_results"), *cache])
    ag.main(["--mode", "train_vocoder", "--audio_dir", str(ckpt["music"]), "--vocoder", str(vocoder), "--epochs", "1",
             "--vocoder_dim", "16", "--vocoder_blocks", "1", "--segment_frames", "16", "--batch_size", "4",
             "--audio_eval_clips", "0", "--device", "cpu", "--results_dir", str(tmp_path / "vocoder_results"), *cache])
    ag.main(["--mode", "generate", "--checkpoint", str(ckpt["vae"]), "--prior", str(prior), "--prior_steps", "50",
             "--inverse", "vocoder-pghi", "--vocoder", str(vocoder), "--griffin_lim_iters", "64", "--num_samples", "1",
             "--seed", "3", "--device", "cpu", "--results_dir", str(tmp_path / "generated"), *cache])
    s = Server("--audio_checkpoint", str(ckpt["vae"]), "--audio_prior", str(prior), "--audio_inverse", "vocoder-pghi",
               "--vocoder", str(vocoder))
    try:
        with httpx.Client(base_url=s.url, timeout=300) as c:
            health = c.get("/health").json()["models"][0]
            assert health["inverse"] == "vocoder vocoder.pt magnitude + PGHI + RAAR-64"
            assert health["prior"] == "learned prior prior.pt (epoch 1, ddim-50)"
            result = c.post("/v1/audio/generations", json={"n": 1, "seed": 3}).json()
            assert result["prior"] == health["prior"]
            assert base64.b64decode(result["data"][0]["b64_wav"]) == (tmp_path / "generated" / "generated_000.wav").read_bytes()
    finally:
        s.stop()
    refused = subprocess.run([sys.executable, "-m", "api.serve", "--audio_inverse", "vocoder"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--audio_inverse vocoder needs --vocoder" in refused.stderr


def test_the_official_openai_client_draws_digits(server, ckpt):
    """OpenAI's own Python client against this server: `size` at the native size and `user` are accepted; another
    size is a 400 naming the one served, which the client raises as BadRequestError."""
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    result = client.images.generate(model="ddpm-mnist", prompt="7", n=4, response_format="b64_json", size="28x28",
                                    user="alice", extra_body={"seed": 5})
    assert len(result.data) == 4
    images = [pixels(d.b64_json) for d in result.data]
    assert all(image.shape[:2] == (28, 28) for image in images) and len({image.tobytes() for image in images}) == 4
    with pytest.raises(openai.BadRequestError, match="size '256x256' is not served: ddpm-mnist draws 28x28 images"):
        client.images.generate(model="ddpm-mnist", prompt="7", size="256x256")
