"""clinica-asterisk: Asterisk / FreePBX as a Binotel-style PBX for Clinica Web."""

__version__ = "0.1.0"
