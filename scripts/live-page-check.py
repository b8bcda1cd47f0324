#!/usr/bin/env python3
"""Drives headless Chromium through the DevTools protocol (standard library only) for
scripts/live-page-check.sh: opens the live page, waits until the numbers it shows are the ones
the API reports, takes a screenshot, and fails on a mismatch, a deal missing from the page, or a
policy (CSP) violation logged by the browser.

Why the DevTools protocol and not `chromium --dump-dom --virtual-time-budget`: virtual time
does not advance while a fetch is pending, and the page's EventSource is a fetch that never
ends, so the dump never comes.

Usage: live-page-check.py check DEVTOOLS_PORT PAGE_URL API_BASE DEAL... [--screenshot FILE]
       [--expect-sold-out DEAL] [--timeout-s N]
"""

import base64
import json
import os
import socket
import struct
import sys
import time
import urllib.request
from html.parser import HTMLParser


class DevTools:
    """One page target's DevTools websocket: a minimal RFC 6455 client (text frames, masked
    as a client must, fragmented answers reassembled)."""

    def __init__(self, port, ws_path, timeout_s):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {ws_path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise RuntimeError("DevTools closed the handshake")
            head += chunk
        status, _, self.buffer = head.partition(b"\r\n\r\n")
        if b" 101 " not in status.split(b"\r\n")[0]:
            raise RuntimeError(f"DevTools refused the websocket: {status[:200]!r}")
        self.next_id = 0
        self.events = []

    def _read(self, n):
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("DevTools closed the connection")
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def _frame(self):
        b0, b1 = self._read(2)
        length = b1 & 0x7F
        if length == 126:
            (length,) = struct.unpack(">H", self._read(2))
        elif length == 127:
            (length,) = struct.unpack(">Q", self._read(8))
        mask = self._read(4) if b1 & 0x80 else None
        payload = self._read(length)
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return b0 & 0x80, b0 & 0x0F, payload

    def _message(self):
        data = b""
        while True:
            fin, opcode, payload = self._frame()
            if opcode == 8:
                raise RuntimeError("DevTools closed the websocket")
            if opcode in (9, 10):  # ping, pong: nothing to do for a short session
                continue
            data += payload
            if fin:
                return json.loads(data)

    def call(self, method, **params):
        self.next_id += 1
        message = json.dumps({"id": self.next_id, "method": method, "params": params}).encode()
        header = bytes([0x81])
        if len(message) < 126:
            header += bytes([0x80 | len(message)])
        elif len(message) < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack(">H", len(message))
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", len(message))
        mask = os.urandom(4)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(message)))
        while True:
            answer = self._message()
            if answer.get("id") == self.next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self.events.append(answer)


class Cards(HTMLParser):
    """The page's deal cards: `section[data-deal-id]` with `data-state`, and inside it the
    elements with `data-field` (their `data-value`, or their text)."""

    def __init__(self):
        super().__init__()
        self.deals = {}
        self.current = None
        self.field = None
        self.status = None
        self.in_status = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section" and "data-deal-id" in attrs:
            self.current = {"state": attrs.get("data-state")}
            self.deals[attrs["data-deal-id"]] = self.current
        elif self.current is not None and "data-field" in attrs:
            # The card's `data-state` is the state; the label inside it is its text.
            name = attrs["data-field"].replace("state", "state_text")
            if "data-value" in attrs:
                self.current[name] = int(attrs["data-value"])
            else:
                self.field = name
                self.current[name] = ""
                if name == "sold_out_at":
                    self.current["sold_out_shown"] = "hidden" not in attrs
        if attrs.get("id") == "status":
            self.in_status = True
            self.status = ""

    def handle_data(self, data):
        if self.field is not None and self.current is not None:
            self.current[self.field] += data
        if self.in_status:
            self.status += data

    def handle_endtag(self, tag):
        self.field = None
        self.in_status = False


def api_deal(base, deal):
    with urllib.request.urlopen(f"{base}/v1/deals/{deal}", timeout=5) as answer:
        return json.load(answer)


