"""The agent's HTTP client: one ``httpx.Client`` with timeouts, TLS verification against the
operator's CA, request signing, and retries with exponential backoff and full jitter in one
place (:meth:`CoordinatorClient._send`).

Retried: connection errors, timeouts, 429 and 5xx (each attempt is signed afresh: new
timestamp and nonce). A 429 / 503 with ``Retry-After`` (the coordinator's upload admission
limit) is a "busy, come back later", not a failure: the agent waits that long plus up to as
much again of jitter (so refused clients do not return all at once), and such waits do not
use up ``attempts`` but are bounded in total by ``RetryPolicy.busy_s``. Not retried: other
4xx, raised as :class:`Refused` with the server's reason, so the agent decides (410 too
late: drop; 403 revoked: stop).
"""

from __future__ import annotations

import hashlib
import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from fl_core.agent.identity import Identity
from fl_core.coordinator import protocol

logger = logging.getLogger(__name__)

__all__ = [
    "TURN_MIN_BYTES",
    "CoordinatorClient",
    "Refused",
    "RetryPolicy",
    "StoreUploadFailed",
    "Unreachable",
]

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
BUSY_STATUSES = frozenset({429, 503})


class StoreUploadFailed(Exception):
    """A direct upload's ``PUT`` to the store failed (unreachable, or refused); the update
    is then uploaded through the coordinator instead."""


class Refused(Exception):
    """The coordinator answered 4xx: ``status`` and its ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


class Unreachable(Exception):
    """Every attempt failed with a network error or a retryable status."""


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with full jitter: attempt ``n`` sleeps ``U(0, min(cap, base*2^n))``.

    A busy answer (429 / 503 with ``Retry-After``) instead waits ``Retry-After`` times
    ``U(1, 2)`` (at most ``cap_s``); such waits do not count as attempts, but give up once
    they add up to more than ``busy_s`` seconds for one request (with the time the server
    held each busy request: a turn request waits in line before its 503).
    """

    attempts: int = 6
    base_s: float = 0.5
    cap_s: float = 30.0
    busy_s: float = 600.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")
        if self.base_s < 0 or self.cap_s < 0 or self.busy_s < 0:
            raise ValueError("base_s, cap_s and busy_s must be >= 0")

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        return rand() * min(self.cap_s, self.base_s * (2**attempt))

    def busy_delay(self, retry_after_s: float, rand: Callable[[], float] = random.random) -> float:
        """The wait after a busy answer asking for ``retry_after_s``: spread over
        ``[retry_after_s, 2 * retry_after_s]`` so refused clients come back apart."""
        return min(self.cap_s, retry_after_s * (1.0 + rand()))


TURN_MIN_BYTES = 64 << 10
"""Updates this large ask for an upload turn first (a refused smaller body costs little)."""

TURN_WAIT_S = 25.0
"""How long a turn request asks the coordinator to hold it when no place is free (the
server caps it at its ``long_poll_s``); then, or from a coordinator that does not hold turn
requests, a busy answer is waited out and the request sent again."""


def retry_after_s(response: httpx.Response) -> float | None:
    """The ``Retry-After`` of a busy answer (429 / 503) in seconds, or None (absent, an
    HTTP date, or not a non-negative number)."""
    if response.status_code not in BUSY_STATUSES:
        return None
    raw = response.headers.get("Retry-After", "").strip()
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if value >= 0 and value == value and value != float("inf") else None


