"""End-to-end examples: `python -m examples.opd`, `python -m examples.cat_grpo` (CPU, minutes)."""
