"""The hooks: each stage's reads and plan, the session runner, and the two ways Asterisk runs them (script, FastAGI)."""
