"""OpenAI's wire format: parse a chat completion request, and shape responses, chunks and errors.

Pure functions: nothing here touches the database or the network.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from django.conf import settings
from django.http import HttpResponse

ROLES = {"system", "developer", "user", "assistant"}


class ApiError(Exception):
    """An answer in OpenAI's error format: status, message, type, code and param."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        type_: str = "invalid_request_error",
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type_
        self.param = param
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> HttpResponse:
        response = json_response(self.body(), status=self.status)
        if self.retry_after is not None:
            response["Retry-After"] = str(max(1, round(self.retry_after)))
        return response


def invalid(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


def json_response(payload: dict[str, Any], status: int = 200) -> HttpResponse:
    return HttpResponse(orjson.dumps(payload), status=status, content_type="application/json")


@dataclass
class CompletionRequest:
    """A validated chat completion request, as the site understands it."""

    model: str
    system: str  # the client's system/developer messages, joined
    messages: list[dict[str, str]]  # user/assistant turns, in order
    stream: bool = False
    include_usage: bool = False
    temperature: float | None = None
    max_tokens: int | None = None
    # The `conversation` extension: None (stateless), "new", or a conversation id.
    conversation: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _text(content: Any, index: int) -> str:
    """A message's content as text: a string, or a list of text parts."""
    param = f"messages[{index}].content"
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise invalid("Only text content parts are supported.", param)
            parts.append(part["text"])
        text = "".join(parts)
    else:
        raise invalid("A message's content must be a string or a list of text parts.", param)
    if "\x00" in text:
        raise invalid("A message contains a NUL character.", param)
    if len(text) > settings.CHAT_MAX_MESSAGE_CHARS:
        raise invalid(
            f"A message is {len(text):,} characters; the limit is {settings.CHAT_MAX_MESSAGE_CHARS:,}.", param
        )
    return text


def parse_request(raw: bytes) -> CompletionRequest:
    """The request body -> a CompletionRequest, or ApiError(400) saying what is wrong."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise invalid("We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise invalid("You must provide a model parameter.", "model")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise invalid("messages must be a non-empty array.", "messages")
    system_parts: list[str] = []
    turns: list[dict[str, str]] = []
    for i, message in enumerate(raw_messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise invalid(f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}.", f"messages[{i}].role")
        text = _text(message.get("content"), i)
        if message["role"] in ("system", "developer"):
            system_parts.append(text)
        else:
            turns.append({"role": message["role"], "content": text})
    if not turns or turns[-1]["role"] != "user" or not turns[-1]["content"].strip():
        raise invalid("The last message must be a non-empty user message.", "messages")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise invalid("stream must be a boolean.", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise invalid("stream_options must be an object.", "stream_options")
    include_usage = bool((options or {}).get("include_usage", False))
    if options is not None and not stream:
        raise invalid("stream_options is only allowed when stream is true.", "stream_options")
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 2
    ):
        raise invalid("temperature must be a number between 0 and 2.", "temperature")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise invalid("max_tokens must be a positive integer.", "max_tokens")
    n = body.get("n")
    if n not in (None, 1):
        raise invalid("Only n=1 is supported.", "n")
    if body.get("tools") or body.get("functions"):
        raise invalid("Tools are not supported.", "tools")
    conversation = body.get("conversation")
    if conversation is True:
        conversation = "new"
    elif conversation is False:
        conversation = None
    if conversation is not None:
        if not isinstance(conversation, str):
            raise invalid('conversation must be true, "new" or the id of one of your conversations.', "conversation")
        if conversation != "new":
            try:
                conversation = str(uuid.UUID(conversation))
            except ValueError:
                raise invalid('conversation must be a conversation id (a UUID) or "new".', "conversation") from None
    return CompletionRequest(
        model=model.strip(),
        system="\n\n".join(p for p in system_parts if p.strip()),
        messages=turns,
        stream=bool(stream),
        include_usage=include_usage,
        temperature=float(temperature) if temperature is not None else None,
        max_tokens=max_tokens,
        conversation=conversation,
    )


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage_object(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": input_tokens,
        "completion_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
    }


def completion(*, id_: str, model: str, text: str, usage: dict[str, int], conversation: str | None) -> dict[str, Any]:
    """The whole (non-streamed) answer."""
    payload: dict[str, Any] = {
        "id": id_,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
    }
    if conversation:
        payload["conversation"] = conversation
    return payload


class Chunks:
    """The server-sent events of one streamed answer, pre-encoded around the per-chunk text."""

    def __init__(self, *, id_: str, model: str, conversation: str | None) -> None:
        self.created = int(time.time())
        self.base: dict[str, Any] = {
            "id": id_,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": model,
        }
        if conversation:
            self.base["conversation"] = conversation
        # Every text chunk is the same bytes around its content: encode the two halves once.
        marker = "\x00MARK\x00"
        encoded = self._event([{"index": 0, "delta": {"content": marker}, "logprobs": None, "finish_reason": None}])
        self._head, self._tail = encoded.split(orjson.dumps(marker)[1:-1])

    def _event(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return b"data: " + orjson.dumps({**self.base, "choices": choices, **extra}) + b"\n\n"

    def role(self) -> bytes:
        return self._event(
            [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]
        )

    def text(self, text: str) -> bytes:
        return self._head + orjson.dumps(text)[1:-1] + self._tail

    def finish(self) -> bytes:
        return self._event([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}])

    def usage(self, usage: dict[str, int]) -> bytes:
        return self._event([], usage=usage)

    @staticmethod
    def error(error: ApiError) -> bytes:
        return b"data: " + orjson.dumps(error.body()) + b"\n\n"

    DONE = b"data: [DONE]\n\n"


def model_object(model_id: str, created: int, owned_by: str = "chatsite") -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}
