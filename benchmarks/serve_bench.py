"""Latency and throughput of `homus serve` on this machine: a live server on 127.0.0.1 (a subprocess),
the run's HOMUS test-split strokes replayed to POST /api/predict by 1 client, then by 16 concurrent
clients (threads, one keep-alive httpx connection each), each phase bounded by a request count and a
time limit. Prints p50/p95/p99 latency (client side, whole HTTP round trip), requests/s, errors.

    PYTHONPATH=. python benchmarks/serve_bench.py runs/r18-64-ink
    PYTHONPATH=. python benchmarks/serve_bench.py runs/a runs/b runs/c runs/d --clients 1   # an ensemble

Targets (2 CPU cores): one model p95 <= 25 ms with one client, >= 100 requests/s with 16 clients,
zero errors in 5,000 requests; a 2 x 2 ensemble p95 <= 80 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from classifier.runfolder import RunFolder  # noqa: E402


def replay_strokes(run: str | Path, limit: int) -> list[list]:
    """The run's test-split samples as request strokes (lists of [x, y]), in split order."""
    folder = RunFolder(run)
    test = set(folder.split()["test"])
    samples = [s for s in folder.samples() if s.id in test][:limit]
    if not samples:
        raise SystemExit(f"{run}: no test samples found")
    return [[s.tolist() for s in sample.strokes] for sample in samples]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(runs: list[str], port: int, threads: int, collect: str) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "homus.cli", "serve", *runs, "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning", "--collect-dir", collect]
    cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, env=env)
    end = time.monotonic() + 120
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"homus serve exited with code {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit("homus serve did not answer within 120 s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process (all its threads) has used so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def phase(url: str, bodies: list[dict], clients: int, requests: int, seconds: float, server_pid: int = 0) -> dict:
    """``requests`` predictions (or as many as fit in ``seconds``) from ``clients`` threads. Besides
    the wall-clock figures, the CPU time the server and this client process spent per request: on a
    machine shared with other work, that is what stays comparable."""
    lock = threading.Lock()
    issued = 0
    latencies, server_ms, errors = [], [], []
    deadline = time.monotonic() + seconds

    def client() -> None:
        nonlocal issued
        with httpx.Client(base_url=url, timeout=30) as http:
            while True:
                with lock:
                    if issued >= requests or time.monotonic() > deadline:
                        return
                    body = bodies[issued % len(bodies)]
                    issued += 1
                t0 = time.perf_counter()
                try:
                    r = http.post("/api/predict", json=body)
                    ok = r.status_code == 200
                    ms = r.json().get("ms") if ok else None
                except (httpx.HTTPError, ValueError) as e:
                    ok, ms, r = False, None, e
                dt = (time.perf_counter() - t0) * 1000
                with lock:
                    if ok:
                        latencies.append(dt)
                        server_ms.append(ms)
                    else:
                        errors.append(str(getattr(r, "status_code", r)))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start, server_cpu, client_cpu = time.perf_counter(), cpu_seconds(server_pid), time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    server_cpu, client_cpu = cpu_seconds(server_pid) - server_cpu, time.process_time() - client_cpu
    n = max(len(latencies) + len(errors), 1)
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {"clients": clients, "requests": len(latencies) + len(errors), "errors": len(errors),
            "error_kinds": sorted(set(errors))[:5], "seconds": round(wall, 2),
            "requests_per_s": round((len(latencies) + len(errors)) / wall, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2), "p95_ms": round(float(np.percentile(lat, 95)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "server_p50_ms": round(float(np.median(server_ms)), 2) if server_ms else None,
            "server_cpu_ms_per_request": round(server_cpu * 1000 / n, 2),
            "client_cpu_ms_per_request": round(client_cpu * 1000 / n, 2),
            "load_average": round(os.getloadavg()[0], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="Run folder(s); several are served as one ensemble.")
    ap.add_argument("--clients", default="1,16", help="Client counts, one phase each.")
    ap.add_argument("--requests", type=int, default=5000, help="Requests per phase (at most).")
    ap.add_argument("--seconds", type=float, default=120, help="Time limit per phase.")
    ap.add_argument("--warmup", type=int, default=50, help="Requests sent first and not counted.")
    ap.add_argument("--threads", type=int, default=1, help="homus serve --threads (0: torch's default).")
    ap.add_argument("--samples", type=int, default=2000, help="Test-split samples to replay (cycled).")
    ap.add_argument("--json", dest="json_out", help="Also write the results here.")
    args = ap.parse_args()

    bodies = [{"strokes": s, "top_k": 5} for s in replay_strokes(args.runs[0], args.samples)]
    port = free_port()
    collect = tempfile.TemporaryDirectory(prefix="serve-bench-")  # the page's collect folder, removed after
    proc = start_server(args.runs, port, args.threads, collect.name)
    url = f"http://127.0.0.1:{port}"
    try:
        phase(url, bodies, 1, args.warmup, 60, proc.pid)
        results = []
        print(f"{len(args.runs)} model(s): {', '.join(Path(r).name for r in args.runs)}; {len(bodies)} test "
              f"samples replayed; {os.cpu_count()} CPUs")
        print("clients  requests  errors     req/s   p50 ms   p95 ms   p99 ms   server p50 ms"
              "   server CPU ms/req   client CPU ms/req   load avg")
        for clients in [int(c) for c in args.clients.split(",")]:
            r = phase(url, bodies, clients, args.requests, args.seconds, proc.pid)
            results.append(r)
            print(f"{r['clients']:>7}  {r['requests']:>8}  {r['errors']:>6}  {r['requests_per_s']:>8}  "
                  f"{r['p50_ms']:>7}  {r['p95_ms']:>7}  {r['p99_ms']:>7}  {r['server_p50_ms']:>14}"
                  f"  {r['server_cpu_ms_per_request']:>18}  {r['client_cpu_ms_per_request']:>18}  "
                  f"{r['load_average']:>8}"
                  + (f"  errors: {r['error_kinds']}" if r["errors"] else ""), flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        collect.cleanup()
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"runs": args.runs, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
