"""The Llama 2 chat format used by Code Llama - Instruct (RECIPE.md §6).

Each user/assistant pair is one turn:  <s> Enc("[INST] {user} [/INST]") Enc("{answer}") </s>
with an optional system prompt inside the first user turn as "<<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user}".
Contents are stripped, as in the reference chat code.

The prompt and the answer are encoded separately (the reference encodes "[INST] u [/INST] a " in one
piece): the training tokens then end the prompt exactly where an inference prompt built by
`encode_dialog_prompt` ends, and the answer tokens are exactly the tokens the model must generate,
so the loss mask is exact. SentencePiece's implicit leading space on Enc(answer) stands for the
space after "[/INST]". The reference's trailing space after the answer is not encoded: generation
stops at EOS, which is trained.
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
    content = content.strip()
    if first and system is not None and system.strip():
        content = B_SYS + system.strip() + E_SYS + content
    return f"{B_INST} {content} {E_INST}"


def encode_dialog(tokenizer, messages: Sequence[Mapping], system: str | None = None) -> tuple[list[int], list[int]]:
    """Training tokens of a dialog and its loss mask: 1 exactly on answer tokens and their EOS."""
    system, messages = _split_system(messages, system)
    _check_roles(messages, end_with="assistant")
    tokens, mask = [], []
    for i in range(0, len(messages), 2):
        prompt = tokenizer.encode(_user_text(messages[i]["content"], system, i == 0), bos=True)
        answer = tokenizer.encode(messages[i + 1]["content"].strip(), eos=True)
        tokens += prompt + answer
        mask += [0] * len(prompt) + [1] * len(answer)
    return tokens, mask


def encode_dialog_prompt(tokenizer, messages: Sequence[Mapping], system: str | None = None) -> list[int]:
    """Inference prompt: the earlier turns as in training, then <s> Enc("[INST] {last user} [/INST]")."""
    system, messages = _split_system(messages, system)
    _check_roles(messages, end_with="user")
    tokens = []
    if len(messages) > 1:
        tokens, _ = encode_dialog(tokenizer, messages[:-1], system)
    tokens += tokenizer.encode(_user_text(messages[-1]["content"], system, len(messages) == 1), bos=True)
    return tokens
