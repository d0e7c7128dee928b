"""Static checks of dialplan/extensions_clinica.conf: what Asterisk's loader and the
handlers rely on (no live Asterisk here: it is run against one before each release)."""

import re
from pathlib import Path

import pytest

from clinica_asterisk.calls.dial_options import ANSWER_ROUTINE
from clinica_asterisk.hooks.stages import HANDLERS

DIALPLAN = Path(__file__).resolve().parent.parent / "dialplan" / "extensions_clinica.conf"

# Applications this file may use: all exist from Asterisk 16 to 22, except MacroExit
# (gone in 21+), which may only run behind a MACRO_DEPTH check.
APPLICATIONS = {"Gosub", "Goto", "GotoIf", "ExecIf", "Set", "AGI", "Return", "NoOp"}
FREEPBX_CONTEXTS = {"ext-did", "ext-did-post-custom", "from-did-direct", "ext-did-catchall"}
FREEPBX_HOOKS = {"from-pstn-custom", "macro-dialout-one-predial-hook", "macro-dial-ringall-predial-hook",
                 "macro-dial-hunt-predial-hook", "macro-dialout-trunk-predial-hook"}


def parse(text):
    """{context: {"includes": [...], "extens": {exten: [(priority, label, app, data)]}}}"""
    contexts, context, exten = {}, None, None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            assert line.endswith("]"), f"line {number}: {raw}"
            context = contexts.setdefault(line[1:-1], {"includes": [], "extens": {}})
            exten = None
            continue
        assert context is not None, f"line {number}: outside a context"
        key, _, value = (part.strip() for part in line.partition("=>"))
        if key == "include":
            context["includes"].append(value)
            continue
        if key == "exten":
            exten, priority, step = (p.strip() for p in value.split(",", 2))
            assert priority == "1", f"line {number}: an extension starts at priority 1"
        else:
            assert key == "same" and exten is not None, f"line {number}: 'same' without an extension"
            priority, step = (p.strip() for p in value.split(",", 1))
        label = None
        m = re.match(r"n\((?P<label>[\w-]+)\)$", priority)
        if m:
            label = m["label"]
        app, paren, data = step.partition("(")
        assert paren and data.endswith(")"), f"line {number}: {step}"
        data = data[:-1]
        assert data.count("(") == data.count(")"), f"line {number}: unbalanced ()"
        assert data.count("${") == data.count("}"), f"line {number}: unbalanced ${{}}"
        context["extens"].setdefault(exten, []).append((priority, label, app, data))
    return contexts


CONTEXTS = parse(DIALPLAN.read_text())


def steps():
    for name, context in CONTEXTS.items():
        for exten, lines in context["extens"].items():
            for priority, label, app, data in lines:
                yield name, exten, app, data, [l for _, l, _, _ in lines if l]


def test_only_known_applications():
    for name, exten, app, data, _ in steps():
        assert app in APPLICATIONS, (name, exten, app)
        assert "Macro(" not in data, "app_macro is gone in Asterisk 21+"
        if "MacroExit" in data:
            assert app == "ExecIf" and "MACRO_DEPTH" in data, (name, exten)


def test_every_gosub_and_goto_lands_somewhere():
    for name, exten, app, data, labels in steps():
        for target in re.findall(r"(?:Gosub|Goto)\(([^()]*)", f"{app}({data})"):
            parts = [p.strip() for p in target.split(",")]
            if parts[0].startswith("${"):
                continue  # the routine FreePBX had in U()
            if len(parts) == 1:
                assert parts[0] in labels, (name, exten, parts)
                continue
            context, ext = parts[0], parts[1]
            assert context in CONTEXTS, (name, exten, target)
            extens = CONTEXTS[context]["extens"]
            if set(CONTEXTS[context]["includes"]) == FREEPBX_CONTEXTS:
                continue  # FreePBX's DID routing finds the extension
            assert ext in extens or (ext.startswith("${") and any(e.startswith("_") for e in extens)), target


def test_gotoif_labels_exist():
    for name, exten, app, data, labels in steps():
        if app == "GotoIf":
            for label in re.split(r"[:]", data.split("?", 1)[1]):
                assert label in labels, (name, exten, label)


def test_every_stage_the_dialplan_runs_has_a_handler():
    used = set(re.findall(r"run,1\(([\w-]+)", DIALPLAN.read_text()))
    assert used == set(HANDLERS)


def test_freepbx_hook_points_and_answer_routine_are_defined():
    assert FREEPBX_HOOKS | {ANSWER_ROUTINE, "clinica-push", "clinica-hangup"} <= set(CONTEXTS)
    assert CONTEXTS["from-pstn-custom"]["includes"] == ["clinica-push"]
    assert set(CONTEXTS["clinica-from-pstn"]["includes"]) == FREEPBX_CONTEXTS


@pytest.mark.parametrize("hook", sorted(FREEPBX_HOOKS - {"from-pstn-custom"}))
def test_predial_hooks_end_as_they_were_entered(hook):
    last_two = [app for _, _, app, _ in CONTEXTS[hook]["extens"]["s"][-2:]]
    assert last_two == ["ExecIf", "Return"]


def test_hangup_is_armed_by_a_handler_not_an_h_extension():
    assert not any("h" in c["extens"] for c in CONTEXTS.values())
    assert DIALPLAN.read_text().count("CHANNEL(hangup_handler_push)=clinica-hangup,s,1(") == 2


def test_a_context_freepbx_includes_answers_only_to_the_calls_it_is_there_for():
    # [from-pstn-custom] includes [clinica-push]: every extension there can be dialled by a
    # trunk call (a DID spelled "run" would run it), so it holds only what takes a call in.
    included = {c for context in CONTEXTS.values() for c in context["includes"]} & set(CONTEXTS)
    for name in included:
        assert set(CONTEXTS[name]["extens"]) <= {"_[+0-9].", "s"}, name
