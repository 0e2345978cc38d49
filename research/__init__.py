"""Studies beside the product: one folder per study (README, scripts, tests). research/ imports jaxface; jaxface never
imports research/."""
