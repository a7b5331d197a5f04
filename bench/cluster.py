#!/usr/bin/env python3
"""Several replicas on PostgreSQL: convergence, heartbeat cost, routing.

Usage: bench/cluster.py [--writes 240] [--heartbeat-seconds 30]

Needs a release build (built here), PostgreSQL (IMROUTE_TEST_POSTGRES_URL,
default postgres://postgres@127.0.0.1:5432/postgres; a database of its own is
created and dropped), psql, and wrk for the routing part (skipped without).

1. Convergence: three replicas on one database, 50 nodes; each write (a
   PATCH of one node's weight) goes to the next replica in turn; the time
   from its acknowledgement to the moment both other replicas answer with
   the writer's X-Routing-Revision (polled with GET /route, keep-alive).
2. Heartbeat cost: 1,000 nodes, each beating every 5 s (200 heartbeats/s),
   spread over the three replicas; CPU of each replica and of PostgreSQL.
3. Routing throughput of one replica on PostgreSQL against one on SQLite,
   same 50 nodes, wrk, 100-uid batches (routing never touches the store).
"""
import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

TOKEN = "bench-admin-token-0123456789"
THREADS = 12
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "imroute")


def psql(url, sql):
    subprocess.run(["psql", url, "-qAtc", sql], check=True, stdout=subprocess.DEVNULL)


def with_db(url, db):
    base, _, query = url.partition("?")
    scheme, _, rest = base.partition("://")
    host = rest.split("/", 1)[0]
    return f"{scheme}://{host}/{db}" + (f"?{query}" if query else "")


class Server:
    def __init__(self, workdir, env, cpu=None):
        full = dict(os.environ)
        full.update({
            "IMROUTE_LISTEN": "127.0.0.1:0",
            "IMROUTE_ADMIN_TOKEN": TOKEN,
            "IMROUTE_LOG_FORMAT": "json",
            "RUST_LOG": "info",
            "IMROUTE_OVERRIDES_PATH": os.path.join(workdir, "overrides.yaml"),
        })
        full.update(env)
        cmd = [BIN, "serve"]
        if cpu is not None and shutil.which("taskset") and os.cpu_count() >= 2:
            cmd = ["taskset", "-c", cpu] + cmd
        self.proc = subprocess.Popen(cmd, cwd=workdir, env=full,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.addr = None
        for line in self.proc.stderr:
            try:
                v = json.loads(line)
            except ValueError:
                continue
            if v.get("message") == "Listening":
                self.addr = v["addr"]
                break
        if not self.addr:
            sys.exit("a server did not start")
        # Keep draining its log so it never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()
        host, port = self.addr.rsplit(":", 1)
        self.host, self.port = host, int(port)

    def conn(self):
        return http.client.HTTPConnection(self.host, self.port, timeout=10)

    def cpu_seconds(self):
        return proc_cpu(self.proc.pid)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def proc_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu():
    total = 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() not in ("postgres", "postmaster"):
                    continue
            total += proc_cpu(pid)
        except OSError:
            pass
    return total


def request(conn, method, path, body=None, admin=True):
    headers = {"Content-Type": "application/json"}
    if admin:
        headers["Authorization"] = f"Bearer {TOKEN}"
    conn.request(method, path, json.dumps(body) if body is not None else None, headers)
    resp = conn.getresponse()
    data = resp.read()
    return resp.status, resp.headers, data


def node(i):
    return {"id": f"gw-{i:04d}", "region": "eu",
            "external": {"tcp_addr": f"10.0.{i // 256}.{i % 256}:5100",
                         "ws_addr": f"ws://gw-{i}.example.com:5200", "wss_addr": ""}}


def add_nodes(server, ids):
    c = server.conn()
    for i in ids:
        status, _, body = request(c, "POST", "/admin/nodes", node(i))
        if status != 201:
            sys.exit(f"POST /admin/nodes answered {status}: {body[:200]!r}")


def revision(conn):
    _, headers, _ = request(conn, "GET", "/route?uid=bench-probe", admin=False)
    return headers.get("X-Routing-Revision")


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round((len(s) - 1) * p)))]


def convergence(servers, writes):
    conns = [s.conn() for s in servers]
    watch = [s.conn() for s in servers]
    lags = []
    for i in range(writes):
        w = i % len(servers)
        status, _, body = request(conns[w], "PATCH", f"/admin/nodes/gw-{i % 50:04d}",
                                  {"weight": 100 + (i % 97)})
        if status != 200:
            sys.exit(f"PATCH answered {status}: {body[:200]!r}")
        acked = time.perf_counter()
        want = revision(watch[w])
        others = [k for k in range(len(servers)) if k != w]
        while others:
            others = [k for k in others if revision(watch[k]) != want]
            if time.perf_counter() - acked > 5:
                sys.exit(f"write {i} did not converge within 5 s")
        lags.append((time.perf_counter() - acked) * 1000)
    return lags


