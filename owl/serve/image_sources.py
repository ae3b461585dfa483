"""An ``image_url`` from a request -> the image's bytes, or a refusal; only ``data:`` URLs unless allowed more.

- ``data:image/...;base64,...``: the base64 text is measured before it is
  decoded (its length fixes the decoded size), so an oversized image costs
  no memory beyond the request body, which has its own cap.
- ``http(s)://``: refused unless ``allow_remote_images``; then fetched with a
  timeout, at most a few redirects, and read in chunks that stop at the size
  cap (the ``Content-Length`` header is not trusted).
- ``file://`` URLs and bare paths: refused unless ``allow_local_images`` names
  a directory; then only regular files inside it (after resolving symlinks
  and ``..``) are read, up to the size cap.

The bytes go to the processor, whose image loader checks the pixel count in
the header before decoding (decompression bombs) and turns bad data into a
``SampleError``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx

from owl.serve.errors import ApiError, bad_request
from owl.serve.settings import ServeSettings


def _too_large(param: str, limit: int) -> ApiError:
    return ApiError(413, f"the image is over the server's cap of {limit} bytes", param, "image_too_large")


def decode_data_url(url: str, max_bytes: int, param: str) -> bytes:
    """The bytes of a base64 ``data:`` URL, refused before decoding when they would exceed ``max_bytes``."""
    head, sep, payload = url.partition(",")
    if not sep:
        raise bad_request("a data: URL needs a ',' before its data", param, "invalid_image_url")
    media = head[len("data:") :].split(";")
    if "base64" not in media[1:]:
        raise bad_request("only base64 data: URLs are read (data:image/png;base64,...)", param, "invalid_image_url")
    if media[0] and not media[0].lower().startswith("image/"):
        raise bad_request(f"a data: URL of type {media[0]!r} is not an image", param, "invalid_image_url")
    if len(payload) > 4 * (max_bytes // 3 + 1) + 4096:  # the decoded size is 3/4 of the base64 length (+ whitespace)
        raise _too_large(param, max_bytes)
    compact = "".join(payload.split())
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("the data: URL is not valid base64", param, "invalid_image_url") from None
    if len(data) > max_bytes:
        raise _too_large(param, max_bytes)
    return data


async def fetch_remote(url: str, settings: ServeSettings, client: httpx.AsyncClient | None, param: str) -> bytes:
    if not settings.allow_remote_images:
        raise bad_request(
            "remote image URLs are disabled on this server; send the image as a data: URL "
            "(the operator can allow them with --allow-remote-images)",
            param,
            "image_url_not_allowed",
        )
    own = client is None
    client = client or httpx.AsyncClient(follow_redirects=True, max_redirects=3)
    try:
        async with client.stream("GET", url, timeout=settings.remote_image_timeout_s) as resp:
            if resp.status_code != 200:
                raise bad_request(f"fetching the image gave HTTP {resp.status_code}", param, "image_fetch_failed")
            data = bytearray()
            async for chunk in resp.aiter_bytes():
                data += chunk
                if len(data) > settings.max_image_bytes:
                    raise _too_large(param, settings.max_image_bytes)
            return bytes(data)
    except httpx.HTTPError as e:
        raise bad_request(f"cannot fetch the image: {type(e).__name__}: {e}", param, "image_fetch_failed") from None
    finally:
        if own:
            await client.aclose()


def read_local(url: str, settings: ServeSettings, param: str) -> bytes:
    root = settings.allow_local_images
    if root is None:
        raise bad_request(
            "local image paths are disabled on this server; send the image as a data: URL "
            "(the operator can allow a directory with --allow-local-images DIR)",
            param,
            "image_url_not_allowed",
        )
    raw = unquote(urlparse(url).path) if url[:7].lower() == "file://" else url
    if "\0" in raw:  # no file has such a name, and the OS calls below raise ValueError on it
        raise bad_request("the image path contains a NUL byte", param, "invalid_image_url")
    try:  # the OS may refuse the name itself: too long (ENAMETOOLONG), a symlink loop (RuntimeError before 3.13)
        path = Path(raw)
        path = (path if path.is_absolute() else Path(root) / path).resolve()
        inside = path.is_relative_to(root)
        found = inside and path.is_file()
    except (OSError, RuntimeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else "a symlink loop"
        raise bad_request(f"no readable image file at that path ({why})", param, "image_not_found") from None
    if not inside:
        raise ApiError(403, "the image path is outside the directory this server may read", param, "image_path_denied")
    if not found:
        raise bad_request("no image file at that path", param, "image_not_found")
    try:
        if path.stat().st_size > settings.max_image_bytes:
            raise _too_large(param, settings.max_image_bytes)
        return path.read_bytes()
    except OSError as e:  # unreadable (permissions) or gone since the check
        raise bad_request(f"cannot read the image file ({e.strerror})", param, "image_not_found") from None


async def load_image(url: str, settings: ServeSettings, client: httpx.AsyncClient | None, param: str) -> bytes:
    """The bytes of one ``image_url``; :class:`ApiError` for anything refused or unreadable."""
    scheme = url.split(":", 1)[0].lower() if ":" in url[:12] else ""
    if scheme == "data":
        return decode_data_url(url, settings.max_image_bytes, param)
    if scheme in ("http", "https"):
        return await fetch_remote(url, settings, client, param)
    if scheme == "file" or scheme == "" or (len(scheme) == 1 and url[1:3] in (":\\", ":/")):  # bare or Windows path
        return await asyncio.to_thread(read_local, url, settings, param)
    raise bad_request(
        f"image URLs with scheme {scheme!r} are not supported; use a data: URL", param, "invalid_image_url"
    )
