"""Pure call logic: stages' plans, events and their payloads, numbers, Dial options."""
