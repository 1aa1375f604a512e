"""Error bodies in OpenAI's shape, so the official client raises the matching exception class.

The client reads `{"error": {"message", "type", "param", "code"}}` (all four keys present; `param`
and `code` may be null) and picks the class from the status: 400 BadRequestError, 401
AuthenticationError, 404 NotFoundError, 429 RateLimitError, ... It retries 408, 409, 429 and 5xx,
so "job already finished" is a 400, never a 409 (reference/openai_ft_api.md §1.3).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
         404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error",
         429: "rate_limit_exceeded", 500: "server_error"}

# What each status means here, for the OpenAPI schema (every one has the ErrorResponse body).
STATUSES = {400: "Invalid request: a parameter is missing, malformed or out of range (`param` names it)",
            401: "Missing, malformed, unknown or revoked API key",
            403: "Not allowed on this object (a base model cannot be deleted)",
            404: "No such object for this key's organization (another organization's objects included)",
            413: "The upload is larger than the server's --max-upload-mb",
            429: "Over the key's rate limit; `retry-after` says when to try again",
            500: "The server failed (a model that cannot be loaded, missing file bytes)"}
COMMON = (400, 401, 429)   # every /v1 operation: validation, the key, the rate limit


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error envelope: every response other than a 200 has this body."""
    error: ErrorDetail


def error_responses(*statuses: int) -> dict:
    """FastAPI `responses=` documenting `statuses` (plus COMMON) with the ErrorResponse body."""
    wanted = sorted(set(statuses) | set(COMMON))
    responses: dict = {status: {"model": ErrorResponse, "description": STATUSES[status]} for status in wanted}
    if 429 in responses:
        responses[429]["headers"] = {"retry-after": {"description": "seconds until a request may succeed",
                                                     "schema": {"type": "string"}}}
    return responses


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
        """400, as OpenAI answers an invalid parameter (never FastAPI's 422; the schema says 400 too)."""
        first = _first_error(exc.errors())
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "form", "header")
               and not (isinstance(p, str) and UNION_TAG.search(p))]
        param = ".".join(loc) or None
        return api_error(400, f"{param + ': ' if param else ''}{first.get('msg', 'invalid request')}", param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 404 and message == "Not Found":
            message = f"Unknown request URL: {request.method} {request.url.path}"
        if exc.status_code == 405:
            # starlette's Allow names the methods of the first route matching the path only; GET and
            # DELETE /v1/files/{id} are two routes, so it said GET
            allowed = allowed_methods(request)
            headers = {k: v for k, v in headers.items() if k.lower() != "allow"} | {"Allow": ", ".join(allowed)}
            message = f"{request.method} is not allowed on {request.url.path}; use {' or '.join(allowed)}"
        return api_error(exc.status_code, message, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        import logging

        logging.getLogger("hone.serve").exception("unhandled error on %s %s", request.method, request.url.path)
        return api_error(500, f"internal error: {type(exc).__name__}", "server_error")


# pydantic names the member of a union it tried in `loc` ('str', 'list[str]', 'function-after[...]'):
# not a parameter name, so left out of `param`
UNION_TAG = re.compile(r"^(\[key\]|(str|int|float|bool|none|dict|list|set|tuple|literal|model|nullable|json-or-python"
                       r"|constrained-[\w-]+|function-[\w-]+|lax-[\w-]+|strict-[\w-]+|[A-Z]\w*)(\[.*\])?)$")


def _first_error(errors: Sequence) -> dict:
    """The error to report: for a union (`prompt`: a string or a list) the one from the member the input
    was meant as (a constraint that failed) rather than 'Input should be a valid string'."""
    if not errors:
        return {"loc": (), "msg": "invalid request"}
    return next((e for e in errors if not str(e.get("type", "")).endswith("_type")), errors[0])


METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route takes at this request's path (asked of each route as that method's request:
    FastAPI nests included routers, so the routes' own `methods` are not all in sight)."""
    return [method for method in METHODS
            if any(route.matches({**request.scope, "method": method})[0] == Match.FULL
                   for route in request.app.router.routes)]


def install_openapi(app: FastAPI) -> None:
    """The schema as the server behaves: validation errors are 400s with ErrorResponse (documented per
    operation through error_responses), so FastAPI's default 422 and its schemas are taken out; the
    Bearer key is declared as the security scheme of every operation."""
    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
                    operation["security"] = [{"bearer": []}]
            components = schema.setdefault("components", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.get("schemas", {}).pop(name, None)
            components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer",
                                                        "description": "a key from `hone keys create --org NAME`"}}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to replace the schema
