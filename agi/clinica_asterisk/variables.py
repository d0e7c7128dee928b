"""The names our dialplan, hooks and API share with Asterisk: channel variables and
contexts.  Defined here once; everything else imports them (a leaf: it imports nothing)."""

# The call's id in our store, inherited by every later leg ("__" when set).
CALLID_VARIABLE = "CLINICA_CALLID"
# How the hook went, for the dialplan: SENT, QUEUED, SKIPPED, FAILED, NOTFOUND.
STATUS_VARIABLE = "CLINICA_STATUS"
# The dialplan's hangup handler context.
HANGUP_HANDLER = "clinica-hangup"
# The call's linkedid, frozen by the dialplan when the call enters (a bridge can change the
# live one).
LINKEDID_VARIABLE = "CLINICA_LINKEDID"
# Where a hangup handler goes on a channel (CHANNEL(hangup_handler_push)=<context>,s,1(…)).
HANGUP_HANDLER_PUSH = "CHANNEL(hangup_handler_push)"
# FreePBX's Dial argument for a ring group's members (core's dialparties): the answer
# routine goes into its options.
GROUP_DIAL_STRING = "ds"
