"""Our copy of FreePBX's [from-pstn] against the FreePBX 17- and 16-shaped dialplans of the
lab (tests/lab), read from their extensions.conf and from what Asterisk printed for them
(tests/fixtures/dialplan-show)."""

from pathlib import Path

import pytest

from clinica_asterisk.pbx.dialplan import Context, context_in_conf, context_in_listing, from_pstn_drift

TESTS = Path(__file__).resolve().parent
OURS = (TESTS.parent / "dialplan" / "extensions_clinica.conf").read_text()
SHOWN = TESTS / "fixtures" / "dialplan-show"
SHAPES = ["pbx17", "pbx16"]
FREEPBX_INCLUDES = ("from-pstn-custom", "ext-did", "ext-did-post-custom", "from-did-direct", "ext-did-catchall")


def lab(shape):
    return (TESTS / "lab" / shape / "extensions.conf").read_text()


@pytest.mark.parametrize("shape", SHAPES)
def test_the_lab_s_from_pstn_reads_the_same_from_its_file_and_from_asterisk(shape):
    in_file = context_in_conf(lab(shape), "from-pstn")
    assert in_file == Context(FREEPBX_INCLUDES)
    assert context_in_listing((SHOWN / f"{shape}-from-pstn.txt").read_text(), "from-pstn") == in_file
    ours = context_in_listing((SHOWN / f"{shape}-clinica-from-pstn.txt").read_text(), "clinica-from-pstn")
    assert ours == context_in_conf(OURS, "clinica-from-pstn")


@pytest.mark.parametrize("shape", SHAPES)
def test_our_copy_matches_freepbx_s_from_pstn(shape):
    assert from_pstn_drift(context_in_conf(lab(shape), "from-pstn"), context_in_conf(OURS, "clinica-from-pstn")) is None


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("change, words", [
    (lambda t: t.replace("include => ext-did-catchall\n", "include => ext-did-fax\ninclude => ext-did-catchall\n", 1),
     "includes ext-did, ext-did-post-custom, from-did-direct, ext-did-fax, ext-did-catchall but [clinica-from-pstn] "
     "ext-did, ext-did-post-custom, from-did-direct, ext-did-catchall"),
    (lambda t: t.replace("include => from-did-direct\n", "", 1),
     "includes ext-did, ext-did-post-custom, ext-did-catchall but"),
    (lambda t: t.replace("include => ext-did\ninclude => ext-did-post-custom\n",
                         "include => ext-did-post-custom\ninclude => ext-did\n", 1),
     "includes ext-did-post-custom, ext-did, from-did-direct, ext-did-catchall but"),
    (lambda t: t.replace("[from-pstn]\n", "[from-pstn]\nexten => _X.,1,NoOp(new in FreePBX)\n", 1),
     "FreePBX's [from-pstn] has extensions _X. but [clinica-from-pstn] none"),
])
def test_a_freepbx_update_to_from_pstn_is_named(shape, change, words):
    changed = change(lab(shape))
    assert changed != lab(shape)
    drift = from_pstn_drift(context_in_conf(changed, "from-pstn"), context_in_conf(OURS, "clinica-from-pstn"))
    assert drift is not None and words in drift


def test_a_context_asterisk_does_not_have_is_none():
    assert context_in_listing((SHOWN / "no-such-context.txt").read_text(), "clinica-from-pstn") is None
    assert context_in_conf("[other]\ninclude => x\n", "from-pstn") is None


def test_extensions_in_a_listing_are_read_with_their_priorities_left_out():
    listing = """[ Context 'from-pstn' created by 'pbx_config' ]
  '_X.' =>          1. NoOp(x)                                    [extensions.conf:3]
                    2. Goto(ext-did,${EXTEN},1)                   [extensions.conf:4]
  's' (CID match '0443') => 1. Hangup()                          [extensions.conf:5]
  Include =>        'ext-did'                                     [pbx_config]

-= 2 extensions (3 priorities) in 1 context. =-
"""
    assert context_in_listing(listing, "from-pstn") == Context(("ext-did",), frozenset({"_X.", "s"}))
