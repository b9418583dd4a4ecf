"""The artifact store: where round state lives (models, updates, manifests, optimizer state).

Keys are ``/``-separated paths such as ``campaigns/<id>/rounds/0003/manifest.json``. XCom and
the DAGs carry only keys/URIs and counts.

Two backends share one interface (:class:`ArtifactStore`):

* :class:`LocalStore`, the embedded default: a local folder. Writes are atomic (temp file +
  rename), so a crash never leaves half an artifact behind.
* :class:`S3Store`, the production switch: an S3 bucket (MinIO in ``docker compose``) through
  boto3. A single ``PUT`` is atomic in S3: a reader sees the old object or the new one, never
  part of one, so no temp objects are needed.

Write-once records (a round's commit record, a campaign's secret) go through
:meth:`ArtifactStore.put_bytes_if_absent`: a compare-and-set that exactly one of several
concurrent writers wins (local: hard link of a complete temp file, which fails if the name
exists; S3: ``PutObject`` with ``If-None-Match: *``). Readers of client-supplied artifacts
bound what they read (:meth:`ArtifactStore.size`, ``get_bytes(key, max_size=...)``): the size
is checked (``stat`` / the response's ``Content-Length``) before a byte of the body is read.
A store that cannot answer at all (missing bucket, unreachable endpoint, denied access)
raises :class:`StoreUnavailableError`, never "no such key".

Both validate keys the same way (:func:`check_key`) so a key means the same artifact on both.
:func:`open_store` turns a path, ``file://`` or ``s3://`` URL into a store and
:func:`store_from_env` applies the ``FL_ARTIFACT_STORE`` switch.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import secrets
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "ENV_ARTIFACT_STORE",
    "ENV_S3_ENDPOINT_URLS",
    "ArtifactStore",
    "ArtifactTooLargeError",
    "LocalStore",
    "S3Store",
    "StoreUnavailableError",
    "check_key",
    "open_store",
    "store_from_env",
]

ENV_ARTIFACT_STORE = "FL_ARTIFACT_STORE"
"""Environment variable naming the artifact store: a path, ``file://`` or ``s3://`` URL."""
ENV_S3_ENDPOINT_URLS = ("FL_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL")
"""Environment variables read (first non-empty wins) for the S3 endpoint of ``s3://`` URLs."""

_BUCKET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid artifact key, else raise ``ValueError``.

    A key is a non-empty, relative, ``/``-separated path without empty, ``.`` or ``..``
    segments (so it cannot escape the store's root and maps to exactly one file or object).

    Parameters
    ----------
    key : str
        The key to check.

    Returns
    -------
    str
        ``key`` unchanged.
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"invalid artifact key {key!r}: must be a non-empty string")
    if key.startswith("/") or "\x00" in key or any(s in ("", ".", "..") for s in key.split("/")):
        raise ValueError(
            f"invalid artifact key {key!r}: must be a relative '/'-separated path without "
            "empty, '.' or '..' segments"
        )
    return key


class StoreUnavailableError(RuntimeError):
    """The store itself cannot answer: missing bucket, unreachable endpoint, denied access.

    Distinct from a missing key (``KeyError`` / ``exists() is False``), so a sensor waiting
    for an artifact fails at once with the reason instead of waiting for its deadline.
    """


class ArtifactTooLargeError(ValueError):
    """An artifact is larger than the caller's ``max_size``; nothing of it was read."""

    def __init__(self, key: str, size: int, max_size: int) -> None:
        super().__init__(f"artifact {key!r} has {size} bytes, more than the limit of {max_size}")
        self.key = key
        self.size = size
        self.max_size = max_size


def _check_max_size(max_size: int | None) -> None:
    if max_size is not None and (
        isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 0
    ):
        raise ValueError(f"max_size must be an int >= 0 or None, got {max_size!r}")


