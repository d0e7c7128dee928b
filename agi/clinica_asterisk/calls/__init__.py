"""Pure call logic: the stages (what each reads, its facts, its plan, what it writes), their
plans, events and their payloads, numbers, Dial options.  Cheap to import: no I/O, no
HTTP, no SQLite."""
