"""An httpx transport on httpx2's connection pool (``httpcore2.AsyncConnectionPool``), for ``bench.transports``.

``httpx2.AsyncHTTPTransport`` cannot sit under an ``httpx.AsyncClient``: it is not an
``httpx.AsyncBaseTransport``, it asserts that the request's body is an *httpx2* stream,
returns an ``httpx2.Response`` and raises httpx2's exceptions, which are not httpx's (so
``RetryTransport`` would not see a connection error as one). The pool underneath only
speaks ``httpcore2.Request``/``Response``, so ``Httpcore2Transport`` turns an httpx request
into one of those and the answer back into an ``httpx.Response``, and raises for each of
httpcore2's errors the httpx error of the same name (the most specific one that matches),
so ``RetryTransport`` sees connection errors as it does on httpx's own pool. Plain HTTP and
HTTPS with httpx's default SSL context; no proxies.

Needs the ``httpx2`` package (``.venv/bin/pip install -e '.[bench]'``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from typing import Any

import httpx


def _exception_map() -> dict[type[Exception], type[httpx.HTTPError]]:
    import httpcore2  # type: ignore[import-not-found, unused-ignore]

    return {
        httpcore2.TimeoutException: httpx.TimeoutException,
        httpcore2.ConnectTimeout: httpx.ConnectTimeout,
        httpcore2.ReadTimeout: httpx.ReadTimeout,
        httpcore2.WriteTimeout: httpx.WriteTimeout,
        httpcore2.PoolTimeout: httpx.PoolTimeout,
        httpcore2.NetworkError: httpx.NetworkError,
        httpcore2.ConnectError: httpx.ConnectError,
        httpcore2.ReadError: httpx.ReadError,
        httpcore2.WriteError: httpx.WriteError,
        httpcore2.ProxyError: httpx.ProxyError,
        httpcore2.UnsupportedProtocol: httpx.UnsupportedProtocol,
        httpcore2.ProtocolError: httpx.ProtocolError,
        httpcore2.LocalProtocolError: httpx.LocalProtocolError,
        httpcore2.RemoteProtocolError: httpx.RemoteProtocolError,
    }


@contextlib.contextmanager
def _mapped(exceptions: dict[type[Exception], type[httpx.HTTPError]]) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        mapped: type[httpx.HTTPError] | None = None
        for source, target in exceptions.items():
            if isinstance(exc, source) and (mapped is None or issubclass(target, mapped)):
                mapped = target
        if mapped is None:
            raise
        raise mapped(str(exc)) from exc


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes], exceptions: dict[type[Exception], type[httpx.HTTPError]]) -> None:
        self._stream, self._exceptions = stream, exceptions

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped(self._exceptions):
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            with _mapped(self._exceptions):
                await close()


class Httpcore2Transport(httpx.AsyncBaseTransport):
    """``httpx.AsyncHTTPTransport``'s pooling, on ``httpcore2.AsyncConnectionPool`` (HTTP/1.1)."""

    def __init__(self, limits: httpx.Limits) -> None:
        import httpcore2  # type: ignore[import-not-found, unused-ignore]

        self._core: Any = httpcore2
        self._exceptions = _exception_map()
        self._pool: Any = httpcore2.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = self._core.Request(
            method=request.method,
            url=self._core.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _mapped(self._exceptions):
            response = await self._pool.handle_async_request(core_request)
        assert isinstance(response.stream, AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream, self._exceptions),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
