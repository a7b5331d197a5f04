#!/usr/bin/env python3
"""Admin writes and overrides reloads at a steady rate, for bench/load.sh.

Usage: churn.py BASE_URL TOKEN OVERRIDES_PATH SECONDS NODES [--idle]
Every 50 ms it PATCHes one node's weight; every 100 ms it rewrites the
overrides file by rename (as editors do). One process, one keep-alive
connection, so the load it adds is the server's work, not process start-up.

With --idle it keeps the same rhythm and does the same client-side work,
but sends GET /healthz and rewrites a file in a folder of its own that the
server does not watch: the control for the quiet rounds, so that a
comparison isolates what the writes and reloads cost the server.
"""
import http.client
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.parse

if len(sys.argv) < 6 or sys.argv[6:] not in ([], ["--idle"]):
    sys.exit(__doc__)
base, token, overrides, seconds, nodes = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
idle = sys.argv[6:] == ["--idle"]
scratch = None
if idle:
    # Outside the watched folder: the server sees no event at all.
    scratch = tempfile.mkdtemp(prefix="imroute-churn-idle-")
    overrides = os.path.join(scratch, "overrides.yaml")
url = urllib.parse.urlparse(base)
conn = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
start = time.monotonic()
end = start + seconds
i = writes = reloads = 0
try:
    while time.monotonic() < end:
        i += 1
        body = json.dumps({"weight": 100 + i % 7})
        if idle:
            conn.request("GET", "/healthz", headers=headers)
        else:
            conn.request("PATCH", f"/admin/nodes/gw-{i % nodes + 1}", body, headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            sys.exit(f"{'GET /healthz' if idle else 'PATCH'} answered {resp.status}")
        writes += 1
        if i % 2 == 0:
            tmp = overrides + ".tmp"
            with open(tmp, "w") as f:
                f.write(f"pins:\n  vip-{i}: gw-1\n")
            os.replace(tmp, overrides)
            reloads += 1
        # On a fixed clock: a slower answer (a durable write) does not
        # lower the rate, so both modes send the same number of events.
        time.sleep(max(0.0, start + i * 0.05 - time.monotonic()))
finally:
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)
if idle:
    print(f"control: {writes} GET /healthz, {reloads} rewrites of an unwatched file")
else:
    print(f"churn: {writes} admin writes, {reloads} overrides rewrites")
