"""Which same-person pairs keep realfaces-train above EER 0.03, and do other scorers reject them too? (README.md)."""
