"""/v1/models, /v1/chat/completions and /v1/completions in OpenAI's shapes (reference/openai_ft_api.md §5).

The router resolves the model through the Catalog (another org's model is a 404, as an unknown one
is), renders and counts the prompt with the model's own tokenizer and chat template (exactly what
training rendered: hone.data.render), queues a Job on the Engine and answers either with one JSON body
or as server-sent events: `data: {chunk}\\n\\n` ... `data: [DONE]\\n\\n`.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Callable, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from hone.data.render import prompt_for_generation
from hone.errors import UserError
from hone.serve.engine import BASE, Engine
from hone.serve.generation import Job, Sampling
from hone.serve.errors import APIError

MAX_N = 16          # choices per request: each is a row of the batch
MAX_STOPS = 4       # OpenAI's limit on stop sequences
log = logging.getLogger("hone.serve")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class Sampled(BaseModel):
    """Fields both endpoints share; unknown fields are accepted and ignored, as OpenAI's SDK may send them."""
    model_config = ConfigDict(extra="allow")
    model: str
    temperature: float | None = Field(None, ge=0, le=2, description="0 is greedy; default 1")
    top_p: float | None = Field(None, gt=0, le=1, description="nucleus sampling mass; default 1")
    max_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict] | None = None


class ChatRequest(Sampled):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(Sampled):
    prompt: str | list[str]


def make_inference_router(catalog, current_org: Callable, engine: Engine | None = None) -> APIRouter:
    """The inference endpoints over `catalog`'s models; `engine` defaults to a fresh Engine()."""
    engine = engine or Engine()
    router = APIRouter()
    router.engine = engine  # the app closes it on shutdown; tests read what it holds

    async def resolve(org: str, model_id: str, param: str | None = "model"):
        source = await asyncio.to_thread(catalog.resolve, org, model_id)   # the catalog may query a database
        if source is None:
            raise APIError(404, f"The model `{model_id}` does not exist or you do not have access to it.",
                           param=param, code="model_not_found")
        return source

    @router.get("/v1/models")
    async def list_models(org: str = Depends(current_org)) -> dict:
        return {"object": "list", "data": [model_object(s) for s in await asyncio.to_thread(catalog.list, org)]}

    @router.get("/v1/models/{model:path}")
    async def retrieve_model(model: str, org: str = Depends(current_org)) -> dict:
        return model_object(await resolve(org, model, param=None))

    @router.delete("/v1/models/{model:path}")
    async def delete_model(model: str, org: str = Depends(current_org)) -> dict:
        source = await resolve(org, model, param=None)
        if source.tuned is BASE:
            raise APIError(403, f"{model} is a base model; only fine-tuned models can be deleted",
                           code="model_not_deletable")
        if not await asyncio.to_thread(catalog.delete, org, model):
            raise APIError(404, f"The model `{model}` does not exist or you do not have access to it.",
                           code="model_not_found")
        await asyncio.to_thread(engine.unload, source)
        return {"id": model, "object": "model", "deleted": True}

    @router.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, org: str = Depends(current_org)):
        source = await resolve(org, body.model)
        messages = [chat_message(m, i) for i, m in enumerate(body.messages)]
        prompt, limit = await prepare(engine, source, [messages], body.max_completion_tokens or body.max_tokens,
                                      "messages")
        run = start(engine, source, body, prompt, limit)
        if body.stream:
            return sse(chat_events(run, body))
        answers = await run.result()
        choices = [{"index": i, "message": {"role": "assistant", "content": a.text, "refusal": None},
                    "logprobs": None, "finish_reason": a.finish_reason} for i, a in enumerate(answers)]
        return {"id": run.id("chatcmpl"), "object": "chat.completion", "created": run.created, "model": body.model,
                "choices": choices, "usage": run.usage(answers), "system_fingerprint": None}

    @router.post("/v1/completions")
    async def completions(body: CompletionRequest, org: str = Depends(current_org)):
        source = await resolve(org, body.model)
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not texts:
            raise APIError(400, "prompt must not be an empty list", param="prompt")
        prompts, limit = await prepare(engine, source, texts, body.max_tokens, "prompt")
        run = start(engine, source, body, prompts, limit)
        if body.stream:
            return sse(completion_events(run, body))
        answers = await run.result()
        choices = [{"index": i, "text": a.text, "logprobs": None, "finish_reason": a.finish_reason}
                   for i, a in enumerate(answers)]
        return {"id": run.id("cmpl"), "object": "text_completion", "created": run.created, "model": body.model,
                "choices": choices, "usage": run.usage(answers), "system_fingerprint": None}

    return router


def model_object(source) -> dict:
    return {"id": source.id, "object": "model", "created": int(source.created), "owned_by": source.owned_by}


def chat_message(message: ChatMessage, i: int) -> dict:
    """{role, content} for the chat template; text parts joined, `developer` read as `system`."""
    content = message.content
    if isinstance(content, list):
        if any(part.get("type") != "text" for part in content):
            raise APIError(400, "only text content parts are supported", param=f"messages.[{i}].content")
        content = "".join(str(part.get("text", "")) for part in content)
    role = "system" if message.role == "developer" else message.role
    return {"role": role, "content": content or ""}


async def prepare(engine: Engine, source, prompts: list, requested: int | None, param: str):
    """(token ids per prompt, max_tokens per prompt), off the event loop (a first use loads a tokenizer)."""
    def work():
        ids = [encode(engine, source, p) for p in prompts]
        return ids, token_limit(engine, source, ids, requested, param)
    try:
        return await asyncio.to_thread(work)
    except UserError as exc:   # the catalog lists a model whose base cannot be found
        raise generation_error(exc, source.id) from None


