"""Settings for tests: the embedded defaults, a data directory, and overrides."""

from clinica_asterisk.config import DEFAULTS, build_settings


def make_settings(data_dir, **overrides):
    values = dict(DEFAULTS)
    values["CLINICA_DATA_DIR"] = str(data_dir)
    # A test machine that is a FreePBX (with /etc/freepbx.conf) must not read its database.
    values["CLINICA_FREEPBX_DB"] = "off"
    values.update({f"CLINICA_{k.upper()}": str(v) for k, v in overrides.items()})
    if "answer_deadline_ms" not in overrides:
        # Tests compare exact outcomes: their answer hooks wait for the push like the others
        # (the short answer deadline has tests of its own).
        values["CLINICA_ANSWER_DEADLINE_MS"] = values["CLINICA_HOOK_DEADLINE_MS"]
    return build_settings(values)
