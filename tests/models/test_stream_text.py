"""TextDeltas: streamed deltas add up to the final text, cut before a stop string."""

from __future__ import annotations

import pytest

from qlp_ray.models.stream_text import TextDeltas, cut_at_stop, stable_length


@pytest.mark.parametrize(
    ("text", "stops", "want"),
    [
        ("hello world", (), ("hello world", False)),
        ("hello\n\nworld", ("\n\n",), ("hello", True)),
        ("a STOP b END c", ("END", "STOP"), ("a ", True)),  # the earliest, whichever listed first
        ("no stop here", ("zz",), ("no stop here", False)),
    ],
)
def test_cut_at_stop(text, stops, want):
    assert cut_at_stop(text, stops) == want


@pytest.mark.parametrize(
    ("text", "stops", "stable"),
    [
        ("hello", (), 5),
        ("hello\n", ("\n\n",), 5),  # "\n" may start the stop string: held back
        ("hello\nx", ("\n\n",), 7),  # ... until the text shows it does not
        ("abEN", ("END",), 2),  # the longest tail that begins a stop
        ("abE", ("END", "EX"), 2),
        ("ab\n\ncd", ("\n\n",), 2),  # after a whole stop string: nothing more is final
        ("caf\ufffd", (), 3),  # half a character waits for its next token
    ],
)
def test_stable_length(text, stops, stable):
    assert stable_length(text, stops) == stable


def _decoder(pieces: dict[int, str]):
    return lambda ids: "".join(pieces[i] for i in ids)


def test_deltas_add_up_to_the_final_text_and_hold_back_stop_prefixes():
    pieces = {1: "Hel", 2: "lo", 3: " wor", 4: "ld", 5: "\n", 6: "\n", 7: "more"}
    deltas = TextDeltas(_decoder(pieces), stops=("\n\n",))
    got = [deltas.push(t) for t in (1, 2, 3, 4, 5, 6)]
    assert got == ["Hel", "lo", " wor", "ld", "", ""]  # neither "\n" leaves before the verdict
    final = "Hello world"  # what the backend returns: cut before "\n\n"
    assert deltas.finish(final) == ""
    assert deltas.sent == final


def test_a_false_alarm_is_released_with_the_next_token():
    pieces = {1: "a", 2: "\n", 3: "b"}
    deltas = TextDeltas(_decoder(pieces), stops=("\n\n",))
    assert [deltas.push(t) for t in (1, 2, 3)] == ["a", "", "\nb"]
    assert deltas.finish("a\nb") == ""


def test_multibyte_character_split_over_tokens():
    # a byte-level tokenizer decodes half of "é" as U+FFFD until the other half comes
    pieces = {1: "caf", 2: "\ufffd"}
    decode = lambda ids: "café" if ids == [1, 2, 3] else _decoder(pieces)(ids)  # noqa: E731
    deltas = TextDeltas(decode)
    assert [deltas.push(t) for t in (1, 2, 3)] == ["caf", "", "é"]


def test_finish_sends_the_rest_when_the_final_text_is_longer():
    deltas = TextDeltas(_decoder({1: "ab"}))
    assert deltas.push(1) == "ab"
    assert deltas.finish("abcd") == "cd"


def test_the_tiny_models_byte_level_tokenizer_streams_its_exact_text():
    from qlp_ray.models.tiny import corpus_texts, train_tokenizer

    tok = train_tokenizer(corpus_texts()[:20], vocab_size=300)
    text = "Café déjà vu: 日本語 ✓ and\n\nmore text after a blank line"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text) // 2  # multi-byte characters span several tokens
    decode = lambda t: tok.decode(t, skip_special_tokens=True)  # noqa: E731
    deltas = TextDeltas(decode, stops=("\n\n",))
    streamed = "".join(deltas.push(t) for t in ids)
    final = "Café déjà vu: 日本語 ✓ and"  # what the backend returns: cut before the stop
    assert "\ufffd" not in streamed and final.startswith(streamed)
    assert streamed + deltas.finish(final) == final
