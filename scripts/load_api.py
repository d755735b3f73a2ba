"""Load test of the REST API's image endpoint: closed-loop clients, each asking for `--n` images again and
again, for `--seconds` at each client count, against a server this script starts with batching on and
off (or against `--url`). Prints one row per (mode, clients): requests/s, images/s, latency percentiles,
503s, failures, and the server's resident memory; writes them to --out as JSON.

    .venv/bin/python scripts/load_api.py --image_checkpoint image_gen/models/diffusion_model.pt
    .venv/bin/python scripts/load_api.py --clients 16 --seconds 20 --modes batched   # a quick look

A 503 (queue full) is counted apart from failures; that client waits its Retry-After and asks again.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--image_checkpoint", type=Path, default=ROOT / "image_gen" / "models" / "diffusion_model.pt",
                   help="checkpoint the started servers load")
    p.add_argument("--url", default=None, help="measure this running server instead of starting one per mode")
    p.add_argument("--modes", nargs="+", choices=["batched", "unbatched"], default=["batched", "unbatched"],
                   help="server modes to start and measure")
    p.add_argument("--clients", nargs="+", type=int, default=[1, 4, 16, 64], help="concurrent clients")
    p.add_argument("--seconds", type=float, default=60.0, help="how long each client count runs")
    p.add_argument("--n", type=int, default=4, help="images per request")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--guidance_scale", type=float, default=None, help="w (default: the checkpoint's own)")
    p.add_argument("--device", default="cpu", help="the started servers' --device")
    p.add_argument("--server_args", default="", help="more flags for the started servers, one string")
    p.add_argument("--out", type=Path, default=Path("load_api.json"), help="where the rows go (JSON)")
    return p.parse_args(argv)


class StartedServer:
    """`python -m api.serve` on a free port; its resident memory sampled in the background."""

    def __init__(self, args, batching):
        command = [sys.executable, "-u", "-m", "api.serve", "--port", "0", "--device", args.device,
                   "--image_checkpoint", str(args.image_checkpoint), *([] if batching else ["--no-batching"]),
                   *args.server_args.split()]
        self.proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.url = None
        for line in self.proc.stdout:
            print("  server:", line.rstrip(), flush=True)
            found = re.search(r"API on (http://\S+)", line)
            if found:
                self.url = found.group(1)
                break
        if not self.url:
            raise SystemExit("error: the server did not start")
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def rss_mb(self):
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


async def client_loop(client, body, deadline, results, rng):
    while time.perf_counter() < deadline:
        request = {**body, "prompt": str(rng.randrange(10)), "seed": rng.randrange(2**31)}
        start = time.perf_counter()
        try:
            response = await client.post("/v1/images/generations", json=request)
        except httpx.HTTPError as err:
            results.append(("error", time.perf_counter() - start, type(err).__name__))
            continue
        seconds = time.perf_counter() - start
        if response.status_code == 200:
            results.append(("ok", seconds, len(response.json()["data"])))
        elif response.status_code == 503:
            results.append(("busy", seconds, None))
            wait = float(response.headers.get("retry-after", 1))
            await asyncio.sleep(min(wait, max(0.0, deadline - time.perf_counter())))
        else:
            results.append(("error", seconds, response.status_code))


async def measure(url, clients, seconds, body, memory):
    """One client count: (row, results)."""
    results, rss = [], []
    async with httpx.AsyncClient(base_url=url, timeout=600,
                                 limits=httpx.Limits(max_connections=clients + 4)) as client:
        start = time.perf_counter()
        deadline = start + seconds

        async def sample_memory():
            while time.perf_counter() < deadline:
                rss.append(memory())
                await asyncio.sleep(0.5)

        tasks = [client_loop(client, body, deadline, results, random.Random(1000 * clients + i)) for i in range(clients)]
        await asyncio.gather(*tasks, *([sample_memory()] if memory else []))
        elapsed = time.perf_counter() - start  # the window plus the requests in flight at its end
        if memory:
            rss.append(memory())
    ok = [r for r in results if r[0] == "ok"]
    latencies = np.array([r[1] for r in ok]) if ok else np.array([np.nan])
    row = {"clients": clients, "seconds": round(elapsed, 1), "requests": len(ok),
           "requests_per_s": len(ok) / elapsed, "images_per_s": sum(r[2] for r in ok) / elapsed,
           "p50_s": float(np.percentile(latencies, 50)), "p95_s": float(np.percentile(latencies, 95)),
           "p99_s": float(np.percentile(latencies, 99)), "busy_503": sum(r[0] == "busy" for r in results),
           "failures": sum(r[0] == "error" for r in results),
           "failure_kinds": sorted({str(r[2]) for r in results if r[0] == "error"})}
    if rss:
        row.update(rss_start_mb=rss[0], rss_max_mb=max(rss), rss_end_mb=rss[-1])
    return row


def print_row(mode, row):
    memory = (f"  RSS {row['rss_start_mb']:.0f}->{row['rss_max_mb']:.0f}->{row['rss_end_mb']:.0f} MB"
              if "rss_max_mb" in row else "")
    print(f"{mode:>9} {row['clients']:>3} clients: {row['requests_per_s']:.2f} req/s  {row['images_per_s']:.2f} img/s  "
          f"p50 {row['p50_s']:.1f}s p95 {row['p95_s']:.1f}s p99 {row['p99_s']:.1f}s  503s {row['busy_503']}  "
          f"failures {row['failures']}{memory}", flush=True)


def main(argv=None):
    args = parse_args(argv)
    body = {"n": args.n, "sampler": "ddim", "steps": args.steps}
    if args.guidance_scale is not None:
        body["guidance_scale"] = args.guidance_scale
    import torch
    names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")] if Path("/proc/cpuinfo").exists() else []
    machine = {"cpu": names[0] if names else platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}
    rows = []
    for mode in (["given"] if args.url else args.modes):
        server = None if args.url else StartedServer(args, batching=mode == "batched")
        url = args.url or server.url
        try:
            if httpx.get(f"{url}/v1/models").json()["data"][0].get("kind") == "gan":  # one pass: no sampler settings
                body = {"n": args.n}
            httpx.post(f"{url}/v1/images/generations", json={**body, "prompt": "0"}, timeout=600).raise_for_status()
            health = httpx.get(f"{url}/health").json()
            for clients in args.clients:
                row = asyncio.run(measure(url, clients, args.seconds, body, server.rss_mb if server else None))
                rows.append({"mode": mode, **row})
                print_row(mode, row)
                while httpx.get(f"{url}/health").json()["image_queue"]["busy"]:  # the next count starts idle
                    time.sleep(0.5)
        finally:
            if server:
                server.stop()
    record = {"request": body, "checkpoint": str(args.image_checkpoint), "machine": machine,
              "server": health["models"][0], "rows": rows, "seconds_per_count": args.seconds}
    args.out.write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
