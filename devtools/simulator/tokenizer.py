"""POST /tokenize and /detokenize as vLLM 0.32 answers them (tests/wire/vllm-0.32/
tokenize.json), with the simulator's tokens: a prompt's tokens are its words, as the
completions route counts them; chat messages get the chat template's tokens around them
(validation.CHAT_TOKENS_PER_MESSAGE and _PER_CONVERSATION), so `count` is the prompt
tokens the chat route reports for the same messages.

Token ids come from a vocabulary that grows as words are seen (ids from 256 up, each word
keeping its id), so /detokenize gives back the words of ids /tokenize handed out; an id
never handed out reads `<|id|>`.
"""

from typing import Any

import orjson

from devtools.simulator import validation
from devtools.simulator.config import SimulatorConfig

# The chat template's tokens: one at the start and two for the generation prompt per
# conversation, four per message (start, role, newline, end).
_BOS = "<|begin_of_text|>"
_START = "<|start_header_id|>"
_NEWLINE = "\n"
_END = "<|eot_id|>"


def _content_words(content: Any) -> list[str]:
    if isinstance(content, str):
        return content.split()
    words: list[str] = []
    if isinstance(content, list):
        for part in content:
            text = part.get("text") if isinstance(part, dict) else None
            if isinstance(text, str):
                words.extend(text.split())
    return words


def chat_token_strs(messages: list[Any]) -> list[str]:
    """The tokens of chat messages under the simulator's chat template; as many as
    validation.chat_prompt_tokens counts."""
    tokens = [_BOS]
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        tokens += [_START, str(role), _NEWLINE, *_content_words(content), _END]
    return [*tokens, _START, "assistant"]


class Vocabulary:
    """Token ids of one simulated vLLM: a word gets the next id the first time it is seen."""

    FIRST_ID = 256

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._strs: list[str] = []

    def encode(self, token_strs: list[str]) -> list[int]:
        ids = []
        for token in token_strs:
            token_id = self._ids.get(token)
            if token_id is None:
                token_id = self._ids[token] = self.FIRST_ID + len(self._strs)
                self._strs.append(token)
            ids.append(token_id)
        return ids

    def decode(self, ids: list[int]) -> str:
        known = range(self.FIRST_ID, self.FIRST_ID + len(self._strs))
        return " ".join(self._strs[i - self.FIRST_ID] if i in known else f"<|{i}|>" for i in ids)


def tokenize(config: SimulatorConfig, vocabulary: Vocabulary, body: dict[str, Any]) -> bytes:
    """The body of POST /tokenize: {"prompt"} or {"messages"} (RequestError if refused)."""
    validation.check_model(body, config.model)
    if "messages" in body:
        messages = body["messages"]
        if not isinstance(messages, list):
            raise validation.validation_errors(
                [validation.wrong_type("body.messages", messages, list)]
            )
        strs = chat_token_strs(messages)
    else:
        prompt = body.get("prompt")
        if prompt is None:
            raise validation.validation_errors([validation.missing("body.prompt", body)])
        if not isinstance(prompt, str):
            raise validation.validation_errors([validation.wrong_type("body.prompt", prompt, str)])
        strs = prompt.split()
    return orjson.dumps(
        {
            "count": len(strs),
            "max_model_len": config.max_model_len,
            "tokens": vocabulary.encode(strs),
            "token_strs": strs if body.get("return_token_strs") is True else None,
        }
    )


def detokenize(config: SimulatorConfig, vocabulary: Vocabulary, body: dict[str, Any]) -> bytes:
    """The body of POST /detokenize: {"tokens": [...]} -> {"prompt": "..."}."""
    validation.check_model(body, config.model)
    tokens = body.get("tokens")
    if tokens is None:
        raise validation.validation_errors([validation.missing("body.tokens", body)])
    if not isinstance(tokens, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in tokens
    ):
        raise validation.validation_errors(
            [
                validation.validation_detail(
                    "list_type", "body.tokens", "Input should be a valid list of integers", tokens
                )
            ]
        )
    return orjson.dumps({"prompt": vocabulary.decode(tokens)})
