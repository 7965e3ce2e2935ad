"""Prompt templates: the tokenizer's chat template when it has one, a plain completion template otherwise.

Both ask for the final answer in `\\boxed{}` (the chat one also to reason step by step), so the
reward's boxed-answer extraction applies to either. The plain template is also what the tiny bootstrap model is
warmed up on, so RL on CPU sees exactly the text the model was trained with.
"""

from __future__ import annotations

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
# Short on purpose: with the tiny models' character tokenizer every character is a token.
PLAIN_TEMPLATE = "Question: {problem}\nPut the final answer in \\boxed{}.\nAnswer:"
TEMPLATES = ("auto", "chat", "plain")


def has_chat_template(tokenizer) -> bool:
    """Whether `tokenizer` (a transformers tokenizer or None) defines a chat template."""
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def build_prompt(problem: str, tokenizer=None, template: str = "auto") -> str:
    """The prompt text for one problem.

    template: "chat" (the tokenizer's chat template, one user turn, generation prompt appended; error
    if it has none), "plain" (`PLAIN_TEMPLATE`), or "auto" (chat when available, else plain).
    """
    if template not in TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; valid: {list(TEMPLATES)}")
    if template == "auto":
        template = "chat" if has_chat_template(tokenizer) else "plain"
    if template == "plain":
        return PLAIN_TEMPLATE.replace("{problem}", problem.strip())
    if not has_chat_template(tokenizer):
        raise ValueError(
            "prompt template 'chat' requested but the tokenizer has no chat_template; "
            "use data.prompt_template: plain (or auto)"
        )
    messages = [{"role": "user", "content": f"{problem.strip()}\n{INSTRUCTION}"}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
