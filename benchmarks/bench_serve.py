"""The HTTP service under load: micro-batching on vs off at 1, 8 and 32 concurrent clients.

``sparkvision serve`` runs in its own process on loopback (the ImageNet efficientnet_lite0
model directory, every core for ONNX Runtime); a load generator in another process
runs N closed-loop clients (each sends a real imagenette photo as the raw body, waits
for the answer, sends the next), bounded by a request count and a time limit. Server
and clients share the machine's cores, as on any single host.

    .venv/bin/python benchmarks/run.py serve            # 240 requests per level
    .venv/bin/python benchmarks/run.py serve --quick    # 48 requests per level
    .venv/bin/python benchmarks/bench_serve.py --loadgen URL CLIENTS REQUESTS SECONDS   # the generator alone
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from common import IMAGENETTE, Result, table  # noqa: E402

from sparkvision.testing.server import free_port, wait_until_ready  # noqa: E402

TITLE = "HTTP serving: throughput and latency with micro-batching on vs off"
CONCURRENCY = (1, 8, 32)
PYTHON = str(ROOT / ".venv" / "bin" / "python")


# ---------------------------------------------------------------- the load generator (its own process)


async def _load(url: str, clients: int, requests: int, seconds: float) -> dict:
    import httpx

    photos = sorted(p for folder in sorted((IMAGENETTE / "val").iterdir()) for p in sorted(folder.iterdir())[:4])
    bodies = [p.read_bytes() for p in photos]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    issued = 0
    deadline = time.perf_counter() + seconds

    async def client(k: int, http: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < requests and time.perf_counter() < deadline:
            body = bodies[(issued + k) % len(bodies)]
            issued += 1
            start = time.perf_counter()
            try:
                response = await http.post(f"{url}/v1/predict", content=body,
                                            headers={"content-type": "image/jpeg"})
                status = response.status_code
            except httpx.HTTPError:
                status = 0
            latencies.append(time.perf_counter() - start)
            statuses[status] = statuses.get(status, 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        # Warm-up: one request per client, not counted.
        await asyncio.gather(*[http.post(f"{url}/v1/predict", content=bodies[i % len(bodies)],
                                         headers={"content-type": "image/jpeg"}) for i in range(clients)])
        started = time.perf_counter()
        await asyncio.gather(*[client(k, http) for k in range(clients)])
        wall = time.perf_counter() - started
    return {"clients": clients, "requests": len(latencies), "seconds": wall, "statuses": statuses,
            "latencies": latencies}


def loadgen_main(argv: list[str]) -> None:
    url, clients, requests, seconds = argv[0], int(argv[1]), int(argv[2]), float(argv[3])
    print(json.dumps(asyncio.run(_load(url, clients, requests, seconds))))


# ---------------------------------------------------------------- the benchmark


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, int(round(q / 100 * (len(ordered) - 1)))))
    return ordered[k]


def _batch_stats(url: str) -> tuple[float, float]:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        if family.name == "sparkvision_batch_size":
            values = {s.name: s.value for s in family.samples}
            return values["sparkvision_batch_size_count"], values["sparkvision_batch_size_sum"]
    return 0.0, 0.0


def run(quick: bool) -> Result:
    import logging

    from sparkvision.config import ServeSettings
    from sparkvision.deploy.export import export_registered

    logging.getLogger("httpx").setLevel(logging.WARNING)
    requests = 48 if quick else 240
    seconds = 60 if quick else 180
    model_dir = export_registered("efficientnet_lite0", Path(tempfile.mkdtemp(prefix="sv-bench-serve-")) / "model")
    rows, figures = [], {"requests_per_level": requests, "time_limit_s": seconds, "levels": []}
    for batching in (True, False):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [PYTHON, "-m", "sparkvision.cli.main", "serve", "-q", "--model", str(model_dir), "--port", str(port)]
        if not batching:
            cmd.append("--no-batching")
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_until_ready(url, lambda server=server: server.poll() is None, timeout=180)
            for clients in CONCURRENCY:
                calls0, images0 = _batch_stats(url)
                out = subprocess.run([PYTHON, str(Path(__file__).resolve()), "--loadgen", url, str(clients),
                                      str(requests), str(seconds)], capture_output=True, text=True,
                                     timeout=seconds + 120, check=True)
                result = json.loads(out.stdout)
                calls1, images1 = _batch_stats(url)
                lat = result["latencies"]
                ok = result["statuses"].get("200", 0)
                level = {
                    "batching": batching, "clients": clients, "requests": result["requests"], "ok": ok,
                    "seconds": result["seconds"], "throughput_rps": result["requests"] / result["seconds"],
                    "p50_ms": 1000 * _percentile(lat, 50), "p99_ms": 1000 * _percentile(lat, 99),
                    "mean_batch": (images1 - images0) / max(1.0, calls1 - calls0),
                }
                figures["levels"].append(level)
                rows.append(["on" if batching else "off", clients, level["requests"], level["ok"],
                             level["throughput_rps"], level["p50_ms"], level["p99_ms"], level["mean_batch"]])
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    by = {(lv["batching"], lv["clients"]): lv for lv in figures["levels"]}
    ratios = {c: by[(True, c)]["throughput_rps"] / by[(False, c)]["throughput_rps"] for c in CONCURRENCY}
    figures["throughput_ratio_on_off"] = ratios
    markdown = "\n\n".join([
        f"Server: `sparkvision serve` (efficientnet_lite0, ImageNet, fp32; batching on = defaults: max batch "
        f"{ServeSettings.max_batch}, window {ServeSettings.batch_window_ms:g} ms) in its own process; load: "
        "closed-loop clients in another process sending real 224 px "
        f"JPEGs as raw bodies, {requests} requests per level (time limit {seconds} s), after one warm-up "
        "request per client. Both share the machine's cores.",
        table(["batching", "clients", "requests", "200 OK", "requests/s", "p50 ms", "p99 ms", "images per call"],
              rows),
        "Throughput with batching on / off: " + ", ".join(f"{c} clients {r:.2f}x" for c, r in ratios.items()) + ".",
    ])
    return Result(markdown, figures)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--loadgen":
        loadgen_main(sys.argv[2:])
    else:
        print(run(quick="--quick" in sys.argv).markdown)
