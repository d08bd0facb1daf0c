"""Open a report's index.html in headless Chromium and fail on console errors, network requests or broken images.

    python benchmarks/check_report_html.py DIR/index.html [--screenshot shot.png] [--full-page]
                                           [--expect HEADING ...] [--chromium /usr/bin/chromium]

Talks to Chromium over the DevTools protocol through a minimal standard-library WebSocket client (no extra
packages). It records uncaught exceptions, console.error/assert calls, browser log errors, any request that is not
file:/data:/about: (the page must be self-contained) and failed loads, then checks that every <img> decoded and
is not blank (some of its pixels are coloured: the data; axes, grid and text are grey), and that a heading starts
with each ``--expect`` text (a section that must render: ``--expect "Training curve:"``). The page itself runs no script; the checks are evaluated by
DevTools. Prints one JSON object; exit status 0 = clean page, 1 = problems found, 2 = Chromium could not be used.
Install Chromium on Debian with ``apt-get install -y chromium``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
WINDOW = (1400, 3000)
#: An image with less than this share of coloured pixels is blank: a figure (or every panel of one) with no data.
COLOUR_MIN = 0.0005
#: Evaluated in the page by DevTools: each image drawn small onto a canvas, its share of coloured pixels counted
#: (channels more than 40 apart: not white, grey or black).
PROBE = """JSON.stringify({
  title: document.title, images: document.images.length,
  broken: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).length,
  tables: document.querySelectorAll('table').length, scripts: document.scripts.length,
  headings: [...document.querySelectorAll('h2, h3')].map(h => h.textContent.trim()),
  colour: [...document.images].filter(i => i.complete && i.naturalWidth > 0).map(i => {
    const c = document.createElement('canvas'); c.width = 300;
    c.height = Math.max(1, Math.round(300 * i.naturalHeight / i.naturalWidth));
    const g = c.getContext('2d'); g.drawImage(i, 0, 0, c.width, c.height);
    const px = g.getImageData(0, 0, c.width, c.height).data; let coloured = 0;
    for (let k = 0; k < px.length; k += 4)
      if (Math.max(px[k], px[k + 1], px[k + 2]) - Math.min(px[k], px[k + 1], px[k + 2]) > 40) coloured++;
    return {alt: i.alt, width: i.naturalWidth, height: i.naturalHeight,
            colour: Math.round(1e4 * coloured / (c.width * c.height)) / 1e4};
  }),
  height: document.documentElement.scrollHeight})"""
LOCAL_SCHEMES = {"file", "data", "about", "blob"}
#: How long to keep listening after the load event for late errors (layout, image decode).
SETTLE_SECONDS = 0.5
STARTUP_SECONDS = 60.0
PAGE_SECONDS = 60.0


class ChromiumError(Exception):
    """Chromium could not be started or driven."""


class WebSocket:
    """Just enough of RFC 6455 for a local DevTools connection: text frames out (masked), any frames in."""

    def __init__(self, url: str, timeout: float) -> None:
        parsed = urlparse(url)
        self.sock = socket.create_connection((parsed.hostname, parsed.port), timeout=timeout)
        # own buffer rather than sock.makefile: a read that times out must leave the stream usable
        self.buffer = bytearray()
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {parsed.path} HTTP/1.1\r\nHost: {parsed.hostname}:{parsed.port}\r\n"
                f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        self.buffer = bytearray(rest)
        status = head.split(b"\r\n")[0].decode(errors="replace")
        if " 101 " not in status:
            raise ChromiumError(f"DevTools refused the WebSocket upgrade: {status}")

    def send(self, text: str) -> None:
        payload = text.encode()
        n = len(payload)
        header = bytes([0x81]) + (
            bytes([0x80 | n])
            if n < 126
            else bytes([0x80 | 126]) + struct.pack(">H", n)
            if n < 65536
            else bytes([0x80 | 127]) + struct.pack(">Q", n)
        )
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def recv(self) -> str:
        message = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            data = self._read(n)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise ChromiumError("DevTools closed the connection")
            if opcode == 0x9:  # ping: answer, keep reading
                self.sock.sendall(bytes([0x8A, 0x80 | len(data)]) + b"\0\0\0\0" + data)
                continue
            if opcode in (0x0, 0x1, 0x2):
                message += data
                if b0 & 0x80:
                    return message.decode()

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ChromiumError("DevTools connection closed")
        self.buffer += chunk

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    def close(self) -> None:
        self.sock.close()


class DevTools:
    """Numbered commands over one page's WebSocket; events that arrive meanwhile are kept in ``events``."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws, self.next_id, self.events = ws, 0, []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise ChromiumError(f"{method}: {msg['error'].get('message')}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_for(self, event: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(e["method"] == event for e in self.events):
            if time.monotonic() > deadline:
                raise ChromiumError(f"timed out waiting for {event}")
            self.events.append(json.loads(self.ws.recv()))

    def drain(self, seconds: float) -> None:
        self.ws.sock.settimeout(seconds)
        try:
            while True:
                self.events.append(json.loads(self.ws.recv()))
        except TimeoutError:
            pass
        finally:
            self.ws.sock.settimeout(PAGE_SECONDS)