def heartbeats(servers, seconds, nodes):
    rate = nodes / 5.0
    stop = time.monotonic() + seconds
    errors = [0]
    sent = [0]

    def beat(k):
        c = servers[k % len(servers)].conn()
        mine = [i for i in range(nodes) if i % THREADS == k]
        interval = 5.0 / max(1, len(mine))
        next_at = time.monotonic()
        j = 0
        while time.monotonic() < stop:
            i = mine[j % len(mine)]
            j += 1
            status, _, _ = request(c, "PUT", f"/admin/nodes/gw-{i:04d}/heartbeat",
                                   {"connections": 1000 + j % 50})
            sent[0] += 1
            if status != 204:
                errors[0] += 1
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    # Every node's first heartbeat brings it in (a status change and a
    # rebuild on every replica); measure the steady state after that.
    warm = [s.conn() for s in servers]
    for i in range(nodes):
        request(warm[i % len(servers)], "PUT", f"/admin/nodes/gw-{i:04d}/heartbeat", {"connections": 1})
    time.sleep(2)
    stop = time.monotonic() + seconds
    before = [s.cpu_seconds() for s in servers]
    pg_before = postgres_cpu()
    t0 = time.monotonic()
    threads = [threading.Thread(target=beat, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    cpu = [(s.cpu_seconds() - b) / wall * 100 for s, b in zip(servers, before)]
    pg = (postgres_cpu() - pg_before) / wall * 100
    return rate, sent[0], errors[0], cpu, pg, wall


def wrk(server, body_file, seconds):
    if not shutil.which("wrk") and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "wrk"], capture_output=True)
    if not shutil.which("wrk"):
        print("wrk not found: routing throughput skipped (apt-get install wrk)")
        return None
    load_cpu = ["taskset", "-c", "1"] if shutil.which("taskset") and os.cpu_count() >= 2 else []
    out = subprocess.run(
        load_cpu + ["wrk", "-t1", "-c16", f"-d{seconds}s", "-s", os.path.join(ROOT, "bench", "post.lua"),
         f"http://{server.addr}/route/batch?intranet=0"],
        env=dict(os.environ, BODY_FILE=body_file), capture_output=True, text=True, check=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--writes", type=int, default=240)
    ap.add_argument("--heartbeat-seconds", type=float, default=30)
    ap.add_argument("--wrk-seconds", type=int, default=10)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "imroute"], cwd=ROOT, check=True)
    server_url = os.environ.get("IMROUTE_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    db = f"imroute_bench_{os.getpid()}"
    psql(server_url, f"CREATE DATABASE {db}")
    work = tempfile.mkdtemp()
    servers = []
    try:
        url = with_db(server_url, db)
        # Routing on either store, one at a time, each server alone on core
        # 0 with one worker thread and wrk on core 1 (as bench/load.sh).
        body = os.path.join(work, "body-100.json")
        with open(body, "w") as f:
            json.dump([f"user-{i:08d}" for i in range(100)], f)
        pin = {"TOKIO_WORKER_THREADS": "1", "RUST_LOG": "warn,imroute::app=info"}
        rps = {}
        for name, db_url in (("postgres", url), ("sqlite", f"sqlite://{work}/sqlite.db")):
            d = os.path.join(work, name)
            os.makedirs(d)
            s = Server(d, dict(pin, IMROUTE_DATABASE_URL=db_url, IMROUTE_REPLICA_ID=name), cpu="0")
            add_nodes(s, range(50))
            rps[name] = [wrk(s, body, args.wrk_seconds) for _ in range(2)]
            s.stop()
        if all(rps["postgres"]):
            print("routing, 100-uid batches, 50 nodes, req/s (two runs each): postgres "
                  + " / ".join(f"{r:,.0f}" for r in rps["postgres"]) + ", sqlite "
                  + " / ".join(f"{r:,.0f}" for r in rps["sqlite"])
                  + f" (ratio of means {sum(rps['postgres']) / sum(rps['sqlite']):.2f})")
        psql(url, "DELETE FROM nodes; DELETE FROM changes; DELETE FROM replicas")

        for k in range(3):
            d = os.path.join(work, f"r{k}")
            os.makedirs(d)
            servers.append(Server(d, {"IMROUTE_DATABASE_URL": url, "IMROUTE_REPLICA_ID": f"r{k}"}))
        add_nodes(servers[0], range(50))
        time.sleep(1)
        lags = convergence(servers, args.writes)
        print(f"convergence over {len(lags)} writes (ms): p50 {pct(lags, .5):.1f}  "
              f"p99 {pct(lags, .99):.1f}  max {max(lags):.1f}")

        add_nodes(servers[1], range(50, 1000))
        time.sleep(1)
        rate, sent, errors, cpu, pg, wall = heartbeats(servers, args.heartbeat_seconds, 1000)
        print(f"heartbeats: 1,000 nodes every 5 s ({rate:.0f}/s target, {sent / wall:.0f}/s sent, "
              f"{errors} errors) over {wall:.0f} s: replica CPU "
              + ", ".join(f"{c:.1f}%" for c in cpu) + f"; PostgreSQL CPU {pg:.1f}%")
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(work, ignore_errors=True)
        psql(server_url, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


if __name__ == "__main__":
    main()
