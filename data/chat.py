"""The Llama 2 chat format used by Code Llama - Instruct (paper §2.5; docs/recipe.md#instruction-fine-tuning),
token for token as Meta's reference `chat_completion` (codellama/llama/generation.py) builds it:

    finished turn:  Enc("[INST] {user.strip()} [/INST] {answer.strip()} ", bos=True, eos=True)
    last user turn: Enc("[INST] {user.strip()} [/INST]", bos=True)

With a system prompt (the first message with role "system", or the `system` argument), the first user
content becomes "<<SYS>>\n{system}\n<</SYS>>\n\n{user}" before that strip: the system text is kept as given
(no strip, an empty one keeps its empty block), the first user message keeps its leading whitespace, and
only the whole content's trailing whitespace goes. Other user messages and every answer are stripped at both
ends; the answer is followed by one space before </s>, which the model is trained to write.

Training encodes each finished turn in one piece, as the reference does, so the tokens are the reference's;
the loss mask is 1 from the first token after the inference prompt Enc("[INST] … [/INST]", bos=True), which
is a prefix of the turn's tokens (no SentencePiece piece spans "]" and the space after it; when a tokenizer
breaks that, the mask starts where the two encodings first differ).
"""
from __future__ import annotations

from typing import Mapping, Sequence

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


def _split_system(messages: Sequence[Mapping], system: str | None) -> tuple[str | None, list[Mapping]]:
    messages = list(messages)
    if messages and messages[0].get("role") == "system":
        if system is not None:
            raise ValueError("a system prompt was given both as an argument and as the first message")
        system, messages = messages[0]["content"], messages[1:]
    return system, messages


def _check_roles(messages: Sequence[Mapping], end_with: str) -> None:
    roles = [m.get("role") for m in messages]
    n = len(roles)
    expected = (["user", "assistant"] * (n // 2 + 1))[:n]
    if not roles or roles != expected or roles[-1] != end_with:
        raise ValueError(f"messages must alternate user/assistant (after an optional system message) and end with "
                         f"{end_with!r}; got roles {roles}")
    for m in messages:
        if not isinstance(m.get("content"), str):
            raise ValueError(f"message content must be a string, got {type(m.get('content')).__name__}")


def _user_text(content: str, system: str | None, first: bool) -> str:
    if first and system is not None:
        content = B_SYS + system + E_SYS + content
    return f"{B_INST} {content.strip()} {E_INST}"


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def encode_dialog(tokenizer, messages: Sequence[Mapping], system: str | None = None) -> tuple[list[int], list[int]]:
    """Training tokens of a dialog (the reference's) and its loss mask: 1 exactly on what the model writes after
    each turn's prompt (the answer, its trailing space and </s>)."""
    system, messages = _split_system(messages, system)
    _check_roles(messages, end_with="assistant")
    tokens, mask = [], []
    for i in range(0, len(messages), 2):
        user = _user_text(messages[i]["content"], system, i == 0)
        turn = tokenizer.encode(f"{user} {messages[i + 1]['content'].strip()} ", bos=True, eos=True)
        prompt_length = _common_prefix(turn, tokenizer.encode(user, bos=True))
        tokens += turn
        mask += [0] * prompt_length + [1] * (len(turn) - prompt_length)
    return tokens, mask


def encode_dialog_prompt(tokenizer, messages: Sequence[Mapping], system: str | None = None) -> list[int]:
    """Inference prompt: the earlier turns as in training, then Enc("[INST] {last user} [/INST]", bos=True)."""
    system, messages = _split_system(messages, system)
    _check_roles(messages, end_with="user")
    tokens = []
    if len(messages) > 1:
        tokens, _ = encode_dialog(tokenizer, messages[:-1], system)
    tokens += tokenizer.encode(_user_text(messages[-1]["content"], system, len(messages) == 1), bos=True)
    return tokens