def encode(engine: Engine, source, prompt: str | list[dict]) -> list[int]:
    """Token ids of a chat (rendered with the model's template, as training did) or of raw text."""
    tokenizer = engine.tokenizer(source)
    if isinstance(prompt, list):
        try:
            text = prompt_for_generation(tokenizer, prompt)
        except Exception as exc:  # noqa: BLE001 - jinja raises for conversations the template forbids
            raise APIError(400, f"the model's chat template rejects these messages: {exc}", param="messages")
        return engine.encode(source, text)
    ids = engine.encode(source, prompt)  # no special tokens, as hone's pretrain objective tokenizes
    return ids or [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]


def token_limit(engine: Engine, source, prompts: list[list[int]], requested: int | None, param: str) -> list[int]:
    """max_tokens per prompt: the request's (refused past the context), else what fits, up to the default."""
    context = engine.context_length(source)
    limits = []
    for prompt in prompts:
        room = context - len(prompt) if context else None
        if room is not None and (room < 1 or (requested and requested > room)):
            raise APIError(400, f"This model's maximum context length is {context} tokens. However, you requested "
                           f"{len(prompt) + (requested or 1)} tokens ({len(prompt)} in the {param}, "
                           f"{requested or 1} in the completion). Please reduce the length of the {param} "
                           "or completion.", param=param, code="context_length_exceeded")
        limits.append(requested or min(engine.default_max_tokens, room or engine.default_max_tokens))
    return limits


class Run:
    """A queued Job and the asyncio queue its events arrive on from the engine's thread."""

    def __init__(self, job_args: dict, engine: Engine):
        loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.created = int(time.time())
        self._id = uuid.uuid4().hex[:24]

        def emit(event: tuple) -> None:
            try:
                loop.call_soon_threadsafe(self.events.put_nowait, event)
            except RuntimeError:  # the loop is gone (server shutting down): nobody is listening
                pass

        self.job = Job(emit=emit, **job_args)
        engine.submit(self.job)

    def id(self, prefix: str) -> str:
        return f"{prefix}-{self._id}"

    def usage(self, answers) -> dict:
        prompt = sum(len(p) for p in self.job.prompts)
        completion = sum(a.tokens for a in answers)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def next_event(self) -> tuple:
        event = await self.events.get()
        if event[0] == "error":
            raise generation_error(event[1], self.job.source.id)
        return event

    async def result(self):
        try:
            while (event := await self.next_event())[0] != "done":
                pass
            return event[1]
        finally:
            self.job.cancelled = True   # a no-op once done; stops the rows if the client went away


def start(engine: Engine, source, body: Sampled, prompts: list[list[int]], limits: list[int]) -> Run:
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > MAX_STOPS or any(not s for s in stop):
        raise APIError(400, f"stop takes up to {MAX_STOPS} non-empty strings", param="stop")
    sampling = Sampling(1.0 if body.temperature is None else body.temperature,
                        1.0 if body.top_p is None else body.top_p, body.seed)
    return Run(dict(source=source, prompts=prompts, n=body.n or 1, max_tokens=limits, stop=stop,
                    sampling=sampling), engine)


def generation_error(exc: Exception, model_id: str) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, UserError):
        return APIError(500, f"model {model_id} could not be loaded: {exc}", "server_error", code="model_load_failed")
    log.error("generation failed for %s", model_id, exc_info=exc)
    return APIError(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error")


def sse(events) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def frame(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


async def stream_frames(run: Run, body: Sampled, head: Callable[[], dict], choice: Callable):
    """The SSE frames of a run: `choice(index, text, finish_reason)` builds one choice of a chunk."""
    usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(choices: list[dict]) -> str:
        return frame({**head(), "choices": choices, **({"usage": None} if usage else {})})

    try:
        for i in range(run.job.rows):
            first = choice(i, None, None)
            if first is not None:
                yield chunk([first])
        while True:
            try:
                event = await run.next_event()
            except APIError as exc:
                yield frame({"error": {"message": exc.message, "type": exc.type or "server_error",
                                       "param": exc.param, "code": exc.code}})
                break
            if event[0] == "delta":
                yield chunk([choice(event[1], event[2], None)])
            elif event[0] == "finish":
                answer = run.job.answers[event[1]]
                yield chunk([choice(event[1], "", answer.finish_reason)])
            elif event[0] == "done":
                if usage:
                    yield frame({**head(), "choices": [], "usage": run.usage(event[1])})
                break
        yield frame("[DONE]")
    finally:
        run.job.cancelled = True   # the client hung up mid-stream: stop generating for it


def chat_events(run: Run, body: ChatRequest):
    def head() -> dict:
        return {"id": run.id("chatcmpl"), "object": "chat.completion.chunk", "created": run.created,
                "model": body.model, "system_fingerprint": None}

    def choice(index: int, text: str | None, finish: str | None) -> dict:
        if text is None:   # the opening chunk of each choice carries the role
            delta = {"role": "assistant", "content": ""}
        else:
            delta = {"content": text} if finish is None else {}
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}

    return stream_frames(run, body, head, choice)


def completion_events(run: Run, body: CompletionRequest):
    def head() -> dict:
        return {"id": run.id("cmpl"), "object": "text_completion", "created": run.created, "model": body.model,
                "system_fingerprint": None}

    def choice(index: int, text: str | None, finish: str | None) -> dict | None:
        if text is None:
            return None    # text completions have no opening role chunk
        return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}

    return stream_frames(run, body, head, choice)
