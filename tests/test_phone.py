import pytest

from clinica_asterisk.calls.phone import digits_of, normalize


@pytest.mark.parametrize("raw, expected", [
    ("0670219424", "0670219424"),
    ("+380670219424", "+380670219424"),
    ("+38 (067) 021-94-24", "+380670219424"),
    ('"Room 5" <0670219424>', "0670219424"),
    ("", ""),
    ("unknown", ""),
    ("Anonymous", ""),
    ("Клієнт", ""),
    ("1" * 500, "1" * 20),
    ("801\r\nAction: Originate", "801"),
])
def test_digits_of_caller_id(raw, expected):
    assert digits_of(raw) == expected


@pytest.mark.parametrize("raw, national, e164", [
    ("0670219424", "0670219424", "+380670219424"),
    ("+380670219424", "0670219424", "+380670219424"),
    ("380670219424", "0670219424", "+380670219424"),
    ("00380670219424", "0670219424", "+380670219424"),
    ("+4930123456", "+4930123456", "+4930123456"),   # foreign: only E.164 is unambiguous
    ("801", "801", "801"),                             # an extension is never touched
    ("112", "112", "112"),
    ("", "", ""),
])
def test_normalize_national_and_e164(raw, national, e164):
    assert normalize(raw, "national", "380", "0") == national
    assert normalize(raw, "e164", "380", "0") == e164


def test_raw_keeps_digits_as_received():
    assert normalize("+380 67 021 94 24", "raw") == "+380670219424"


def test_other_country_with_its_own_trunk_prefix():
    assert normalize("+74951234567", "national", "7", "8") == "84951234567"
    assert normalize("84951234567", "e164", "7", "8") == "+74951234567"
