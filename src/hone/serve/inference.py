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
from typing import Annotated, Any, Callable, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from hone.data.render import prompt_for_generation
from hone.errors import UserError
from hone.monitor.traffic import Exchange
from hone.serve.body import unicode_text
from hone.serve.capture import CaptureWriter
from hone.serve.engine import Engine
from hone.serve.errors import APIError, error_responses
from hone.serve.generation import Job, Sampling
from hone.serve.served import BASE, InferenceEngine
from hone.serve.settings import ServeSettings
from hone.serve.tools import (
    ResponseFormat,
    StreamReader,
    ToolChoice,
    ToolDef,
    ToolPlan,
    chat_message_out,
    plan_tools,
    request_fields,
    request_message,
)

MAX_N = 16          # choices per request: each is a row of the batch
MAX_STOPS = 4       # OpenAI's limit on stop sequences
# An integer JSON carries exactly (RFC 8259 §6: |n| < 2**53; past it generators and parsers round through
# doubles) and inside torch.manual_seed's range: a seed of 2**64 once raised inside the engine (a 500).
MIN_SEED, MAX_SEED = -(2**53 - 1), 2**53 - 1
Stop = Annotated[str, Field(min_length=1)]
SSE_EVENT = {"type": "object", "required": ["data"],
             "properties": {"data": {"type": "string", "description": "a chunk as JSON, or [DONE] last"}}}
STREAMED: dict[int | str, dict[str, Any]] = {
    200: {"description": "One JSON body, or with `stream: true` server-sent events, one per chunk",
          "content": {"text/event-stream": {"schema": SSE_EVENT}}}}
log = logging.getLogger("hone.serve")


def exact_bounds(schema: dict) -> None:
    """The seed's bounds as integers: pydantic writes them as floats."""
    for option in schema.get("anyOf", [schema]):
        if option.get("type") == "integer":
            option.update(minimum=MIN_SEED, maximum=MAX_SEED)


class TextPart(BaseModel):
    """A content part of a chat message; hone's models read text only (images and audio are refused)."""
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str


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
    stop: Stop | Annotated[list[Stop], Field(max_length=MAX_STOPS)] | None = Field(
        None, description=f"up to {MAX_STOPS} non-empty strings; the answer ends before the first")
    seed: int | None = Field(None, ge=MIN_SEED, le=MAX_SEED, description="the same seed, the same samples",
                             json_schema_extra=exact_bounds)
    stream: bool | None = False
    stream_options: StreamOptions | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None


class KnowledgeRequest(BaseModel):
    """hone extension: answer from a knowledge base (docs/knowledge.md)."""
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="knowledge base, NAME or NAME:VERSION (hone kb list)")
    k: int = Field(4, ge=1, le=32, description="passages put before the last user message")


class ChatRequest(Sampled):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    hone_kb: KnowledgeRequest | None = Field(None, description="hone extension: retrieve passages from a knowledge "
                                             "base into the prompt; the answer carries `hone_citations`")
    tools: list[ToolDef] | None = Field(None, max_length=128, description="functions the model may call")
    tool_choice: ToolChoice | None = Field(None, description="auto, none, required or a named function")
    response_format: ResponseFormat | None = Field(None, description="text, json_object or json_schema (constrained)")


class CompletionRequest(Sampled):
    prompt: str | Annotated[list[str], Field(min_length=1)]