class ArtifactStore:
    """Byte store interface with JSON and numpy helpers (numpy arrays never pickled)."""

    def put_bytes(self, key: str, data: bytes) -> str:
        """Write ``data`` at ``key`` atomically (readers see the old or the new bytes); URI."""
        raise NotImplementedError

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        """Write ``data`` at ``key`` only if nothing is there; True if this call wrote it.

        Atomic against concurrent writers in other processes: exactly one of several racing
        calls returns True, and every reader then sees that caller's complete bytes.
        """
        raise NotImplementedError

    def get_bytes(self, key: str, *, max_size: int | None = None) -> bytes:
        """The bytes at ``key`` (``KeyError`` if missing).

        With ``max_size``, an artifact larger than that raises :class:`ArtifactTooLargeError`
        before its content is read.
        """
        raise NotImplementedError

    def size(self, key: str) -> int:
        """Size in bytes of the artifact at ``key`` (``KeyError`` if missing), unread."""
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        """Whether ``key`` holds an artifact; :class:`StoreUnavailableError` if the store
        itself cannot answer."""
        raise NotImplementedError

    def list(self, prefix: str) -> list[str]:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        """Remove the artifact at ``key``; nothing happens if there is none."""
        raise NotImplementedError

    def uri(self, key: str) -> str:
        raise NotImplementedError

    def put_json(self, key: str, obj: Any) -> str:
        return self.put_bytes(key, _json_bytes(obj))

    def put_json_if_absent(self, key: str, obj: Any) -> bool:
        """:meth:`put_bytes_if_absent` of ``obj`` as JSON; True if this call wrote it."""
        return self.put_bytes_if_absent(key, _json_bytes(obj))

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def put_arrays(self, key: str, arrays: dict[str, np.ndarray]) -> str:
        buf = io.BytesIO()
        np.savez(buf, allow_pickle=False, **arrays)
        return self.put_bytes(key, buf.getvalue())

    def get_arrays(self, key: str) -> dict[str, np.ndarray]:
        with np.load(io.BytesIO(self.get_bytes(key)), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, sort_keys=True, indent=1) + "\n").encode()


_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


class LocalStore(ArtifactStore):
    """A folder on disk.

    Every write goes to a temporary file in the target folder first (``.tmp-*``, never listed)
    and is then renamed into place (:meth:`put_bytes`) or hard-linked to its name, which fails
    if the name exists (:meth:`put_bytes_if_absent`). Atomic against concurrent processes and
    crashes of the writer; the folder must be on a filesystem with hard links (any local one).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _write_temp(self, path: Path, data: bytes) -> str:
        """A complete temporary file holding ``data`` next to ``path``; its name. Created
        as ``tempfile.mkstemp`` does (exclusive, mode 0600, a random name) and written
        with ``os.write``: without mkstemp's name generator and a file object, which were
        about 5 % of the coordinator's interpreter time on small uploads."""
        tmp = os.path.join(path.parent, f".tmp-{secrets.token_hex(8)}")
        try:  # the folder usually exists: no mkdir call on the common path
            fd = os.open(tmp, _TEMP_FLAGS, 0o600)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, _TEMP_FLAGS, 0o600)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return tmp

    def put_bytes(self, key: str, data: bytes) -> str:
        path = self._path(key)
        tmp = self._write_temp(path, data)
        try:
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self.uri(key)

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        if path.is_dir():
            raise IsADirectoryError(f"artifact key {key!r} names a folder in {self.root}")
        tmp = self._write_temp(path, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            logger.debug("put_bytes_if_absent: %s already exists", key)
            return False
        finally:
            Path(tmp).unlink(missing_ok=True)
        return True

    def get_bytes(self, key: str, *, max_size: int | None = None) -> bytes:
        _check_max_size(max_size)
        path = self._path(key)
        try:
            with path.open("rb") as fh:
                if max_size is None:
                    return fh.read()
                size = os.fstat(fh.fileno()).st_size
                if size > max_size:
                    raise ArtifactTooLargeError(key, size, max_size)
                data = fh.read(max_size + 1)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise KeyError(f"no artifact {key!r} in {self.root}") from None
        if len(data) > max_size:  # grew between fstat and read (not via this store: atomic)
            raise ArtifactTooLargeError(key, len(data), max_size)
        return data

    def size(self, key: str) -> int:
        path = self._path(key)
        if not path.is_file():
            raise KeyError(f"no artifact {key!r} in {self.root}")
        return path.stat().st_size

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix.rstrip("/")) if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        )

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()


