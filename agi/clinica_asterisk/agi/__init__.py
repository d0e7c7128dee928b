"""The AGI protocol: the env block, answers, the command channel."""
