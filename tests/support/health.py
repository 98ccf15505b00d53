"""A health check running beside a hostile request: how long the server kept it waiting."""

from __future__ import annotations

import http.client
import threading
import time


class HealthWatch:
    """GET /v2/health/live every 20 ms on one kept-alive connection from a thread; ``worst`` is
    the slowest answer seen, ``count`` how many came."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.worst = 0.0
        self.count = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self._stop.is_set():
            start = time.perf_counter()
            try:
                connection.request("GET", "/v2/health/live")
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    self.failures.append(f"status {response.status}")
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(repr(exc))
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            self.worst = max(self.worst, time.perf_counter() - start)
            self.count += 1
            self._stop.wait(0.02)
        connection.close()

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        time.sleep(0.1)  # a few answers before the hostile request
        return self

    def __exit__(self, *_: object) -> None:
        time.sleep(0.1)  # and a few after
        self._stop.set()
        self._thread.join(timeout=15)
