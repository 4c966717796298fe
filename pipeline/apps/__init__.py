"""The applications built from the stages: dataset audit, overfit check and the end-to-end demos."""
