"""Static checks of dialplan/extensions_clinica.conf: what Asterisk's loader and the
handlers rely on (no live Asterisk here: it is run against one before each release)."""

import re
from pathlib import Path

import pytest

from clinica_asterisk.calls.dial_options import ANSWER_ROUTINE
from clinica_asterisk.calls.stages import STAGES

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


def _balanced(text, start):
    """The text from ``start`` up to the parenthesis that closes the one before it."""
    depth = 1
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    raise AssertionError(f"unbalanced: {text[start - 20:start + 40]}")


def _split_args(text):
    """Dialplan arguments: commas inside ${…} or (…) do not split."""
    args, depth, current = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            args.append(current)
            current = ""
            continue
        depth += {"(": 1, "{": 1, ")": -1, "}": -1}.get(ch, 0)
        current += ch
    return [*args, current]


def stage_runs():
    """Every ``Gosub(clinica-sub,run,1(<stage>,<arg>,…))``: (stage, [args])."""
    text = "\n".join(line.split(";", 1)[0] for line in DIALPLAN.read_text().splitlines())
    found = []
    for m in re.finditer(r"clinica-sub,run,1\(", text):
        stage, *args = _split_args(_balanced(text, m.end()))
        found.append((stage, args))
    return found


def test_the_dialplan_runs_every_stage_and_only_stages_that_exist():
    assert {stage for stage, _ in stage_runs()} == set(STAGES)


@pytest.mark.parametrize("stage, args", stage_runs(), ids=lambda v: v if isinstance(v, str) else ",".join(v))
def test_each_stage_gets_the_arguments_it_takes(stage, args):
    declared = STAGES[stage].args
    assert sum(a.required for a in declared) <= len(args) <= len(declared), (stage, args)
    for arg, value in zip(declared, args):
        if arg.choices and "${" not in value:
            assert value in arg.choices, (stage, arg.name, value)


def test_the_run_helper_passes_as_many_arguments_as_the_longest_stage_takes():
    agi = next(data for _, _, app, data, _ in steps() if app == "AGI")
    passed = len(re.findall(r"\$\{ARG\d\}", agi)) - 1  # ARG1 is the stage
    assert passed == max(len(stage.args) for stage in STAGES.values())


def test_the_hangup_handler_is_armed_with_a_direction_the_hangup_stage_takes():
    directions = re.findall(r"hangup_handler_push\)=clinica-hangup,s,1\((\w+)\)", DIALPLAN.read_text())
    assert directions and set(directions) <= set(STAGES["hangup"].args[0].choices)
    assert ("hangup", ["${ARG1}"]) in stage_runs()  # [clinica-hangup] hands it on


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