def problems_in(events: list[dict[str, Any]]) -> list[str]:
    """The DevTools events that make a page unclean, one line each."""
    out = []
    for e in events:
        method, p = e["method"], e.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append(f"uncaught exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            out.append(f"console.{p['type']}: {args}")
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            entry = p["entry"]
            out.append(f"browser log error: {entry.get('text')} {entry.get('url') or ''}".strip())
        elif method == "Network.requestWillBeSent":
            url = p.get("request", {}).get("url", "")
            if urlparse(url).scheme not in LOCAL_SCHEMES:
                out.append(f"external request: {url}")
        elif method == "Network.loadingFailed":
            out.append(f"failed to load: {p.get('errorText')} (request {p.get('requestId')})")
    return out


def check(
    page: Path, screenshot: Path | None, chromium: str, expect: tuple[str, ...] = (), full_page: bool = False
) -> dict[str, Any]:
    if not Path(chromium).exists():
        raise ChromiumError(f"{chromium} not found (apt-get install -y chromium)")
    profile = tempfile.mkdtemp(prefix="check-report-chromium-")
    cmd = [
        chromium,
        *FLAGS,
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "about:blank",
    ]
    # stderr to a file, not a pipe: a chatty browser must never block on a pipe nobody reads
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    try:
        port = _devtools_port(Path(profile), proc, log)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            targets = json.load(resp)
        page_target = next((t for t in targets if t.get("type") == "page"), None)
        if page_target is None:
            raise ChromiumError("no page target in DevTools")
        ws = WebSocket(page_target["webSocketDebuggerUrl"], timeout=PAGE_SECONDS)
        try:
            dev = DevTools(ws)
            for domain in ("Page", "Runtime", "Log", "Network"):
                dev.call(f"{domain}.enable")
            dev.call(
                "Emulation.setDeviceMetricsOverride",
                width=WINDOW[0],
                height=WINDOW[1],
                deviceScaleFactor=1,
                mobile=False,
            )
            dev.events.clear()
            dev.call("Page.navigate", url=page.resolve().as_uri())
            dev.wait_for("Page.loadEventFired", PAGE_SECONDS)
            dev.drain(SETTLE_SECONDS)
            probe = dev.call("Runtime.evaluate", returnByValue=True, expression=PROBE)
            facts = json.loads(probe["result"]["value"])
            problems = problems_in(dev.events)
            if facts["broken"]:
                problems.append(f"{facts['broken']} of {facts['images']} images did not decode")
            problems += [
                f"blank image: {i['alt']!r} ({i['width']}x{i['height']}, {i['colour']:.2%} coloured pixels)"
                for i in facts["colour"]
                if i["colour"] < COLOUR_MIN
            ]
            problems += [
                f"no heading starts with {text!r}"
                for text in expect
                if not any(h.startswith(text) for h in facts["headings"])
            ]
            if screenshot is not None:
                clip = {}
                if full_page:  # the whole page, beyond the window's height
                    clip = {
                        "captureBeyondViewport": True,
                        "clip": {"x": 0, "y": 0, "width": WINDOW[0], "height": facts["height"], "scale": 1},
                    }
                shot = dev.call("Page.captureScreenshot", format="png", **clip)
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                screenshot.write_bytes(base64.b64decode(shot["data"]))
            try:
                dev.call("Browser.close")
            except ChromiumError:
                pass  # the browser may drop the connection while closing
        finally:
            ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
        log.close()
    return {
        "page": str(page),
        "ok": not problems,
        "problems": problems,
        **facts,
        "screenshot": str(screenshot) if screenshot else None,
    }


def _devtools_port(profile: Path, proc: subprocess.Popen, log: Any) -> int:
    """Chromium writes the port it picked (for --remote-debugging-port=0) into the profile's DevToolsActivePort."""
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            err = log.read().decode(errors="replace").strip().splitlines()
            raise ChromiumError(f"chromium exited with {proc.returncode}: {err[-1] if err else 'no output'}")
        if marker.exists():
            first = marker.read_text().split("\n")[0].strip()
            if first.isdigit():
                return int(first)
        time.sleep(0.05)
    raise ChromiumError(f"chromium did not open DevTools within {STARTUP_SECONDS:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("page", type=Path, help="the report's index.html")
    parser.add_argument("--screenshot", type=Path, default=None, help=f"save a {WINDOW[0]}x{WINDOW[1]} PNG here")
    parser.add_argument("--full-page", action="store_true", help="screenshot the whole page, not just the window")
    parser.add_argument(
        "--expect",
        action="append",
        default=[],
        metavar="HEADING",
        help="a section that must render: some h2/h3 starts with this text (repeatable)",
    )
    parser.add_argument("--chromium", default=CHROMIUM, help="Chromium binary")
    args = parser.parse_args(argv)
    if not args.page.is_file():
        print(json.dumps({"page": str(args.page), "ok": False, "error": "no such file"}))
        return 2
    try:
        result = check(args.page, args.screenshot, args.chromium, tuple(args.expect), args.full_page)
    except (ChromiumError, OSError) as exc:
        print(json.dumps({"page": str(args.page), "ok": False, "error": str(exc)}))
        return 2
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
