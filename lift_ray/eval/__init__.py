"""Evaluation: a document-QA set written for this project, needle in a haystack, and the harness that scores
the base model, truncated ICL, Finetune-Raw and LIFT against each other (docs/evaluation.md)."""
