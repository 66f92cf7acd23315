"""The OpenAI-compatible endpoints: /v1/models and /v1/chat/completions, authorised by API key only.

Async views: a streamed answer is an async generator over the same provider adapters the chat page
uses (`conversations.llm`), so there is one place that talks to providers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from conversations.context import estimate_tokens
from conversations.llm import ChatRequest, ProviderError, Usage, provider_for
from conversations.llm.base import within_gap
from conversations.models import Message

from . import keys, services, wire
from .wire import ApiError

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

log = logging.getLogger(__name__)

# Provider failures, as the API's errors: (HTTP status, OpenAI error type, code).
PROVIDER_ERRORS = {
    "context_too_long": (400, "invalid_request_error", "context_length_exceeded"),
    "provider_rate_limited": (503, "server_error", "provider_rate_limited"),
    "provider_auth": (502, "server_error", "provider_auth"),
    "provider_unavailable": (502, "server_error", "provider_unavailable"),
}

# Usage writes that outlive a client who went away mid-stream.
_pending: set[asyncio.Task[Any]] = set()


def _provider_error(exc: ProviderError) -> ApiError:
    status, type_, code = PROVIDER_ERRORS.get(exc.code, (502, "server_error", exc.code))
    return ApiError(status, exc.message, code=code, type_=type_, retry_after=exc.retry_after)


def _authenticate(authorization: str) -> AbstractBaseUser:
    """The user whose key is in the Authorization header (never the session cookie), or ApiError(401)."""
    key = keys.key_from_header(authorization)
    row = keys.api_key_authenticate(key) if key else None
    if row is None:
        raise ApiError(
            401,
            "Incorrect API key provided. Make one on /account/api-keys/ and send it as `Authorization: Bearer <key>`.",
            code="invalid_api_key",
        )
    return row.user


async def _user(request: HttpRequest) -> AbstractBaseUser:
    return await sync_to_async(_authenticate)(request.headers.get("Authorization", ""))


def _authorize_and_plan(authorization: str, body: bytes | None) -> tuple[wire.CompletionRequest, services.Plan]:
    """Key, then request, then persona and limits: one trip to the database thread for all of them."""
    user = _authenticate(authorization)
    if body is None:
        raise wire.invalid("The request body is too large.")
    parsed = wire.parse_request(body)
    return parsed, services.plan(user, parsed)


def _api(view: Any) -> Any:
    """CSRF-exempt (no cookie is ever looked at) and every ApiError as OpenAI's error object."""

    async def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        try:
            return await view(request, *args, **kwargs)
        except ApiError as exc:
            return exc.response()

    wrapped.__name__ = view.__name__
    wrapped.__doc__ = view.__doc__
    return csrf_exempt(wrapped)


@_api
async def unknown(request: HttpRequest, rest: str) -> HttpResponse:
    """Any other /v1/ path: OpenAI's 404 error object, not an HTML page."""
    raise ApiError(
        404, f"Invalid URL ({request.method} /v1/{rest}): this site serves /v1/models and /v1/chat/completions."
    )


@_api
@require_GET
async def models(request: HttpRequest) -> HttpResponse:
    """The personas this key's user may use, as OpenAI's model list (a persona's id is its slug)."""
    user = await _user(request)
    return wire.json_response({"object": "list", "data": await sync_to_async(_model_objects)(user)})


@_api
@require_GET
async def model_detail(request: HttpRequest, model_id: str) -> HttpResponse:
    """One model of the list, or 404 `model_not_found`."""
    user = await _user(request)
    for model in await sync_to_async(_model_objects)(user):
        if model["id"] == model_id:
            return wire.json_response(model)
    raise services.not_found(model_id)


def _model_objects(user: AbstractBaseUser) -> list[dict[str, Any]]:
    """Personas (id: the slug, owned by the site), then registry models (id: provider:model)."""
    personas, registry = services.models(user)
    return [wire.model_object(p.slug, int(p.created_at.timestamp())) for p in personas] + [
        wire.model_object(m.name, int(m.created_at.timestamp()), owned_by=m.name.partition(":")[0]) for m in registry
    ]


