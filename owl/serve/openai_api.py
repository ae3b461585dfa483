"""OpenAI's chat-completions format <-> owl: request JSON -> a :class:`Sample` and options; answers -> JSON.

Requests are checked by hand rather than by a pydantic model so that every
refusal names the field at fault in OpenAI's error shape (``param``) and
unknown extra fields are ignored, as OpenAI-compatible servers do.

Messages map to owl's conversation form: each user turn's images become
``<image>`` markers in front of its text, in order (``<image>\\n`` each, as
``owl chat`` writes them), and the images are collected across turns in
marker order, so an image sent in an earlier turn stays in the conversation.
``system`` (and OpenAI's newer ``developer``) turns become system messages.

Sampling: ``temperature`` 0 is greedy and a positive one samples; without
``temperature`` the model's ``generation_config.json`` decides (owl's default:
greedy). ``top_p`` and the non-OpenAI ``top_k`` apply when sampling.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from owl.conversation import IMAGE_TOKEN, Message, Sample
from owl.generation import GenerationOptions
from owl.serve.errors import ApiError, bad_request
from owl.serve.settings import ServeSettings

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOPS = 4


@dataclass
class Turn:
    role: str
    text: str
    image_urls: list[str] = field(default_factory=list)


@dataclass
class ChatRequest:
    turns: list[Turn]
    options: GenerationOptions  # the request's own settings; None fields come from the model, then owl
    max_tokens: int | None
    stream: bool = False
    include_usage: bool = False

    @property
    def num_images(self) -> int:
        return sum(len(t.image_urls) for t in self.turns)


def _type_name(x: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(x), "a number"
    )


def _expect(value: Any, kinds: tuple[type, ...], param: str, what: str) -> Any:
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise bad_request(f"'{param}' must be {what}, got {_type_name(value)}", param, "invalid_type")
    return value


def _number(body: dict, name: str, lo: float, hi: float, integer: bool = False) -> float | int | None:
    value = body.get(name)
    if value is None:
        return None
    _expect(value, (int,) if integer else (int, float), name, "an integer" if integer else "a number")
    if not lo <= value <= hi:
        raise bad_request(f"'{name}' must be between {lo:g} and {hi:g}, got {value}", name)
    return value


def _text_parts(content: Any, param: str, allow_images: bool) -> tuple[str, list[str]]:
    """A message's content -> (its text, its image URLs in order)."""
    if isinstance(content, str):
        return content, []
    _expect(content, (list,), param, "a string or an array of content parts")
    texts: list[str] = []
    urls: list[str] = []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        _expect(part, (dict,), where, "a content part object")
        kind = part.get("type")
        if kind == "text":
            texts.append(_expect(part.get("text"), (str,), f"{where}.text", "a string"))
        elif kind == "image_url" and allow_images:
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            urls.append(_expect(url, (str,), f"{where}.image_url.url", "a string (a data: URL)"))
        elif kind == "image_url":
            raise bad_request("images may only be sent in user messages", where, "invalid_content")
        else:
            raise bad_request(f"content part type {kind!r} is not supported (text, image_url)", f"{where}.type")
    return "\n".join(texts), urls


def _messages(raw: Any) -> list[Turn]:
    _expect(raw, (list,), "messages", "an array of messages")
    if not raw:
        raise bad_request("'messages' must not be empty", "messages")
    turns: list[Turn] = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        _expect(m, (dict,), where, "a message object")
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:  # a list or object role is unhashable: check the type
            raise bad_request(f"{where}.role {role!r} is not supported (system, developer, user, assistant)", where)
        content = m.get("content")
        if content is None and role == "assistant":
            content = ""
        text, urls = _text_parts(content, f"{where}.content", allow_images=role == "user")
        if IMAGE_TOKEN in text:
            raise bad_request(f"message text may not contain {IMAGE_TOKEN}; send images as image_url parts", where)
        turns.append(Turn(ROLES[role], text, urls))
    if turns[-1].role != "user":
        raise bad_request("the last message must be a user message", f"messages[{len(turns) - 1}].role")
    return turns


def _stop(value: Any) -> list[str] | None:
    if value is None:
        return None
    stops = [value] if isinstance(value, str) else _expect(value, (list,), "stop", "a string or an array of strings")
    if len(stops) > MAX_STOPS:
        raise bad_request(f"at most {MAX_STOPS} stop strings, got {len(stops)}", "stop")
    for s in stops:
        _expect(s, (str,), "stop", "a string or an array of strings")
        if not s:
            raise bad_request("stop strings must not be empty", "stop")
    return list(stops) or None


