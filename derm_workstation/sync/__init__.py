"""Reserved for later issues; see docs/ARCHITECTURE.md."""
