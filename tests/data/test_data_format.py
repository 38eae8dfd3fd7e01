"""Prompt format: one template for training and serving, chat validation, routing text."""

from __future__ import annotations

import pytest

from qlp_ray.core.errors import InvalidRequest
from qlp_ray.data.capsules import Capsule, load_capsules, sample_path
from qlp_ray.data.format import chat_to_prompt, routing_text, to_prompt_completion
from qlp_ray.models.prompt import RESPONSE_MARKER, format_prompt, parse_prompt


def test_format_prompt_layout_with_and_without_input() -> None:
    assert format_prompt("Do X") == "### Instruction:\nDo X\n\n### Response:\n"
    assert format_prompt(" Do X ", "ctx") == (
        "### Instruction:\nDo X\n\n### Input:\nctx\n\n### Response:\n"
    )


@pytest.mark.parametrize("bad", ["", "   ", None, 3])
def test_format_prompt_rejects_empty_instruction(bad: object) -> None:
    with pytest.raises(InvalidRequest, match="instruction"):
        format_prompt(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("domain", ["api", "ml"])
def test_round_trip_over_bundled_capsules(domain: str) -> None:
    for cap in load_capsules(sample_path(domain, "heldout")):
        pair = to_prompt_completion(cap)
        assert pair["prompt"].endswith(RESPONSE_MARKER)
        assert parse_prompt(pair["prompt"]) == (cap.instruction, cap.input)
        assert pair["completion"] == cap.output
        assert not pair["completion"].endswith("\n")
        assert routing_text(pair["prompt"]) == cap.instruction
        assert routing_text(cap) == cap.instruction


def test_to_prompt_completion_accepts_dict_and_strips_output() -> None:
    pair = to_prompt_completion({"instruction": "Q", "output": " A\n", "domain": "api"})
    assert pair == {"prompt": format_prompt("Q"), "completion": "A"}
    with pytest.raises(InvalidRequest, match="output"):
        to_prompt_completion({"instruction": "Q", "domain": "api"})


def test_parse_prompt_returns_none_for_free_text() -> None:
    assert parse_prompt("just some text") is None


def test_chat_to_prompt_uses_last_user_message_and_keeps_context() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": [{"type": "text", "text": "Tune my Spark job"}]},
    ]
    prompt = chat_to_prompt(messages)
    assert parse_prompt(prompt) == ("Tune my Spark job", "Be brief.\nuser: Hi\nassistant: Hello")
    assert routing_text(messages) == "Tune my Spark job"
    assert routing_text({"messages": messages}) == "Tune my Spark job"
    assert chat_to_prompt([{"role": "user", "content": "Q"}]) == format_prompt("Q")


@pytest.mark.parametrize(
    ("messages", "needle"),
    [
        ([], "non-empty list"),
        ("hello", "non-empty list"),
        (["hello"], r"messages\[0\] must be an object"),
        ([{"role": "tool", "content": "x"}], r"messages\[0\].role must be one of"),
        ([{"content": "x"}], r"role must be one of .* got None"),
        ([{"role": "user", "content": 5}], r"messages\[0\].content must be a string"),
        ([{"role": "user"}], r"messages\[0\].content must be a string"),
        ([{"role": "user", "content": [{"type": "image_url"}]}], "only text parts"),
        ([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], "last message"),
        ([{"role": "user", "content": "  "}], "empty"),
    ],
)
def test_chat_validation_errors(messages: object, needle: str) -> None:
    with pytest.raises(InvalidRequest, match=needle):
        chat_to_prompt(messages)


def test_routing_text_variants() -> None:
    assert routing_text("  raw prompt ") == "raw prompt"
    assert routing_text({"prompt": "p"}) == "p"
    assert routing_text({"instruction": "i", "input": "ignored"}) == "i"
    assert routing_text(Capsule(instruction="c", output="o", domain="api")) == "c"
    with pytest.raises(InvalidRequest):
        routing_text("   ")
    with pytest.raises(InvalidRequest):
        routing_text({"foo": 1})
