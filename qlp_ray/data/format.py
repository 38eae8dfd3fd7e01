"""Prompt template shared by training and serving (minimal; extended by the data work)."""

from __future__ import annotations


def format_prompt(instruction: str, input: str = "") -> str:
    if input:
        return f"### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    return f"### Instruction:\n{instruction}\n\n### Response:\n"