class CoordinatorClient:
    """Signed requests to one coordinator.

    Parameters
    ----------
    base_url
        The coordinator's base URL (``https://host:8443`` or a mount such as
        ``https://airflow:8080/fl``); request paths are ``/v1/...`` relative to it.
    ca
        PEM file of the CA that signed the coordinator's certificate (None: system CAs).
    identity
        The enrolled identity (None until enrollment).
    turn_min_bytes
        Updates of at least this many bytes ask for an upload turn first.
    """

    def __init__(
        self,
        base_url: str,
        *,
        ca: str | Path | None = None,
        identity: Identity | None = None,
        retry: RetryPolicy | None = None,
        timeout_s: float = 30.0,
        turn_min_bytes: int = TURN_MIN_BYTES,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.identity = identity
        self.turn_min_bytes = turn_min_bytes
        self.retry = retry or RetryPolicy()
        verify: ssl.SSLContext | bool = True
        if ca is not None:
            verify = ssl.create_default_context(cafile=str(ca))
        self._http = httpx.Client(
            base_url=self.base_url,
            verify=verify,
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            headers={"User-Agent": "fl-agent/1"},
        )
        self._base_path = httpx.URL(self.base_url).path.rstrip("/")
        self._store_http: httpx.Client | None = None  # presigned store URLs (direct uploads)

    def close(self) -> None:
        self._http.close()
        if self._store_http is not None:
            self._store_http.close()

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- core

    def _build(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None,
        content: bytes,
        headers: dict[str, str],
        signed: bool,
        timeout: float | None,
        body_sha256: str,
    ) -> httpx.Request:
        request = self._http.build_request(
            method,
            path,
            params={k: v for k, v in (params or {}).items() if v is not None},
            content=content,
            headers=headers,
            timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
        )
        if signed:
            if self.identity is None:
                raise RuntimeError("not enrolled: no identity to sign with")
            rel = request.url.path[len(self._base_path) :] or "/"
            request.headers.update(
                protocol.sign_request(
                    self.identity.key,
                    client_id=self.identity.client_id,
                    method=method,
                    path=rel,
                    query=request.url.query.decode(),
                    body_sha256=body_sha256,
                )
            )
        return request

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        content: bytes = b"",
        headers: dict[str, str] | None = None,
        signed: bool = True,
        timeout: float | None = None,
        ok: tuple[int, ...] = (200, 201, 204, 304),
    ) -> httpx.Response:
        last: Exception | None = None
        busy_waited = 0.0
        resigned = False
        attempt = 0
        pause = 0.0
        body_sha256 = hashlib.sha256(content).hexdigest()  # once: retries send the same body
        while attempt < self.retry.attempts:
            if pause:
                logger.info("retrying %s %s in %.2f s (%s)", method, path, pause, last)
                time.sleep(pause)
            request = self._build(
                method,
                path,
                params=params,
                content=content,
                headers=dict(headers or {}),
                signed=signed,
                timeout=timeout,
                body_sha256=body_sha256,
            )
            try:
                response = self._http.send(request)
            except httpx.TransportError as exc:
                last = exc
                attempt += 1
                pause = self.retry.delay(attempt - 1)
                continue
            if response.status_code in ok:
                return response
            if (
                response.status_code == 401
                and signed
                and not resigned
                and _reason(response).startswith(protocol.STALE_TIMESTAMP_REASON)
            ):
                # Read too late after signing (a queue at an overloaded coordinator): the
                # next pass signs it again with a fresh timestamp and nonce. Once only.
                resigned = True
                last = Refused(response.status_code, _reason(response))
                logger.info("%s %s: %s; signing it again", method, path, last)
                pause = 0.0
                continue
            if response.status_code not in RETRY_STATUSES:
                raise Refused(response.status_code, _reason(response))
            last = Refused(response.status_code, _reason(response))
            wait = retry_after_s(response)
            if wait is not None and busy_waited < self.retry.busy_s:
                pause = self.retry.busy_delay(wait)
                # the time the server held the request (a turn request waits in line) counts
                busy_waited += pause + response.elapsed.total_seconds()
                continue
            attempt += 1
            pause = self.retry.delay(attempt - 1)
        raise Unreachable(f"{method} {path}: gave up after {self.retry.attempts} attempts: {last}")

    # ----------------------------------------------------------------- endpoints

    def health(self) -> tuple[dict[str, Any], float]:
        """The health record and the round-trip time in seconds."""
        start = time.perf_counter()
        response = self._send("GET", "/v1/health", signed=False)
        return response.json(), time.perf_counter() - start

    def enroll(self, token: str, public_key: str) -> str:
        body = httpx.Request("POST", "http://x", json={"token": token, "public_key": public_key})
        response = self._send(
            "POST",
            "/v1/clients/enroll",
            content=body.content,
            headers={"Content-Type": "application/json"},
            signed=False,
        )
        return str(response.json()["client_id"])

    def _post_json(
        self, path: str, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> httpx.Response:
        content = httpx.Request("POST", "http://x", json=payload).content
        return self._send(
            "POST",
            path,
            content=content,
            headers={"Content-Type": "application/json", **(headers or {})},
        )

    def heartbeat(self, report: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._post_json("/v1/clients/heartbeat", report).json()
        return result

    def next_task(self, *, wait_s: float) -> dict[str, Any] | None:
        """The next task, held by the server up to ``wait_s``; None when there is none."""
        response = self._send(
            "GET", "/v1/tasks/next", params={"wait": wait_s}, timeout=wait_s + 30.0
        )
        if response.status_code == 204:
            return None
        task: dict[str, Any] = response.json()
        return task

    def download_model(self, url: str, *, known_version: int | None) -> tuple[bytes, float]:
        """The model message and the seconds it took."""
        start = time.perf_counter()
        response = self._send("GET", url, params={"known_version": known_version})
        return response.content, time.perf_counter() - start

    def upload_turn(self, url: str) -> float:
        """Wait for an upload turn for the update at ``url`` (busy answers are waited out);
        the seconds it is held (0 from a coordinator without turns: 404)."""
        response = self._send(
            "POST", f"{url}/turn", params={"wait": TURN_WAIT_S}, timeout=TURN_WAIT_S + 30.0,
            ok=(200, 404),
        )  # fmt: skip
        return float(response.json()["turn_s"]) if response.status_code == 200 else 0.0

    def upload_update(
        self, url: str, data: bytes, *, signature: str, direct_min_bytes: int | None = None
    ) -> tuple[dict[str, Any], float]:
        """Upload a signed update; 201 stored, 200 already stored (a resumed retry).

        An update of at least ``direct_min_bytes`` (the task's ``direct_upload_min_bytes``:
        the coordinator offers direct uploads to its S3 store) goes to the store through a
        presigned URL and is then committed (:meth:`upload_direct`). Otherwise an update of
        at least ``turn_min_bytes`` first asks for an upload turn (``POST <url>/turn``,
        waiting out busy answers there), so that a busy coordinator refuses a request of a
        few hundred bytes, not the whole body. A direct upload whose ``PUT`` to the store
        fails (the store unreachable from here, or refusing) falls back to the coordinator.
        The seconds returned are the transfer's."""
        if direct_min_bytes is not None and len(data) >= direct_min_bytes:
            try:
                return self.upload_direct(url, data, signature=signature)
            except StoreUploadFailed as exc:
                logger.warning("direct upload to the store failed (%s); uploading through "
                               "the coordinator", exc)  # fmt: skip
        if len(data) >= self.turn_min_bytes:
            self.upload_turn(url)
        start = time.perf_counter()
        response = self._send(
            "PUT",
            url,
            content=data,
            headers={
                "Content-Type": "application/octet-stream",
                protocol.H_UPDATE_SIGNATURE: signature,
            },
        )
        return response.json(), time.perf_counter() - start

    def upload_direct(
        self, url: str, data: bytes, *, signature: str
    ) -> tuple[dict[str, Any], float]:
        """Upload a signed update straight to the coordinator's S3 store: ask for a presigned
        URL (:meth:`direct_offer`), ``PUT`` the bytes there, then commit
        (:meth:`commit_direct`); the coordinator reads the staged bytes back and checks them
        as an upload. Each step is retried as any request is; the ``PUT`` and the commit
        are idempotent."""
        sha256 = hashlib.sha256(data).hexdigest()
        offer = self.direct_offer(url, size=len(data), sha256=sha256)
        start = time.perf_counter()
        if not offer["stored"]:
            self.put_presigned(str(offer["url"]), data, dict(offer["headers"]))
        out = self.commit_direct(url, size=len(data), sha256=sha256, signature=signature)
        return out, time.perf_counter() - start

    def direct_offer(self, url: str, *, size: int, sha256: str) -> dict[str, Any]:
        """``POST <url>/direct``: a presigned ``PUT`` for the update (``url``, ``headers``,
        ``expires_s``), or ``stored`` when it is already accepted."""
        offer: dict[str, Any] = self._post_json(
            f"{url}/direct", {"size": size, "sha256": sha256}
        ).json()
        return offer

    def commit_direct(self, url: str, *, size: int, sha256: str, signature: str) -> dict[str, Any]:
        """``POST <url>/commit``: accept the update put at its staging key; the upload's
        answer (201 stored, 200 already stored)."""
        out: dict[str, Any] = self._post_json(
            f"{url}/commit",
            {"size": size, "sha256": sha256},
            headers={protocol.H_UPDATE_SIGNATURE: signature},
        ).json()
        return out

    def put_presigned(self, url: str, data: bytes, headers: dict[str, str]) -> None:
        """``PUT`` to a presigned store URL (no request signature: the URL is the
        credential; the system's CAs, or ``SSL_CERT_FILE``), retrying network errors and
        5xx answers with backoff; :class:`StoreUploadFailed` when it does not succeed."""
        if self._store_http is None:
            self._store_http = httpx.Client(timeout=self._http.timeout)
        last: object = None
        for attempt in range(self.retry.attempts):
            if attempt:
                pause = self.retry.delay(attempt - 1)
                logger.info("retrying the direct upload in %.2f s (%s)", pause, last)
                time.sleep(pause)
            try:
                response = self._store_http.put(url, content=data, headers=headers)
            except httpx.TransportError as exc:
                last = exc
                continue
            if response.status_code < 300:
                return
            last = f"{response.status_code}: {response.text[:300]}"
            if response.status_code < 500 and response.status_code != 429:
                raise StoreUploadFailed(f"the store refused the PUT ({last})")
        raise StoreUploadFailed(f"gave up after {self.retry.attempts} attempts: {last}")

    def report_evaluation(self, campaign: str, rnd: int, report: dict[str, Any]) -> None:
        self._post_json(f"/v1/evaluations/{campaign}/{rnd}", report)

    def report_histogram(self, campaign: str, rnd: int, report: dict[str, Any]) -> None:
        self._post_json(f"/v1/histograms/{campaign}/{rnd}", report)

    def report_monitoring(self, campaign: str, rnd: int, report: dict[str, Any]) -> None:
        self._post_json(f"/v1/monitoring/{campaign}/{rnd}", report)


def _reason(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))[:500]
    except ValueError:
        return response.text[:500]
