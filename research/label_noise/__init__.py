"""How well does the label cleaner find injected label noise? (issue 22; see README.md here)."""