class S3Store(ArtifactStore):
    """An S3 bucket (or an S3-compatible server such as MinIO), through boto3.

    Artifact ``key`` lives at object key ``<prefix>/<key>``. Credentials come from the
    environment exactly as boto3 finds them (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_PROFILE``, instance roles, ...); this class never reads or stores secrets itself.

    Parameters
    ----------
    bucket : str
        Bucket name (must exist; the store never creates buckets).
    prefix : str, optional
        Folder inside the bucket under which every key lives; leading and trailing ``/`` are
        ignored. Empty means the bucket root.
    endpoint_url : str or None, optional
        S3 endpoint, e.g. ``http://127.0.0.1:9000`` for MinIO; ``None`` lets boto3 decide
        (AWS, or ``AWS_ENDPOINT_URL``). With an explicit endpoint, path-style addressing is
        used (``http://host/bucket/key``), which MinIO and moto need.
    region : str or None, optional
        Region name; ``None`` lets boto3 decide (``AWS_DEFAULT_REGION``, config file).
    client : Any, optional
        A ready boto3 S3 client (for custom configuration or tests). Mutually exclusive with
        ``endpoint_url`` and ``region``. Without it, a client is created lazily on first use
        from a private boto3 session.

    Notes
    -----
    * Writes are single ``PutObject`` calls, atomic in S3: readers see either the previous or
      the new object, never a partial one. :meth:`put_bytes_if_absent` adds
      ``If-None-Match: *`` (S3 conditional writes; MinIO supports them too): S3 answers 412
      to every writer but the first.
    * A missing bucket, an unreachable endpoint or denied access raise
      :class:`StoreUnavailableError` from every method, so they are never mistaken for a
      missing key. A ``HEAD`` of a missing key and of a missing bucket both answer a bare
      404, so :meth:`exists` and :meth:`size` check the bucket once (``HeadBucket``) on the
      first 404 and remember a bucket that answered.
    * :meth:`list` has the same folder semantics as :class:`LocalStore` (``list("a/b")``
      lists objects under ``a/b/``, not ``a/bc``) and follows continuation tokens, so it returns
      every key whatever the bucket size; ``page_size`` is the ``MaxKeys`` per request.
    * :meth:`uri` returns ``s3://bucket/prefix/key`` (not percent-encoded, as the AWS CLI
      writes them); :func:`open_store` accepts it back for the prefix part.
    """

    page_size: int = 1000
    """Keys per ``ListObjectsV2`` request (S3's maximum is 1000)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any | None = None,
    ) -> None:
        if not isinstance(bucket, str) or not _BUCKET_NAME.fullmatch(bucket):
            raise ValueError(
                f"bucket {bucket!r} is not a valid bucket name (letters, digits, '.', '-', '_')"
            )
        prefix = prefix.strip("/")
        if prefix:
            try:
                check_key(prefix)
            except ValueError:
                raise ValueError(
                    f"prefix {prefix!r} must be a '/'-separated path without empty, '.' or '..' "
                    "segments"
                ) from None
        if client is not None and (endpoint_url is not None or region is not None):
            raise ValueError("client is mutually exclusive with endpoint_url and region")
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.region = region
        self._client = client
        self._lock = threading.Lock()
        self._bucket_checked = False

    def __repr__(self) -> str:
        return (
            f"S3Store(bucket={self.bucket!r}, prefix={self.prefix!r}, "
            f"endpoint_url={self.endpoint_url!r})"
        )

    @property
    def client(self) -> Any:
        """The boto3 S3 client (created on first use)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        import boto3
        from botocore.config import Config

        options: dict[str, Any] = {
            "retries": {"mode": "standard", "max_attempts": 5},
            # SigV4 everywhere: botocore would presign with SigV2 in us-east-1, which signs no
            # header (a presigned PUT's length and checksum unenforced; refused by newer buckets)
            "signature_version": "s3v4",
        }
        if self.endpoint_url is not None:
            options["s3"] = {"addressing_style": "path"}
        session = boto3.session.Session()
        logger.debug("creating S3 client for %r", self)
        return session.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            config=Config(**options),
        )

    @property
    def _root(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def _object_key(self, key: str) -> str:
        return self._root + check_key(key)

    def _missing(self, key: str) -> KeyError:
        return KeyError(f"no artifact {key!r} in s3://{self.bucket}/{self.prefix}")

    def _unavailable(self, exc: BaseException, action: str) -> StoreUnavailableError:
        code = _error_code(exc)
        if code in ("NoSuchBucket", "404", "NotFound") or code == "":
            reason = (
                f"bucket {self.bucket!r} does not exist ({code or 'NoSuchBucket'})"
                if code
                else f"endpoint not reachable ({type(exc).__name__}: {exc})"
            )
        else:
            reason = f"{code}: {exc}"
        return StoreUnavailableError(f"{action} in {self!r} failed: {reason}")

    def _call(self, action: str, fn: Any, **kwargs: Any) -> Any:
        """``fn(**kwargs)`` with transport errors and a missing bucket turned into
        :class:`StoreUnavailableError`; other client errors propagate unchanged."""
        from botocore.exceptions import BotoCoreError

        try:
            return fn(**kwargs)
        except BotoCoreError as exc:  # connection refused, DNS, timeouts, bad endpoint URL
            raise self._unavailable(exc, action) from exc
        except Exception as exc:
            code = _error_code(exc)
            if code == "NoSuchBucket" or code in ("AccessDenied", "403", "Forbidden"):
                raise self._unavailable(exc, action) from exc
            raise

    def _check_bucket(self, action: str) -> None:
        """Raise :class:`StoreUnavailableError` unless the bucket answers (checked once)."""
        if self._bucket_checked:
            return
        try:
            self._call(action, self.client.head_bucket, Bucket=self.bucket)
        except StoreUnavailableError:
            raise
        except Exception as exc:
            raise self._unavailable(exc, action) from exc
        self._bucket_checked = True

    def put_bytes(self, key: str, data: bytes) -> str:
        object_key = self._object_key(key)
        self._call(
            f"put {key!r}",
            self.client.put_object,
            Bucket=self.bucket,
            Key=object_key,
            Body=bytes(data),
        )
        return self.uri(key)

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        object_key = self._object_key(key)
        body = bytes(data)
        for attempt in range(5):
            try:
                self._call(
                    f"put {key!r} if absent",
                    self.client.put_object,
                    Bucket=self.bucket,
                    Key=object_key,
                    Body=body,
                    IfNoneMatch="*",
                )
            except StoreUnavailableError:
                raise
            except Exception as exc:
                code = _error_code(exc)
                if code in ("PreconditionFailed", "412"):
                    logger.debug("put_bytes_if_absent: %s already exists", key)
                    return False
                if code == "ConditionalRequestConflict" and attempt < 4:
                    continue  # a concurrent conditional write is in flight: ask again
                raise
            return True
        raise AssertionError("not reached")  # pragma: no cover

    def get_bytes(self, key: str, *, max_size: int | None = None) -> bytes:
        _check_max_size(max_size)
        object_key = self._object_key(key)
        try:
            response = self._call(
                f"get {key!r}", self.client.get_object, Bucket=self.bucket, Key=object_key
            )
        except StoreUnavailableError:
            raise
        except Exception as exc:
            if _is_not_found(exc):
                raise self._missing(key) from None
            raise
        body = response["Body"]
        try:
            if max_size is None:
                return bytes(body.read())
            size = int(response.get("ContentLength", 0))
            if size > max_size:  # from the response headers: no byte of the body read
                raise ArtifactTooLargeError(key, size, max_size)
            data = bytes(body.read(max_size + 1))
            if len(data) > max_size:
                raise ArtifactTooLargeError(key, len(data), max_size)
            return data
        finally:
            body.close()

    def _head(self, key: str, action: str) -> dict[str, Any] | None:
        object_key = self._object_key(key)
        try:
            head: dict[str, Any] = self._call(
                action, self.client.head_object, Bucket=self.bucket, Key=object_key
            )
        except StoreUnavailableError:
            raise
        except Exception as exc:
            if _is_not_found(exc) or _error_code(exc) == "404":
                self._check_bucket(action)  # a bare 404 is also what a missing bucket says
                return None
            raise
        self._bucket_checked = True
        return head

    def size(self, key: str) -> int:
        head = self._head(key, f"size of {key!r}")
        if head is None:
            raise self._missing(key)
        return int(head["ContentLength"])

    def exists(self, key: str) -> bool:
        return self._head(key, f"exists {key!r}") is not None

    def list(self, prefix: str) -> list[str]:
        folder = prefix.rstrip("/")
        search = self._root + (check_key(folder) + "/" if folder else "")
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket, Prefix=search, PaginationConfig={"PageSize": self.page_size}
        )
        root = len(self._root)

        def collect() -> list[str]:
            return [
                item["Key"][root:]
                for page in pages
                for item in page.get("Contents", ())
                if not item["Key"].endswith("/")
            ]

        return sorted(self._call(f"list {prefix!r}", collect))

    def delete(self, key: str) -> None:
        object_key = self._object_key(key)
        self._call(f"delete {key!r}", self.client.delete_object, Bucket=self.bucket, Key=object_key)

    def presigned_put(
        self, key: str, *, size: int, sha256: str, expires_s: float
    ) -> tuple[str, dict[str, str]]:
        """A URL that lets its holder ``PUT`` exactly ``size`` bytes hashing to ``sha256``
        (hex) at ``key`` for ``expires_s`` seconds, without credentials, and the headers the
        request must carry. S3 refuses any other length or content (the length and the
        ``x-amz-checksum-sha256`` header are signed into the URL); whoever accepts the object
        afterwards checks it again all the same (S3-compatible servers may not enforce
        either)."""
        import base64

        if self.client.meta.config.signature_version != "s3v4":
            raise ValueError(
                "presigned uploads need a SigV4 S3 client (botocore Config(signature_version="
                "'s3v4')): other signatures do not bind the length and checksum"
            )
        checksum = base64.b64encode(bytes.fromhex(sha256)).decode()
        url = self._call(
            f"presign put {key!r}",
            self.client.generate_presigned_url,
            ClientMethod="put_object",
            Params={
                "Bucket": self.bucket,
                "Key": self._object_key(key),
                "ContentLength": size,
                "ChecksumSHA256": checksum,
            },
            ExpiresIn=max(1, int(expires_s)),
        )
        return str(url), {"x-amz-checksum-sha256": checksum}

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object_key(key)}"


