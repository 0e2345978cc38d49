"""Leave-one-family-out deepfake detection: which detector design holds on generator families it never saw (issue 31;
see README.md here)."""