@_api
@require_POST
async def chat_completions(request: HttpRequest) -> HttpResponseBase:
    """A chat completion, streamed (server-sent events) or whole."""
    try:
        body: bytes | None = request.body
    except RequestDataTooBig:
        body = None
    parsed, plan = await sync_to_async(_authorize_and_plan)(request.headers.get("Authorization", ""), body)
    try:
        provider, model = await provider_for(plan.spec)
    except ProviderError as exc:  # a persona naming an unknown provider: staff's to fix
        log.error("api: persona model %r: %s", plan.spec, exc.message)
        raise _provider_error(exc) from exc
    chat_request = ChatRequest(
        model=model,
        system=plan.system,
        messages=parsed.messages,
        temperature=parsed.temperature
        if parsed.temperature is not None
        else (plan.persona.temperature if plan.persona else None),
        max_output_tokens=parsed.max_tokens or (plan.persona.max_output_tokens if plan.persona else None),
    )
    exchange = Exchange(plan, parsed, chat_request)
    stream = aiter(within_gap(provider.stream(chat_request), settings.CHAT_READ_TIMEOUT))
    # Wait for the first chunk before answering: a failure before any text is a real HTTP error
    # (which the client's SDK may retry), not a 200 with an error inside.
    try:
        first = await anext(stream, None)
    except ProviderError as exc:
        await exchange.finish(error=exc)
        raise _provider_error(exc) from exc
    except BaseException:
        await exchange.finish(error=ProviderError("interrupted", "The client went away."))
        raise
    if parsed.stream:
        response = StreamingHttpResponse(exchange.events(first, stream), content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # proxies: pass each event on as it comes
        return response
    try:
        if first is not None:
            exchange.take(first)
        async for item in stream:
            exchange.take(item)
    except ProviderError as exc:
        await exchange.finish(error=exc)
        raise _provider_error(exc) from exc
    except BaseException:
        await exchange.finish(error=ProviderError("interrupted", "The client went away."))
        raise
    usage = await exchange.finish()
    return wire.json_response(
        wire.completion(
            id_=exchange.id, model=parsed.model, text=exchange.text, usage=usage, conversation=exchange.conversation
        )
    )


class Exchange:
    """One request's reply as it arrives, and its accounting once it ends (exactly once)."""

    def __init__(self, plan: services.Plan, parsed: wire.CompletionRequest, chat_request: ChatRequest) -> None:
        self.plan = plan
        self.parsed = parsed
        self.chat_request = chat_request
        self.id = wire.completion_id()
        self.parts: list[str] = []
        self.usage = Usage()
        self.conversation = str(plan.conversation_id) if plan.conversation_id else None
        self.done = False

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def take(self, item: str | Usage) -> str | None:
        if isinstance(item, Usage):
            self.usage = item
            return None
        self.parts.append(item)
        return item

    def counted(self) -> Usage:
        """The provider's counts; an estimate where it gave none (a cut stream still cost something)."""
        input_tokens = self.usage.input_tokens
        if input_tokens is None:
            input_tokens = estimate_tokens(self.chat_request.system) + sum(
                estimate_tokens(m["content"]) for m in self.chat_request.messages
            )
        output_tokens = self.usage.output_tokens
        if output_tokens is None:
            output_tokens = estimate_tokens(self.text)
        return Usage(input_tokens, output_tokens, self.usage.cached_input_tokens, self.usage.cache_write_tokens)

    async def finish(self, error: ProviderError | None = None) -> dict[str, int]:
        """Record the usage (and the thread's turns) once; the usage object."""
        counted = self.counted()
        if error is not None and not self.parts and self.usage.input_tokens is None:
            counted = Usage(0, 0)  # failed before any text: nothing to charge the user for
        usage = wire.usage_object(counted.input_tokens or 0, counted.output_tokens or 0)
        if self.done:
            return usage
        self.done = True
        status = Message.Status.COMPLETE
        if error is not None:
            status = Message.Status.STOPPED if error.code == "interrupted" else Message.Status.ERROR
        record = sync_to_async(services.record)(
            self.plan,
            prompt=self.parsed.messages[-1]["content"],
            reply=self.text,
            usage=counted,
            estimated=self.usage.input_tokens is None or self.usage.output_tokens is None,
            status=status,
            error_code="" if error is None or error.code == "interrupted" else error.code,
        )
        # Shielded: a client that leaves mid-write must not lose the accounting.
        task = asyncio.ensure_future(record)
        _pending.add(task)
        task.add_done_callback(_pending.discard)
        await asyncio.shield(task)
        return usage

    async def events(self, first: str | Usage | None, stream: AsyncIterator[str | Usage]) -> AsyncIterator[bytes]:
        """The server-sent events of a streamed answer."""
        chunks = wire.Chunks(id_=self.id, model=self.parsed.model, conversation=self.conversation)
        error: ProviderError | None = None
        try:
            yield chunks.role()
            if first is not None and (text := self.take(first)):
                yield chunks.text(text)
            async for item in stream:
                if text := self.take(item):
                    yield chunks.text(text)
        except ProviderError as exc:
            error = exc
        except BaseException:
            # The client went away (the server cancels us): count what it cost, then let go.
            await self.finish(error=ProviderError("interrupted", "The client went away."))
            raise
        usage = await self.finish(error=error)
        if error is not None:
            log.warning("api: provider failed mid-stream: %r", error)
            yield chunks.error(_provider_error(error))
            return
        yield chunks.finish()
        if self.parsed.include_usage:
            yield chunks.usage(usage)
        yield chunks.DONE
