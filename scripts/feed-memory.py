#!/usr/bin/env python3
"""Memory per live-feed subscriber: the server's RSS before and after N subscribers.

    cargo build --release --bin livestock
    python3 scripts/feed-memory.py 2000        # N subscribers (default 2000)

Starts a release `livestock serve` on loopback with a scratch data directory, creates one
deal, measures RSS, opens N connections that each subscribe to GET /v1/deals/d1/live and
read their first event, measures again, sends 20 changes (one event each through every
subscriber) and measures once more. Then it opens N idle connections on a fresh server, for
the connection's own share. Prints KB per subscriber and per idle connection.
"""
import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

BIN = os.environ.get("LIVESTOCK_BIN", "target/release/livestock")


def serve(data_dir, max_subscribers):
    server = subprocess.Popen(
        [BIN, "serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir,
         "--feed-subscribers-max", str(max_subscribers),
         # Room for every subscriber plus the requests beside them (the default is 10,000).
         "--connections-max", str(2 * max_subscribers + 1024)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in server.stdout:
        found = re.search(r"listening on http://(\S+)", line)
        if found:
            return server, found.group(1)
    raise SystemExit("the server did not start")


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS")


def post(addr, path, body):
    request = urllib.request.Request(f"http://{addr}{path}", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    return urllib.request.urlopen(request).read()


def connect(addr, n, path=None):
    host, port = addr.split(":")
    sockets = []
    for _ in range(n):
        s = socket.create_connection((host, int(port)))
        if path:
            s.sendall(f"GET {path} HTTP/1.1\r\nhost: livestock\r\n\r\n".encode())
        sockets.append(s)
    if path:
        for s in sockets:
            seen = b""
            while b"data:" not in seen:
                seen += s.recv(4096)
    return sockets


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    # One socket per connection, feeds and idle ones never open together; the hard limit may
    # be below the comfortable 4n (20,000 on this machine), so take what it allows.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * n + 1024
    soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    with tempfile.TemporaryDirectory() as scratch:
        server, addr = serve(f"{scratch}/feed", n)
        post(addr, "/v1/deals", {"id": "d1", "stock": 1000})
        time.sleep(0.5)
        before = rss_kb(server.pid)
        feeds = connect(addr, n, "/v1/deals/d1/live")
        time.sleep(1)
        subscribed = rss_kb(server.pid)
        for i in range(20):
            post(addr, "/v1/deals/d1/reserve", {"user_id": f"u{i}", "qty": 1})
            time.sleep(0.12)
        time.sleep(0.5)
        after_events = rss_kb(server.pid)
        server.terminate()
        server.wait()
        del feeds

        server, addr = serve(f"{scratch}/idle", n)
        time.sleep(0.5)
        idle_before = rss_kb(server.pid)
        idle = connect(addr, n)
        time.sleep(1)
        idle_after = rss_kb(server.pid)
        server.terminate()
        server.wait()
        del idle
    print(f"{n} subscribers: {(subscribed - before) / n:.1f} KB each "
          f"({(after_events - before) / n:.1f} KB after 20 events through each); "
          f"{n} idle connections: {(idle_after - idle_before) / n:.1f} KB each")


if __name__ == "__main__":
    main()
