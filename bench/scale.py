#!/usr/bin/env python3
"""Cost of the control plane as the fleet grows.

Usage: bench/scale.py [--sizes 100,1000,10000] [--store sqlite|postgres]

For each size, against a release build on a fresh store: create the nodes
one by one through the admin API (total time), then measure admin write
latency (PATCH of one node's weight, 200 writes), GET /admin/nodes (one page
of 100 and the whole list), the table build time (the server's own
imroute_routing_table_build_seconds histogram), and RSS; then the same with
100,000 pins in the overrides file. One keep-alive connection, one request
at a time, so latencies are the server's work plus loopback.
"""
import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import BIN, ROOT, TOKEN, Server, psql, with_db, request, node, pct  # noqa: E402


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def build_stats(conn):
    _, _, body = request(conn, "GET", "/metrics", admin=False)
    total = count = 0.0
    for line in body.decode().splitlines():
        if line.startswith("imroute_routing_table_build_seconds_sum"):
            total = float(line.split()[1])
        elif line.startswith("imroute_routing_table_build_seconds_count"):
            count = float(line.split()[1])
    return total, count


def timed(conn, method, path, body=None):
    t = time.perf_counter()
    status, _, data = request(conn, method, path, body)
    ms = (time.perf_counter() - t) * 1000
    if status >= 300:
        sys.exit(f"{method} {path} answered {status}: {data[:200]!r}")
    return ms, data


def measure(server, conn, n, label):
    writes = [timed(conn, "PATCH", f"/admin/nodes/gw-{i % n:05d}", {"weight": 100 + i % 7})[0]
              for i in range(200)]
    b0 = build_stats(conn)
    for i in range(50):
        timed(conn, "PATCH", f"/admin/nodes/gw-{i % n:05d}", {"weight": 50 + i % 7})
    b1 = build_stats(conn)
    build_ms = (b1[0] - b0[0]) / max(1.0, b1[1] - b0[1]) * 1000
    page = [timed(conn, "GET", "/admin/nodes?limit=100&after=gw-00050")[0] for _ in range(20)]
    full = [timed(conn, "GET", "/admin/nodes")[0] for _ in range(3)]
    print(f"{n:>6} nodes{label:<14} write p50 {pct(writes, .5):6.2f} ms  p99 {pct(writes, .99):6.2f} ms | "
          f"build {build_ms:6.2f} ms | list page {pct(page, .5):6.2f} ms, all {pct(full, .5):8.1f} ms | "
          f"RSS {rss_mib(server.proc.pid):6.1f} MiB", flush=True)


def run(size, store_url, work):
    d = os.path.join(work, f"n{size}")
    os.makedirs(d)
    server = Server(d, {"IMROUTE_DATABASE_URL": store_url, "IMROUTE_REPLICA_ID": f"scale-{size}",
                        "RUST_LOG": "warn,imroute::app=info"})
    try:
        conn = server.conn()
        t = time.perf_counter()
        for i in range(size):
            body = node(i)
            body["id"] = f"gw-{i:05d}"
            timed(conn, "POST", "/admin/nodes", body)
        created = time.perf_counter() - t
        print(f"{size:>6} nodes created one by one in {created:.1f} s ({created / size * 1000:.2f} ms each)")
        measure(server, conn, size, "")
        pins = os.path.join(d, "overrides.yaml")
        with open(pins + ".tmp", "w") as f:
            f.write("pins:\n")
            for i in range(100_000):
                f.write(f"  user-{i}: gw-{i % size:05d}\n")
        os.replace(pins + ".tmp", pins)
        status, _, body = request(conn, "POST", "/admin/overrides/reload")
        if status != 200:
            sys.exit(f"reload answered {status}: {body[:200]!r}")
        measure(server, conn, size, " + 100k pins")
    finally:
        server.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--store", default="sqlite", choices=["sqlite", "postgres"])
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "imroute"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp()
    server_url = os.environ.get("IMROUTE_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            if args.store == "postgres":
                db = f"imroute_scale_{os.getpid()}_{size}"
                psql(server_url, f"CREATE DATABASE {db}")
                try:
                    run(size, with_db(server_url, db), work)
                finally:
                    psql(server_url, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            else:
                run(size, f"sqlite://{work}/n{size}.db", work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
