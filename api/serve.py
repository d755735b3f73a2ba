"""Serve both models over HTTP:

    make serve                                           # http://127.0.0.1:8000, OpenAPI page at /docs
    python -m api.serve --image_checkpoint runs/ddpm.pt --audio_checkpoint runs/ae.pt --port 8080

Checkpoints come from this command line only (requests never name a file). Binding to an address other
than the loopback needs an API key in the environment variable IMAGEAUDIOGEN_API_KEY; with a key set,
every request must send `Authorization: Bearer <key>`.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch
import uvicorn

from audiogen.export import vocoder_choice_error
from audiogen.inverse import INVERSES, InverseConfig
from imagegen.common import ArgumentParser, HelpFormatter, number, resolve_device

from . import ROOT
from .app import BodyLimit, ServerOptions, create_app, image_batcher
from .models import AudioModel, ImageModel

API_KEY_VARIABLE = "IMAGEAUDIOGEN_API_KEY"
DEFAULTS = {  # the scripts' own default paths
    "image_checkpoint": ROOT / "image_gen" / "models" / "diffusion_model.pt",
    "image_results": ROOT / "image_gen" / "results",
    "audio_checkpoint": ROOT / "audio_gen" / "models" / "audio_autoencoder.pt",
    "audio_results": ROOT / "audio_gen" / "results",
}


def build_parser():
    p = ArgumentParser(prog="python -m api.serve", formatter_class=HelpFormatter,
                       description="The REST API over image_gen's and audio_gen's checkpoints (docs/api.md).")
    models = p.add_argument_group("models")
    for kind in ("image", "audio"):
        what = ("image_gen checkpoint, a DDPM or a GAN" if kind == "image" else "audio_gen checkpoint") + \
            " (or a folder written by --mode export)"
        models.add_argument(f"--{kind}_checkpoint", type=Path, default=None,
                            help=f"{what} (default: {DEFAULTS[f'{kind}_checkpoint'].relative_to(ROOT)}, "
                                 f"skipped with a note when absent)")
        models.add_argument(f"--{kind}_results", type=Path, default=None,
                            help=f"{kind}_gen results folder whose metrics.json scores are served with the model "
                                 f"(default: {DEFAULTS[f'{kind}_results'].relative_to(ROOT)})")
    models.add_argument("--audio_inverse", choices=INVERSES, default=InverseConfig.kind,
                        help="how the audio model's log-mels become audio (audio_gen.py --inverse); the vocoder "
                             "kinds need --vocoder, or an exported --audio_checkpoint folder with its vocoder")
    models.add_argument("--vocoder", type=Path, default=None, help="audio_gen vocoder checkpoint (--mode train_vocoder)")
    models.add_argument("--audio_prior", type=Path, default=None,
                        help="a learned prior of the audio VAE (audio_gen.py --mode train_prior) that generations "
                             "sample instead of N(0, I), with DDIM 50 steps, eta 0")
    models.add_argument("--device", default=None, help="torch device, cpu or cuda (default: cuda if available)")
    net = p.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1",
                     help=f"address to bind; any other than the loopback needs {API_KEY_VARIABLE} set")
    net.add_argument("--port", type=number(int, 0, 65535), default=8000, help="TCP port (0: any free one)")
    net.add_argument("--access_log", action="store_true", help="log every request (uvicorn's access log)")
    batching = p.add_argument_group("batching and limits")
    batching.add_argument("--batching", action=argparse.BooleanOptionalAction, default=True,
                          help="merge concurrent image requests with the same sampler settings into one batch "
                               "(--no-batching: one request at a time)")
    batching.add_argument("--max_batch", type=number(int, 1, 4096), default=None,
                          help="images per sampling batch (default: the sampler's own, 64 on a CPU and 1000 on "
                               "a GPU, halved when guided)")
    batching.add_argument("--max_wait_ms", type=number(float, 0, 10_000), default=10.0,
                          help="how long the oldest waiting request waits for others to join its batch")
    batching.add_argument("--max_queue", type=number(int, 1, 100_000), default=32,
                          help="image requests that may wait; one more gets 503 with Retry-After")
    batching.add_argument("--max_images", type=number(int, 1, 1024), default=16, help="the largest n per request")
    batching.add_argument("--max_upload_mb", type=number(float, 0, 4096, low_open=True), default=50.0,
                          help="the largest request body (audio upload); larger ones get 413 unread")
    return p


def is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_model(parser, cls, kind, path, results, device, **options):
    """The model at `path` (an explicit path must load), or at the script's default path when present."""
    explicit = path is not None
    path = path or DEFAULTS[f"{kind}_checkpoint"]
    results = results or DEFAULTS[f"{kind}_results"]
    if not path.exists():
        if explicit:
            parser.error(f"--{kind}_checkpoint {path}: no such file or folder")
        print(f"note: no {kind} checkpoint at {path}: the {kind} endpoints answer 400 "
              f"(train one with {kind}_gen/train.sh, or pass --{kind}_checkpoint)", flush=True)
        return None
    model = cls.load(path, device, results, **options)
    print(f"{kind} model {model.id}: {path} ({model.health()['epochs']} epochs, sha256 {model.sha256[:12]})",
          flush=True)
    return model


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    device = resolve_device(args.device, parser)
    problem = vocoder_choice_error(args.audio_inverse, args.vocoder,
                                   args.audio_checkpoint or DEFAULTS["audio_checkpoint"])
    if problem:
        parser.error(problem)
    for name in ("vocoder", "audio_prior"):
        if getattr(args, name) is not None and not getattr(args, name).exists():
            parser.error(f"--{name} {getattr(args, name)}: no such file or folder")
        if getattr(args, name) is not None and args.audio_checkpoint is None \
                and not DEFAULTS["audio_checkpoint"].exists():
            parser.error(f"--{name} is for the audio model, and there is none to serve: pass --audio_checkpoint")
    api_key = os.environ.get(API_KEY_VARIABLE) or None
    if not is_loopback(args.host) and api_key is None:
        parser.error(f"--host {args.host} would open the API to the network: set {API_KEY_VARIABLE} to a secret "
                     f"token first (clients send it as 'Authorization: Bearer <token>')")
    torch.set_grad_enabled(False)
    image = load_model(parser, ImageModel, "image", args.image_checkpoint, args.image_results, device)
    audio = load_model(parser, AudioModel, "audio", args.audio_checkpoint, args.audio_results, device,
                       inverse=InverseConfig(args.audio_inverse, vocoder=args.vocoder), prior=args.audio_prior)
    if image is None and audio is None:
        raise SystemExit("error: no checkpoint to serve: train a model first (make run) or pass "
                         "--image_checkpoint / --audio_checkpoint")
    options = ServerOptions(batching=args.batching, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                            max_queue=args.max_queue, max_images=args.max_images,
                            max_upload_mb=args.max_upload_mb, api_key=api_key)
    batcher = image_batcher(image, options)
    app = BodyLimit(create_app(image, audio, options, device, batcher), int(args.max_upload_mb * 2**20))
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, access_log=args.access_log,
                                           log_level="warning"))
    return serve(server, batcher, args.host, api_key)


