"""Sending events to the CRM: the transport, the worker, the hand-off, reconciling."""
