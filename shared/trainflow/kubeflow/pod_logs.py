"""Follow the rank-0 training pod's log by polling, printing each line once.

The kubernetes client (v30) can read a log `sinceSeconds` but not since a time, and a followed
stream ends whenever the pod restarts, so each poll asks for the lines of the last few seconds
(the time since the previous read plus a margin for clock skew between us and the node), with
the kubelet's timestamps, and prints only those newer than the last line printed. The first read
of a pod starts from its last `first_read_lines` lines, so re-attaching to a long run does not
replay hours of log. Reading is best effort: a pod that is not up yet or a failed read is retried
on the next poll, never an error, because the job's status, not its log, decides success.
"""

from __future__ import annotations

import collections
import re
import time
from datetime import datetime
from typing import Any, Callable

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

_TIMESTAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d) ?")
_SKEW_MARGIN_S = 10


def _line_key(line: str) -> tuple[tuple[int, int] | None, str]:
    """(sortable (seconds, nanoseconds) of the kubelet timestamp, the text after it)."""
    match = _TIMESTAMP.match(line)
    if not match:
        return None, line
    base, fraction, zone = match.groups()
    seconds = int(datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone)).timestamp())
    return (seconds, int((fraction or "0").ljust(9, "0"))), line[match.end():]


class Rank0LogFollower:
    """Prints new rank-0 log lines on each `poll()` and keeps the last few for error messages."""

    def __init__(self, core_api: Any, namespace: str, selector: str, container: str,
                 emit: Callable[[str], None], keep_last: int = 30, first_read_lines: int = 200,
                 clock: Callable[[], float] = time.time):
        self._core_api, self._namespace, self._selector, self._container = core_api, namespace, selector, container
        self._emit, self._clock, self._first_read_lines = emit, clock, first_read_lines
        self.pod_name: str | None = None
        self.last_lines: collections.deque[str] = collections.deque(maxlen=keep_last)
        self._last_key: tuple[int, int] | None = None
        self._texts_at_last_key: set[str] = set()
        self._last_read_at: float | None = None
        self._warned = False

    def poll(self) -> None:
        """Print the rank-0 pod's lines not printed yet; quietly does nothing if it cannot read them."""
        try:
            pod_name = self._newest_pod()
            if pod_name is None:
                return
            if pod_name != self.pod_name:
                if self.pod_name is not None:
                    self._emit(f"[rank 0] (now following pod {pod_name})")
                self.pod_name, self._last_key, self._texts_at_last_key, self._last_read_at = pod_name, None, set(), None
            text = self._read(pod_name)
        except (ApiException, HTTPError, OSError) as error:
            if not self._warned:  # once is enough; the status poll reports a cluster that stays away
                self._emit(f"[rank 0] (log not readable yet: {getattr(error, 'reason', None) or error})")
                self._warned = True
            return
        if text is not None:
            self._print_new(text)

    def _newest_pod(self) -> str | None:
        pods = self._core_api.list_namespaced_pod(self._namespace, label_selector=self._selector).items
        if not pods:
            return None
        newest = max(pods, key=lambda pod: (pod.metadata.creation_timestamp is not None,
                                            pod.metadata.creation_timestamp or 0, pod.metadata.name))
        return newest.metadata.name

    def _read(self, pod_name: str) -> str | None:
        now = self._clock()
        window: dict[str, int] = {}
        if self._last_read_at is None:
            window["tail_lines"] = self._first_read_lines
        else:
            window["since_seconds"] = int(now - self._last_read_at) + _SKEW_MARGIN_S
        try:
            # _preload_content=False: the client would otherwise json-decode a log that looks like JSON.
            response = self._core_api.read_namespaced_pod_log(
                pod_name, self._namespace, container=self._container, timestamps=True,
                _preload_content=False, **window)
        except ApiException as error:
            if error.status in (400, 404):  # container still starting, or pod gone: try next poll
                return None
            raise
        self._last_read_at = now
        return response.data.decode("utf-8", errors="replace")

    def _print_new(self, text: str) -> None:
        for line in text.splitlines():
            key, content = _line_key(line)
            if key is not None and self._last_key is not None:
                if key < self._last_key or (key == self._last_key and content in self._texts_at_last_key):
                    continue
            if key is not None:
                if key != self._last_key:
                    self._last_key, self._texts_at_last_key = key, set()
                self._texts_at_last_key.add(content)
            self.last_lines.append(content)
            self._emit(f"[rank 0] {content}")