def _error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ``ClientError`` (``""`` for other exceptions)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    return str(response.get("Error", {}).get("Code", ""))


def _is_not_found(exc: Exception) -> bool:
    """Whether a botocore ``ClientError`` means "no such object"."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    code = _error_code(exc)
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("NoSuchKey", "404", "NotFound") or (status == 404 and code != "NoSuchBucket")


def open_store(url: str | Path) -> ArtifactStore:
    """Open a store from a path, a ``file://`` URL or an ``s3://bucket/prefix`` URL.

    Parameters
    ----------
    url : str or Path
        * a filesystem path (relative or absolute) -> :class:`LocalStore`;
        * ``file:///abs/path`` (host empty or ``localhost``, percent-encoding decoded, as
          produced by :meth:`LocalStore.uri`) -> :class:`LocalStore`;
        * ``s3://bucket`` or ``s3://bucket/prefix`` -> :class:`S3Store`, with the endpoint
          from ``FL_S3_ENDPOINT_URL`` or else ``AWS_ENDPOINT_URL`` (unset: AWS itself) and
          credentials and region as boto3 finds them in the environment.

    Returns
    -------
    ArtifactStore
        The store; no connection is made until the first call.
    """
    if isinstance(url, Path):
        return LocalStore(url)
    text = str(url)
    if not text.strip():
        raise ValueError("url must be a path, a file:// URL or an s3:// URL, got an empty string")
    scheme, sep, _ = text.partition("://")
    if not sep:
        return LocalStore(text)
    scheme = scheme.lower()
    parts = urlsplit(text)
    if parts.query or parts.fragment:
        raise ValueError(f"url {url!r} must not have a query or fragment")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(
                f"url {url!r} has host {parts.netloc!r}; a file:// URL needs an absolute path "
                "(file:///abs/path); pass a relative path as a plain path"
            )
        return LocalStore(url2pathname(parts.path))
    if scheme == "s3":
        bucket = parts.netloc
        if not bucket or "@" in bucket or ":" in bucket:
            raise ValueError(f"url {url!r} must look like s3://bucket or s3://bucket/prefix")
        endpoint = next((os.environ[n] for n in ENV_S3_ENDPOINT_URLS if os.environ.get(n)), None)
        return S3Store(bucket, parts.path.strip("/"), endpoint_url=endpoint)
    raise ValueError(
        f"url {url!r} has unsupported scheme {scheme!r}; allowed: a path, file://, s3://"
    )


def store_from_env(default_root: str | Path) -> ArtifactStore:
    """The store named by ``FL_ARTIFACT_STORE``, else a :class:`LocalStore` at ``default_root``.

    Parameters
    ----------
    default_root : str or Path
        Folder of the embedded default store (e.g. ``.fl/artifacts``).

    Returns
    -------
    ArtifactStore
        ``open_store(os.environ["FL_ARTIFACT_STORE"])`` when that variable is set and
        non-empty (a path, ``file://`` or ``s3://`` URL), else ``LocalStore(default_root)``.
    """
    url = os.environ.get(ENV_ARTIFACT_STORE, "").strip()
    if url:
        store = open_store(url)
        logger.info("artifact store from %s: %r", ENV_ARTIFACT_STORE, store)
        return store
    return LocalStore(default_root)
