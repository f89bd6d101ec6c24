"""A headless Chromium driven over the DevTools protocol, with aiohttp's WebSocket client.

Just what the status page test needs: open a page, evaluate JavaScript, take a screenshot, set
the viewport. The browser is Debian's ``chromium`` (``.ci/run`` installs it); nothing is
downloaded. ``find_chromium()`` answers None where it is absent, and the tests skip then.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp

__all__ = ["Chromium", "find_chromium"]

#: Chromium's start on a loaded 2-core machine takes a few seconds; 60 is a generous bound.
START_TIMEOUT = 60.0
#: One DevTools command (a screenshot of a long page included).
COMMAND_TIMEOUT = 30.0


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class CdpError(RuntimeError):
    pass


class Chromium:
    """``async with Chromium.launch(exe, tmp) as browser:``; one page per browser."""

    def __init__(self, proc: asyncio.subprocess.Process, http: aiohttp.ClientSession) -> None:
        self._proc = proc
        self._http = http
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._reader: asyncio.Task[None] | None = None
        #: Uncaught page exceptions and console/log errors (CSP violations, failed loads).
        self.errors: list[str] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, executable: str, workdir: Path, *, width: int = 1280, height: int = 900):  # type: ignore[no-untyped-def]
        profile = workdir / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        log = _open_log(workdir / "chromium.log")
        args = [
            executable,
            "--headless=new",
            "--no-sandbox",  # root in CI; the page is our own
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--metrics-recording-only",
            "--mute-audio",
            "--hide-scrollbars",
            f"--window-size={width},{height}",
            f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "about:blank",
        ]
        env = {**os.environ, "TZ": os.environ.get("TZ", "UTC")}
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, env=env
        )
        http = aiohttp.ClientSession()
        browser = cls(proc, http)
        try:
            await browser._connect(profile / "DevToolsActivePort", workdir / "chromium.log")
            yield browser
        finally:
            await browser._close()
            await http.close()
            log.close()

    async def _connect(self, port_file: Path, log: Path) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        port = None
        while port is None:
            if self._proc.returncode is not None:
                raise CdpError(f"chromium exited with {self._proc.returncode}: {_tail(log)}")
            if loop.time() > deadline:
                raise CdpError(f"chromium did not open its DevTools port: {_tail(log)}")
            port = _read_port(port_file)
            if port is None:
                await asyncio.sleep(0.1)
        url = None
        while url is None:
            with contextlib.suppress(aiohttp.ClientError):
                async with self._http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                    pages = [t for t in await resp.json() if t.get("type") == "page"]
                    if pages:
                        url = pages[0]["webSocketDebuggerUrl"]
            if url is None:
                if loop.time() > deadline:
                    raise CdpError("chromium has no page target")
                await asyncio.sleep(0.1)
        self._ws = await self._http.ws_connect(url, max_msg_size=0)
        self._reader = asyncio.create_task(self._read(), name="cdp reader")
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        await self.send("Log.enable")

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            method = data.get("method")
            if method == "Runtime.exceptionThrown":
                self.errors.append(str(data["params"]["exceptionDetails"])[:500])
            elif method == "Log.entryAdded" and data["params"]["entry"].get("level") == "error":
                self.errors.append(str(data["params"]["entry"])[:500])
            future = self._pending.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                if "error" in data:
                    future.set_exception(CdpError(str(data["error"])))
                else:
                    future.set_result(data.get("result", {}))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(CdpError("DevTools connection closed"))

    async def send(self, method: str, **params: Any) -> Any:
        assert self._ws is not None
        msg_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        await self._ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        async with asyncio.timeout(COMMAND_TIMEOUT):
            return await future

    async def navigate(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        """The value of ``expression`` (awaited if it is a promise), JSON-serializable."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise CdpError(str(result["exceptionDetails"]))
        return result["result"].get("value")

    async def screenshot(self, path: Path, *, full_page: bool = True) -> Path:
        params: dict[str, Any] = {"format": "png", "captureBeyondViewport": full_page}
        if full_page:
            size = await self.evaluate(
                "({w: document.documentElement.scrollWidth,"
                " h: document.documentElement.scrollHeight})"
            )
            params["clip"] = {"x": 0, "y": 0, "width": size["w"], "height": size["h"], "scale": 1}
        data = await self.send("Page.captureScreenshot", **params)
        await asyncio.to_thread(path.write_bytes, base64.b64decode(data["data"]))
        return path

    async def viewport(self, width: int, height: int, *, mobile: bool = False) -> None:
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=2 if mobile else 1,
            mobile=mobile,
        )

    async def _close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._proc.returncode is None:
            self._proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await self._proc.wait()
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()


def _open_log(path: Path) -> BinaryIO:
    return path.open("wb")


def _read_port(port_file: Path) -> int | None:
    """The port Chromium wrote into its profile once DevTools listens, or None yet."""
    try:
        return int(port_file.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-1500:]
    except OSError:
        return "(no log)"
