"""Developer tools: a CRM stand-in, a call simulator, recorded calls."""