def make_inference_router(catalog, current_org: Callable, engine: InferenceEngine | None = None,
                          max_request_tokens: int = ServeSettings.max_request_tokens,
                          knowledge_bases: tuple[str, ...] = (), capture: CaptureWriter | None = None) -> APIRouter:
    """The inference endpoints over `catalog`'s models; `engine` defaults to a fresh Engine().
    `max_request_tokens` caps what one request may ask for (ServeSettings; 0: no cap); `knowledge_bases`
    are the ones a request's `hone_kb` may name (`hone serve --kb NAME`); `capture` stores the answered
    requests of the models it captures (`hone serve --capture`)."""
    engine = engine or Engine()
    router = APIRouter(dependencies=[Depends(unicode_text)], responses=error_responses(400, 401, 404, 429, 500),
                       tags=["inference"])
    router.engine = engine  # type: ignore[attr-defined]  # ours: the app closes it on shutdown; tests read it

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

    @router.delete("/v1/models/{model:path}", responses=error_responses(403))
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

    @router.post("/v1/chat/completions", responses=STREAMED)
    async def chat_completions(body: ChatRequest, org: str = Depends(current_org)):
        started = time.perf_counter()
        source = await resolve(org, body.model)
        plan = plan_tools(*request_fields(body.tools, body.tool_choice, body.response_format))
        messages = [chat_message(m) for m in body.messages]
        citations = None
        if body.hone_kb is not None:   # hone extension: the same template and retrieval as `hone chat --kb`
            messages, citations = await asyncio.to_thread(with_knowledge, body.hone_kb, messages, knowledge_bases)
        prompt, limit = await prepare(engine, source, [messages], body.max_completion_tokens or body.max_tokens,
                                      "messages", body.n or 1, max_request_tokens, plan)
        run = start(engine, source, body, prompt, limit, plan.schema if plan else None)
        if capture is not None and capture.wanted(org, body.model, source.id, source.tuned is not BASE):
            run.on_done = captured(capture, run, "chatcmpl", org, body, source, messages, started, limit)
        if body.stream:
            return sse(chat_events(run, body, plan, citations))
        answers = await run.result()
        choices = []
        for i, a in enumerate(answers):
            message, finish = chat_message_out(plan, a.text, a.finish_reason)
            choices.append({"index": i, "message": message, "logprobs": None, "finish_reason": finish})
        return {"id": run.id("chatcmpl"), "object": "chat.completion", "created": run.created, "model": body.model,
                "choices": choices, "usage": run.usage(answers), "system_fingerprint": None,
                **({"hone_citations": citations} if citations is not None else {})}

    @router.post("/v1/completions", responses=STREAMED)
    async def completions(body: CompletionRequest, org: str = Depends(current_org)):
        started = time.perf_counter()
        source = await resolve(org, body.model)
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        prompts, limit = await prepare(engine, source, texts, body.max_tokens, "prompt", body.n or 1,
                                       max_request_tokens)
        run = start(engine, source, body, prompts, limit)
        if capture is not None and capture.wanted(org, body.model, source.id, source.tuned is not BASE):
            run.on_done = captured(capture, run, "cmpl", org, body, source,
                                   [{"role": "prompt", "content": t} for t in texts], started, limit)
        if body.stream:
            return sse(completion_events(run, body))
        answers = await run.result()
        choices = [{"index": i, "text": a.text, "logprobs": None, "finish_reason": a.finish_reason}
                   for i, a in enumerate(answers)]
        return {"id": run.id("cmpl"), "object": "text_completion", "created": run.created, "model": body.model,
                "choices": choices, "usage": run.usage(answers), "system_fingerprint": None}

    return router


def captured(capture: CaptureWriter, run: "Run", prefix: str, org: str, body: Sampled, source,
             messages: list[dict], started: float, limits: list[int]) -> Callable[[list], None]:
    """Run.on_done for a captured request: hands the writer a plain record (it redacts and writes it)."""
    def done(answers: list) -> None:
        usage = run.usage(answers)
        capture.submit(Exchange(
            id=run.id(prefix), org=org, model=body.model, served=source.id,
            run_dir=None if source.tuned is BASE else str(source.tuned), kind="chat" if prefix == "chatcmpl" else
            "completion", messages=messages,
            answers=[{"text": a.text, "finish_reason": a.finish_reason, "tokens": a.tokens} for a in answers],
            latency_ms=(time.perf_counter() - started) * 1000, prompt_tokens=usage["prompt_tokens"],
            completion_tokens=usage["completion_tokens"], max_tokens=max(limits) if limits else None))
    return done


def with_knowledge(request: KnowledgeRequest, messages: list[dict],
                   offered: tuple[str, ...]) -> tuple[list[dict], list]:
    """(messages with the retrieved passages, their citations) for a request's `hone_kb`, which must name a
    knowledge base the server offers."""
    from hone.kb.prompt import retrieve_for
    from hone.kb.store import open_kb

    if request.name.strip().split(":")[0] not in offered:
        raise APIError(404, f"The knowledge base `{request.name}` is not offered by this server (hone serve --kb "
                       "NAME offers one).", param="hone_kb", code="kb_not_found")
    try:
        asked, passages = retrieve_for(open_kb(request.name), messages, request.k)
    except UserError as exc:
        raise APIError(404, str(exc), param="hone_kb", code="kb_not_found") from None
    return asked, [{"id": p.id, "source": p.source, "title": p.title, "score": p.score} for p in passages]


def model_object(source) -> dict:
    return {"id": source.id, "object": "model", "created": int(source.created), "owned_by": source.owned_by}


def chat_message(message: ChatMessage) -> dict:
    """{role, content} for the chat template (and an assistant's calls, a tool reply's call id); text parts
    joined, `developer` read as `system`."""
    content = message.content
    if isinstance(content, list):
        content = "".join(part.text for part in content)
    role = "system" if message.role == "developer" else message.role
    return request_message({"role": role, "content": content or ""}, message.model_extra or {})


async def prepare(engine: InferenceEngine, source, prompts: list, requested: int | None, param: str, n: int = 1,
                  budget: int = 0, plan: ToolPlan | None = None):
    """(token ids per prompt, max_tokens per prompt), off the event loop (a first use loads a tokenizer).
    A request asking for more than `budget` tokens in all (see check_budget) is refused."""
    # each prompt is at least one token: a request past the budget by count alone is refused untokenized
    check_budget(budget, n, len(prompts) * (1 + (requested or 1)), len(prompts), requested, param, at_least=True)

    def work():
        ids = [encode(engine, source, p, plan) for p in prompts]
        limits = token_limit(engine, source, ids, requested, param)
        check_budget(budget, n, sum(len(p) + limit for p, limit in zip(ids, limits)), len(prompts), requested, param)
        return ids, limits
    try:
        return await asyncio.to_thread(work)
    except UserError as exc:   # the catalog lists a model whose base cannot be found
        raise generation_error(exc, source.id) from None


