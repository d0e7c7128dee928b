"""PHP's JSON model, checked against real PHP where PHP is installed, and as tables."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.api import php, requires_php

from clinica_asterisk.api import php_json
from clinica_asterisk.api.signature import signed_text

# One JSON document a line, each meant to trip one difference between PHP and Python.
DOCUMENTS = [
    r'{"generalCallID":[744924436]}',
    r'{"b":"x/y","a":"Врач","c":{"z":1,"y":[]}}',
    r'{"e":{},"l":[],"o":{"0":"a","1":"b"},"p":{"1":"a"},"q":{"0":"a","2":"b"},"r":{"1":"b","0":"a"}}',
    r'{"f":[1.5,10.0,1e25,1e16,1e17,0.0001,0.00001,-0.0,5e-324,1.7976931348623157e308,123456789012345.6,0.1,2.5e-7,1E2]}',
    r'{"i":[9223372036854775807,9223372036854775808,-9223372036854775808,-9223372036854775809,12345678901234567890,-0]}',
    r'{"10":1,"9":1,"a":1,"B":1,"1.5":1," 5":1,"5 ":1,"07":1,"1e3":1,"_":1,"Я":1,"-1":1,"0":1,"-0":1,"":1,"9223372036854775808":1,"1.":1,".5":1,"+3":1}',
    r'{"s":"\u0000\u001f\u007f\"\\\/\b\f\n\r\t😀\u2028é \u00ad \\u007f \\\u007f"}',
    r'{"a":1,"b":2,"a":3}',
    r'{"x":true,"y":false,"z":null,"n":[{"b":1,"a":{}},[],{"0":{}}]}',
    r'{"1":"b","0":"a"}',
    r'{"0":"a","1":"b"}',
    r'{}',
]


def ours(document: str) -> str:
    return signed_text(php_json.decode(document))


def transitive(keys) -> bool:
    """PHP's key comparison is not transitive for some mixes ("10x" < "9" < 10 < "10x"); PHP's
    order then depends on its sort algorithm, and no Binotel method has such keys."""
    php_keys = [k if isinstance(k, int) else php_json.php_key(k) for k in keys]
    ordered = [k for k, _ in php_json.ksort((k, None) for k in php_keys)]
    return all(php_json.compare_keys(a, b) <= 0 for i, a in enumerate(ordered) for b in ordered[i:])


@requires_php
def test_signed_text_is_what_php_encodes_after_decoding_and_ksort():
    expected = php("roundtrip", stdin="\n".join(DOCUMENTS)).splitlines()
    assert len(expected) == len(DOCUMENTS)
    for document, php_text in zip(DOCUMENTS, expected):
        assert transitive(php_json.decode(document)), document
        assert ours(document) == php_text, document


@requires_php
def test_ksort_orders_mixed_keys_as_php_does():
    keys = ["b", "10", "9", "a", "B", "1.5", "-1", "07", " 5", "1e3", "_", "Я", "5 ", "0", "x10", "", "+3", ".5"]
    assert transitive(keys)
    document = "{" + ",".join(f'"{k}":0' for k in keys) + "}"
    php_order = php("roundtrip", stdin=document).strip()
    assert ours(document) == php_order


@pytest.mark.parametrize("number, text", [
    (10.0, "10"), (1.5, "1.5"), (1e25, "1.0e+25"), (1e15, "1000000000000000"), (1e16, "10000000000000000"),
    (1e17, "1.0e+17"), (0.0001, "0.0001"), (0.00001, "1.0e-5"), (-0.0, "-0"), (0.0, "0"),
    (5e-324, "5.0e-324"), (1.7976931348623157e308, "1.7976931348623157e+308"), (-1.5e-7, "-1.5e-7"),
    (1234567890123456.7, "1234567890123456.8"), (2.5e20, "2.5e+20"), (0.1, "0.1"), (100.0, "100"),
])
def test_floats_are_written_in_php_notation(number, text):
    assert php_json.php_float(number) == text


def test_nan_and_infinity_cannot_be_encoded():
    for number in (math.nan, math.inf, -math.inf):
        with pytest.raises(php_json.JsonError):
            php_json.php_float(number)


@pytest.mark.parametrize("a, b, sign", [
    (1, 2, -1), ("10", "9", 1), ("a", "B", 1), (9, "10", -1), ("1e3", 10, 1), (5, "a", -1),
    ("07", 9, -1), ("1.5", "1.50", 0), (" 5", "5 ", 0), ("abc", "abd", -1), ("Я", "z", 1), (-1, 0, -1),
])
def test_key_comparison_follows_php_8(a, b, sign):
    assert php_json.compare_keys(a, b) == sign
    assert php_json.compare_keys(b, a) == -sign


def test_a_non_transitive_key_mix_is_recognised():
    assert not transitive(["10x", "9", "10"])


@pytest.mark.parametrize("key, stored", [
    ("7", 7), ("-3", -3), ("0", 0), ("07", "07"), ("-0", "-0"), ("1.0", "1.0"), (" 1", " 1"),
    ("9223372036854775807", 9223372036854775807), ("9223372036854775808", "9223372036854775808"), ("", ""),
])
def test_canonical_integer_keys_become_integers(key, stored):
    assert php_json.php_key(key) == stored


def test_empty_object_is_written_as_a_list_only_in_the_php_model():
    value = php_json.decode('{"a":{},"b":{"0":"x"},"c":{"k":[]}}')
    assert php_json.encode(php_json.php_array(value)) == '{"a":[],"b":["x"],"c":{"k":[]}}'
    assert php_json.encode(value, php_arrays=False) == '{"a":{},"b":{"0":"x"},"c":{"k":[]}}'


def test_escapes_can_be_left_out_for_lenient_checks():
    value = {"a": "x/Ж😀"}
    assert php_json.encode(value) == '{"a":"x\\/\\u0416\\ud83d\\ude00"}'
    assert php_json.encode(value, escape_slashes=False) == '{"a":"x/\\u0416\\ud83d\\ude00"}'
    assert php_json.encode(value, escape_unicode=False) == '{"a":"x\\/Ж😀"}'


def test_del_is_written_as_is_and_an_escaped_backslash_before_it_survives():
    assert php_json.php_string("a\x7fb") == '"a\x7fb"'
    assert php_json.php_string("\\u007f") == '"\\\\u007f"'
    assert php_json.php_string("\\\x7f\x7f") == '"\\\\\x7f\x7f"'


@pytest.mark.parametrize("text", [
    b"{bad", b"", b"NaN", b'{"a":NaN}', b'{"a":Infinity}', b'{"a":"\\ud800"}', b'{"\\udc00":1}',
    b"\xff\xfe{}", b"[" * 600 + b"]" * 600, b'{"a":' + b"9" * 5000 + b"}",
])
def test_what_php_would_not_decode_is_refused(text):
    with pytest.raises(php_json.JsonError):
        php_json.decode(text)


def test_a_key_written_twice_keeps_its_place_and_its_last_value():
    assert list(php_json.decode('{"a":1,"b":2,"a":3}').items()) == [("a", 3), ("b", 2)]


def test_integers_beyond_64_bits_are_floats_in_php():
    assert php_json.php_array([2 ** 63, -(2 ** 63), 2 ** 63 - 1]) == [float(2 ** 63), -(2 ** 63), 2 ** 63 - 1]


@pytest.mark.parametrize("php_arrays", [True, False])
@pytest.mark.parametrize("slashes, unicode", [(True, True), (False, True), (True, False), (False, False)])
def test_the_fast_writer_and_the_php_float_writer_agree(php_arrays, slashes, unicode):
    for document in DOCUMENTS:
        value = php_json.decode(document)
        parts = []
        php_json._encode(value, parts, slashes, unicode, php_arrays, 1)
        assert php_json.encode(value, slashes, unicode, php_arrays) == "".join(parts), document


# Values that trip the one-pass writer's checks and escapes: empty and list-like objects,
# floats, integers near and beyond 64 bits; DEL, "/", controls, astral characters and lone
# surrogates in strings and keys.
_any_char = st.characters(codec=None, exclude_categories=())
_edgy_keys = st.sampled_from(["0", "1", "2", "-0", "07", "a/b", "\x7f", "Я", ""]) | st.text(_any_char, max_size=4)
_edgy_leaves = (st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False)
                | st.sampled_from([0, -1, 2 ** 63 - 1, 2 ** 63, -(2 ** 63), -(2 ** 63) - 1, 10 ** 19])
                | st.integers() | st.sampled_from(["/", "\x7f", "\\u007f", '"', "Ж😀", "\ud800", "\x00\x1f\u2028"])
                | st.text(_any_char, max_size=6))
_edgy_values = st.recursive(_edgy_leaves, lambda inner: st.lists(inner, max_size=4)
                            | st.dictionaries(_edgy_keys, inner, max_size=4), max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(_edgy_values, st.booleans(), st.booleans(), st.booleans())
def test_the_one_pass_writer_writes_what_the_php_writer_writes(value, php_arrays, slashes, unicode):
    parts = []
    php_json._encode(value, parts, slashes, unicode, php_arrays, 1)
    assert php_json.encode(value, slashes, unicode, php_arrays) == "".join(parts)
    model = php_json.php_array(value)
    parts = []
    php_json._encode(model, parts, slashes, unicode, php_arrays, 1)
    assert php_json.encode(model, slashes, unicode, php_arrays) == "".join(parts)


def test_a_document_nested_as_deep_as_php_decodes_is_written():
    document = "[" * php_json.MAX_DEPTH + "]" * php_json.MAX_DEPTH
    assert php_json.encode(php_json.decode(document)) == document