def serve(server, batcher, host, api_key):
    """uvicorn's event loop in a second thread, the image batches on this (main) thread, where torch
    samples faster; Ctrl-C or SIGTERM lets the batch in progress finish and the server drain, then exits
    with 130 or 143."""
    received = []

    def shut_down(signum, frame):
        received.append(signum)
        server.should_exit = True
        if batcher:
            batcher.stop()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, shut_down)
    loop = threading.Thread(target=server.run, name="event-loop")
    loop.start()
    while not server.started and loop.is_alive():
        time.sleep(0.05)
    if not server.started:
        raise SystemExit(f"error: the server could not start on {host}:{server.config.port} (see above)")
    bound_host, port = server.servers[0].sockets[0].getsockname()[:2]
    print(f"ImageAudioGen API on http://{host if host != '0.0.0.0' else bound_host}:{port} (OpenAPI page: /docs; "
          f"batching {'on' if batcher and batcher.batching else 'off'}{'; API key required' if api_key else ''}). "
          f"Ctrl-C stops it.", flush=True)
    if batcher:
        batcher.run(keep_going=loop.is_alive)
    while loop.is_alive():
        loop.join(0.2)  # a timed join, so that signals reach shut_down
    print("API server stopped.", flush=True)
    return 128 + received[0] if received else 0


if __name__ == "__main__":
    sys.exit(main())
