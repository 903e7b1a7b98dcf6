"""Probing many endpoints takes about as long as the slowest one, not the sum.

Production System Down's VERIFY step asks every health URL from every vantage point at once
(`sevflow.tasks.probes.probe_all`). This bench serves 50 endpoints on loopback, each answering
after its own delay (the slowest `--slowest` seconds), and measures, in the same run:

- baseline: the slowest endpoint probed alone;
- all 50 probed in one round;
- the sum of the 50 delays (what probing one after another would cost at least).

It prints the ratio of the round to the baseline (about 1 is the goal) and to the sum.

    ./dev bench bench/probe.py [--endpoints 50] [--slowest 0.5] [--repeat 5]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sevflow.outage import DIRECT, ProbeTarget
from sevflow.tasks.probes import probe_all


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # 50 connections at once must not wait in a 5-long accept queue


class _Delayed(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        delay = float(parse_qs(urlsplit(self.path).query).get("delay", ["0"])[0])
        threading.Event().wait(delay)
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _serve(ready: "multiprocessing.Queue[int]") -> None:
    server = _Server(("127.0.0.1", 0), _Delayed)
    ready.put(server.server_address[1])
    server.serve_forever()


CPU: list[float] = []


def timed(targets: list[ProbeTarget]) -> float:
    started, cpu = time.perf_counter(), time.process_time()
    results = probe_all(targets, timeout=10.0)
    elapsed = time.perf_counter() - started
    if len(targets) > 1:
        CPU.append(time.process_time() - cpu)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=int, default=50)
    parser.add_argument("--slowest", type=float, default=0.5, help="delay of the slowest endpoint, seconds")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    # The endpoints run in a process of their own, as remote endpoints would: their work is
    # not charged to the prober's interpreter.
    ready: multiprocessing.Queue[int] = multiprocessing.Queue()
    server = multiprocessing.Process(target=_serve, args=(ready,), daemon=True)
    server.start()
    base = f"http://127.0.0.1:{ready.get(timeout=30)}"
    # Delays spread evenly up to the slowest: endpoint i answers after slowest*(i+1)/n seconds.
    delays = [args.slowest * (i + 1) / args.endpoints for i in range(args.endpoints)]
    targets = [ProbeTarget(vantage=DIRECT, url=f"{base}/e{i}?delay={d:.4f}", checks=f"e{i}") for i, d in enumerate(delays)]
    slowest = [targets[-1]]
    try:
        timed(targets)  # warm up: threads, imports, sockets
        alone, together = [], []
        for _ in range(args.repeat):
            alone.append(timed(slowest))
            together.append(timed(targets))
    finally:
        server.terminate()
        server.join()
    baseline, measured = statistics.median(alone), statistics.median(together)
    total = sum(delays)
    print(f"endpoints: {args.endpoints}, delays {delays[0]:.3f}..{delays[-1]:.3f} s, repeat {args.repeat} (medians)")
    print(f"baseline  slowest endpoint alone:      {baseline:.3f} s")
    print(f"measured  all {args.endpoints} in one round:         {measured:.3f} s")
    print(f"          sum of the delays (serial): {total:.3f} s")
    print(f"          CPU time of the prober per round: {statistics.median(CPU):.3f} s "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print(f"ratio to the slowest endpoint alone: {measured / baseline:.2f}   (1.00 = as long as the slowest)")
    print(f"ratio to the serial sum:             {measured / total:.3f}")


if __name__ == "__main__":
    main()