def page_target(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as answer:
        targets = json.load(answer)
    for target in targets:
        if target.get("type") == "page":
            return target["webSocketDebuggerUrl"].split(f":{port}", 1)[1]
    raise RuntimeError("Chromium has no page open")


def compare(cards, api):
    """The differences between what the page shows and what the API says, as sentences."""
    wrong = []
    for deal, truth in api.items():
        shown = cards.get(deal)
        if shown is None:
            wrong.append(f"{deal}: not on the page")
            continue
        state = "sold_out" if truth["state"] == "live" and truth["available"] == 0 else truth["state"]
        if shown.get("state") != state or shown.get("state_text") != state.replace("_", " "):
            wrong.append(f"{deal}: the page says state {shown.get('state')!r}, the API {state!r}")
        for field in ("available", "held", "sold"):
            if shown.get(field) != truth[field]:
                wrong.append(f"{deal}: the page says {field} {shown.get(field)}, the API {truth[field]}")
        if shown.get("waiting") != 0:
            wrong.append(f"{deal}: the page says waiting {shown.get('waiting')}, the feed says 0")
    return wrong


def main(argv):
    args = argv[1:]
    options = {"--screenshot": None, "--expect-sold-out": [], "--timeout-s": "20"}
    positional = []
    while args:
        arg = args.pop(0)
        if arg == "--expect-sold-out":
            options[arg].append(args.pop(0))
        elif arg in options:
            options[arg] = args.pop(0)
        else:
            positional.append(arg)
    command, port, page_url, api_base, *deals = positional
    timeout_s = float(options["--timeout-s"])
    devtools = DevTools(int(port), page_target(int(port)), timeout_s)

    if command == "open":
        # Open the page and leave it running (the check below attaches to it again).
        devtools.call("Page.enable")
        devtools.call("Page.navigate", url=page_url)
        return 0

    devtools.call("Log.enable")
    deadline = time.monotonic() + timeout_s
    wrong = ["nothing read yet"]
    cards = {}
    while time.monotonic() < deadline:
        api = {deal: api_deal(api_base, deal) for deal in deals}
        html = devtools.call(
            "Runtime.evaluate", expression="document.documentElement.outerHTML", returnByValue=True
        )["result"]["value"]
        parser = Cards()
        parser.feed(html)
        cards = parser.deals
        # The API read again after the page: equal to the first read, the counters were still.
        again = {deal: api_deal(api_base, deal) for deal in deals}
        if again != api:
            time.sleep(0.2)
            continue
        wrong = compare(cards, api)
        for deal in options["--expect-sold-out"]:
            shown = cards.get(deal, {})
            if not (shown.get("sold_out_shown") and shown.get("sold_out_at", "").startswith("Sold out at ")):
                wrong.append(f"{deal}: no sell-out moment shown ({shown.get('sold_out_at')!r})")
            if api[deal]["available"] != 0:
                wrong.append(f"{deal}: the API has {api[deal]['available']} left, not sold out")
        if not wrong:
            break
        time.sleep(0.2)

    problems = [
        e["params"]["entry"]
        for e in devtools.events
        if e.get("method") == "Log.entryAdded" and e["params"]["entry"].get("level") == "error"
        and "favicon" not in e["params"]["entry"].get("url", "")
    ]
    for entry in problems:
        wrong.append(f"the browser logged an error: {entry.get('text')}")

    if options["--screenshot"]:
        shot = devtools.call("Page.captureScreenshot", format="png")
        with open(options["--screenshot"], "wb") as out:
            out.write(base64.b64decode(shot["data"]))

    print(f"page status: {parser.status!r}")
    for deal in deals:
        shown = cards.get(deal, {})
        print(
            f"  {deal}: page state={shown.get('state')} available={shown.get('available')} "
            f"held={shown.get('held')} sold={shown.get('sold')} waiting={shown.get('waiting')} "
            f"| {shown.get('sold_out_at') or '-'}"
        )
        truth = api_deal(api_base, deal)
        print(
            f"  {deal}: API  state={truth['state']} available={truth['available']} "
            f"held={truth['held']} sold={truth['sold']}"
        )
    if wrong:
        for line in wrong:
            print(f"  mismatch: {line}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
