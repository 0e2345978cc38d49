"""Does the fake head generalise to held-out fake sources? (issue 17; see README.md here)."""
