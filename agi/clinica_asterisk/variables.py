"""The names our dialplan, hooks and API share with Asterisk: channel variables and
contexts.  Defined here once; everything else imports them (a leaf: it imports nothing)."""

# The call's id in our store, inherited by every later leg ("__" when set).
CALLID_VARIABLE = "CLINICA_CALLID"
# How the hook went, for the dialplan: SENT, QUEUED, SKIPPED, FAILED, NOTFOUND.
STATUS_VARIABLE = "CLINICA_STATUS"
# The dialplan's hangup handler context.
HANGUP_HANDLER = "clinica-hangup"
