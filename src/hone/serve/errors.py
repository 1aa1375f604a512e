"""Error bodies in OpenAI's shape, so the official client raises the matching exception class.

The client reads `{"error": {"message", "type", "param", "code"}}` (all four keys present; `param`
and `code` may be null) and picks the class from the status: 400 BadRequestError, 401
AuthenticationError, 404 NotFoundError, 429 RateLimitError, ... It retries 408, 409, 429 and 5xx,
so "job already finished" is a 400, never a 409 (reference/openai_ft_api.md §1.3).
"""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
         404: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
         429: "rate_limit_exceeded", 500: "server_error"}


def api_error(status: int, message: str, type_: str | None = None, param: str | None = None,
              code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """An OpenAI-shaped error response."""
    body = {"error": {"message": message, "type": type_ or TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}
    headers = dict(headers or {})
    if status >= 500:
        headers.setdefault("x-should-retry", "false")  # our 5xx are deterministic: retrying repeats them
    return JSONResponse(body, status_code=status, headers=headers)


class APIError(Exception):
    """Raise anywhere in a request; the handler turns it into `api_error(...)`."""

    def __init__(self, status: int, message: str, type_: str | None = None, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        return api_error(self.status, self.message, self.type, self.param, self.code, self.headers)


def not_found(kind: str, object_id: str, param: str = "id", code: str | None = None) -> APIError:
    """404 in OpenAI's words ("No such File object: file-x"); used for another org's objects too."""
    return APIError(404, f"No such {kind} object: {object_id}", param=param, code=code)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves the app in OpenAI's envelope: ours, FastAPI's validation errors, 404/405s."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "form")]
        param = ".".join(loc) or None
        return api_error(400, f"{param + ': ' if param else ''}{first.get('msg', 'invalid request')}", param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and message == "Not Found":
            message = f"Unknown request URL: {request.method} {request.url.path}"
        return api_error(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        import logging

        logging.getLogger("hone.serve").exception("unhandled error on %s %s", request.method, request.url.path)
        return api_error(500, f"internal error: {type(exc).__name__}", "server_error")