def encode(engine: InferenceEngine, source, prompt: str | list[dict], plan: ToolPlan | None = None) -> list[int]:
    """Token ids of a chat (rendered with the model's template, as training did, with the request's tools)
    or of raw text."""
    tokenizer = engine.tokenizer(source)
    if isinstance(prompt, list):
        try:
            text = plan.prompt(tokenizer, prompt) if plan else prompt_for_generation(tokenizer, prompt)
        except Exception as exc:  # noqa: BLE001 - jinja raises for conversations the template forbids
            raise APIError(400, f"the model's chat template rejects these messages: {exc}", param="messages") from exc
        return engine.encode(source, text)
    ids = engine.encode(source, prompt)  # no special tokens, as hone's pretrain objective tokenizes
    return ids or [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]


def check_budget(budget: int, n: int, tokens: int, prompts: int, requested: int | None, param: str,
                 at_least: bool = False) -> None:
    """A 400 when n x `tokens` (prompt plus max_tokens, summed over the prompts) passes `budget` (0: no cap)."""
    if budget and n * tokens > budget:
        asked = f"{'at least ' if at_least else ''}{n * tokens} tokens"
        raise APIError(400, f"This request asks for {asked} ({prompts} prompt(s) x n={n}, each its prompt plus "
                       f"{requested or 'the default'} new tokens), more than this server's max_request_tokens "
                       f"of {budget} per request. Send fewer prompts, a smaller n or max_tokens, or split the "
                       "request.", param=param, code="request_too_large")


def token_limit(engine: InferenceEngine, source, prompts: list[list[int]], requested: int | None,
                param: str) -> list[int]:
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

    def __init__(self, job_args: dict, engine: InferenceEngine):
        loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.created = int(time.time())
        self._id = uuid.uuid4().hex[:24]
        self.on_done: Callable[[list], None] | None = None   # called once with the answers (capture)

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
        if event[0] == "done" and self.on_done is not None:
            on_done, self.on_done = self.on_done, None
            on_done(event[1])
        return event

    async def result(self):
        try:
            while (event := await self.next_event())[0] != "done":
                pass
            return event[1]
        finally:
            self.job.cancelled = True   # a no-op once done; stops the rows if the client went away


def start(engine: InferenceEngine, source, body: Sampled, prompts: list[list[int]], limits: list[int],
          schema: dict | None = None) -> Run:
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    sampling = Sampling(1.0 if body.temperature is None else body.temperature,
                        1.0 if body.top_p is None else body.top_p, body.seed)
    extra = {"schema": schema} if schema else {}
    return Run(dict(source=source, prompts=prompts, n=body.n or 1, max_tokens=limits, stop=stop,
                    sampling=sampling, **extra), engine)


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
            for first in _choices(choice(i, None, None)):
                yield chunk([first])
        while True:
            try:
                event = await run.next_event()
            except APIError as exc:
                yield frame({"error": {"message": exc.message, "type": exc.type or "server_error",
                                       "param": exc.param, "code": exc.code}})
                break
            if event[0] == "delta":
                for one in _choices(choice(event[1], event[2], None)):
                    yield chunk([one])
            elif event[0] == "finish":
                answer = run.job.answers[event[1]]
                for one in _choices(choice(event[1], "", answer.finish_reason)):
                    yield chunk([one])
            elif event[0] == "done":
                if usage:
                    yield frame({**head(), "choices": [], "usage": run.usage(event[1])})
                break
        yield frame("[DONE]")
    finally:
        run.job.cancelled = True   # the client hung up mid-stream: stop generating for it


def _choices(built: dict | list[dict] | None) -> list[dict]:
    """A `choice` callback's answer as a list: one choice, several (one chunk each), or none."""
    return [] if built is None else built if isinstance(built, list) else [built]


def chat_events(run: Run, body: ChatRequest, plan: ToolPlan | None = None, citations: list | None = None):
    cite = [{"hone_citations": citations}] if citations is not None else []   # hone_kb: on the first chunk only

    def head() -> dict:
        return {"id": run.id("chatcmpl"), "object": "chat.completion.chunk", "created": run.created,
                "model": body.model, "system_fingerprint": None, **(cite.pop() if cite else {})}

    readers: dict[int, StreamReader] = {}

    def choice(index: int, text: str | None, finish: str | None) -> dict | list[dict]:
        if text is None:   # the opening chunk of each choice carries the role
            readers[index] = StreamReader(plan)
            return {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                    "finish_reason": None}
        reader = readers[index]
        if finish is None:   # text as it comes; a call is held back until it is whole
            return [{"index": index, "delta": d, "logprobs": None, "finish_reason": None} for d in reader.feed(text)]
        deltas, finish = reader.finish(finish)
        return [{"index": index, "delta": d, "logprobs": None, "finish_reason": None} for d in deltas] + [
            {"index": index, "delta": {}, "logprobs": None, "finish_reason": finish}]

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
