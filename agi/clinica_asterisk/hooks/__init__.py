"""The hooks: running a stage of a call (:mod:`.stages`; the stages themselves are the
table in :mod:`clinica_asterisk.calls.stages`), one session runner (:mod:`.session`), and
the two ways Asterisk runs it (:mod:`.script`, :mod:`.fastagi`)."""
