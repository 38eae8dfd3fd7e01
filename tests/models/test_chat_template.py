"""Chat prompts: the tokenizer's own chat template when it has one, else the built-in format."""

from __future__ import annotations

from transformers import AutoTokenizer

from qlp_ray.models.prompt import chat_template_prompt
from qlp_ray.route.embeddings import packaged_model_dir

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def test_a_tokenizer_with_a_template_renders_the_messages():
    tok = AutoTokenizer.from_pretrained(str(packaged_model_dir()))
    tok.chat_template = TEMPLATE
    assert chat_template_prompt(tok, MESSAGES) == "<|system|>Be brief.\n<|user|>Hi\n<|assistant|>"


def test_without_a_template_the_caller_keeps_its_prompt():
    from qlp_ray.models.tiny import corpus_texts, train_tokenizer

    # the built-in tiny model's tokenizer, built as build_tiny_model builds it: no template
    tok = train_tokenizer(corpus_texts()[:20], vocab_size=300)
    assert chat_template_prompt(tok, MESSAGES) is None
    assert chat_template_prompt(None, MESSAGES) is None