def parse_chat_request(body: Any, settings: ServeSettings) -> ChatRequest:
    """Check a decoded JSON body; :class:`ApiError` (400/404) naming the first field at fault."""
    _expect(body, (dict,), "body", "a JSON object")
    model = body.get("model")
    if model is not None and _expect(model, (str,), "model", "a string") != settings.model_name:
        raise ApiError(404, f"model {model!r} is not served here; this server serves {settings.model_name!r}", "model",
                       "model_not_found")  # fmt: skip
    turns = _messages(body.get("messages"))
    n_images = sum(len(t.image_urls) for t in turns)
    if n_images > settings.max_images:
        raise bad_request(f"{n_images} images, over this server's cap of {settings.max_images} per request",
                          "messages", "too_many_images")  # fmt: skip
    n = _number(body, "n", 1, 1e9, integer=True)
    if n is not None and n != 1:
        raise bad_request("only n=1 is supported", "n")
    for name in ("tools", "functions"):
        if body.get(name):
            raise bad_request(f"'{name}' is not supported by this server", name, "unsupported_parameter")
    if body.get("logprobs"):
        raise bad_request("'logprobs' is not supported by this server", "logprobs", "unsupported_parameter")
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise bad_request("only response_format {'type': 'text'} is supported", "response_format")

    max_tokens = _number(body, "max_completion_tokens", 1, 2**31, integer=True)
    param = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, param = _number(body, "max_tokens", 1, 2**31, integer=True), "max_tokens"
    if max_tokens is not None and max_tokens > settings.max_tokens:
        raise bad_request(f"'{param}' is {max_tokens}, over this server's cap of {settings.max_tokens}", param,
                          "max_tokens_too_large")  # fmt: skip
    temperature = _number(body, "temperature", 0, 2)
    top_p = _number(body, "top_p", 0, 1)
    if top_p == 0:
        raise bad_request("'top_p' must be > 0", "top_p")
    top_k = _number(body, "top_k", 0, 2**31, integer=True)
    seed = _number(body, "seed", -(2**63), 2**63 - 1, integer=True)
    stream = bool(_expect(body.get("stream", False), (bool, type(None)), "stream", "a boolean"))
    stream_options = body.get("stream_options")
    include_usage = False
    if stream_options is not None:
        _expect(stream_options, (dict,), "stream_options", "an object")
        if not stream:
            raise bad_request("'stream_options' is only allowed with stream=true", "stream_options")
        usage = stream_options.get("include_usage", False)
        include_usage = bool(_expect(usage, (bool,), "stream_options.include_usage", "a boolean"))

    do_sample = None if temperature is None else temperature > 0
    options = GenerationOptions(
        max_new_tokens=max_tokens,
        do_sample=do_sample,
        temperature=temperature if do_sample else None,
        top_k=top_k,
        top_p=top_p,
        stop=_stop(body.get("stop")),
        seed=seed,
    )
    return ChatRequest(turns, options, max_tokens, stream, include_usage)


def resolve_options(request: ChatRequest, settings: ServeSettings) -> GenerationOptions:
    """The request's settings over the model's over owl's; without ``max_tokens`` the answer is also capped by
    the server's ``max_tokens`` (a model file may ask for up to 512 tokens in total, and that stands)."""
    options = request.options.resolve(*([settings.defaults] if settings.defaults else []))
    if request.max_tokens is None and options.max_new_tokens is not None:
        options.max_new_tokens = min(options.max_new_tokens, settings.max_tokens)
    return options


def to_sample(turns: list[Turn], images: list[bytes]) -> Sample:
    """Turns with their images loaded (in order over all turns) -> an owl Sample."""
    messages = []
    for t in turns:
        text = "".join(IMAGE_TOKEN + "\n" for _ in t.image_urls) + t.text if t.role == "user" else t.text
        messages.append(Message(t.role, text))
    return Sample(messages, list(images))


# ----------------------------------------------------------------------------- responses


def new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(rid: str, model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chunk(
    rid: str,
    model: str,
    created: int,
    delta: dict | None = None,
    finish_reason: str | None = None,
    usage_: dict | None = None,
    include_usage: bool = False,
) -> dict:
    """One ``chat.completion.chunk``; a usage chunk (``usage_`` given) has no choices, as OpenAI sends it."""
    out: dict = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}
    if usage_ is not None:
        out["choices"] = []
        out["usage"] = usage_
        return out
    out["choices"] = [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}]
    if include_usage:
        out["usage"] = None
    return out


def model_list(name: str, created: int) -> dict:
    return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "owl"}]}
