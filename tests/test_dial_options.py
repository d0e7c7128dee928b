import pytest

from clinica_asterisk.calls.dial_options import split_options, with_answer_routine


def test_split_keeps_arguments_and_nesting():
    assert split_options("HhtrU(a^b)IL(60000:30000)b(x^s^1(y))") == [
        "H", "h", "t", "r", "U(a^b)", "I", "L(60000:30000)", "b(x^s^1(y))"]


@pytest.mark.parametrize("options, expected", [
    ("HhTtr", "HhTtrU(clinica-answer^801^ext)"),
    ("HhtrU(macro-auto-blkvm)I", "HhtrIU(clinica-answer^801^ext^macro-auto-blkvm)"),
    ("HhtrU(macro-auto-blkvm)U(macro-auto-blkvm)I", "HhtrIU(clinica-answer^801^ext^macro-auto-blkvm)"),
    ("HhU(macro-confirm^a^b)", "HhU(clinica-answer^801^ext^macro-confirm^a^b)"),
    ("", "U(clinica-answer^801^ext)"),
])
def test_our_routine_replaces_and_chains_the_displaced_one(options, expected):
    assert with_answer_routine(options, "801", "ext") == expected


def test_adding_twice_changes_nothing():
    once = with_answer_routine("HhtrU(macro-auto-blkvm)", "801", "ext")
    assert with_answer_routine(once, "802", "ext") == once


@pytest.mark.parametrize("who, leg", [("801)G(evil", "ext"), ("", "ext"), ("801", "other")])
def test_nothing_but_digits_and_a_known_leg_reaches_the_options(who, leg):
    assert with_answer_routine("HhTtr", who, leg) == "HhTtr"
