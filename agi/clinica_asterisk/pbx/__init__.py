"""Talking to the PBX itself: the Asterisk Manager Interface (:mod:`.ami`), the live
channels it lists (:mod:`.channels`) and what dialplan listings say (:mod:`.dialplan`).
A leaf: the API, the delivery worker's reconciler and ``doctor`` use it; it imports
nothing of theirs."""
