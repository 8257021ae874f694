"""codellama-ablate: the FIM, long-context and Python ablations as ordinary training stages (docs/ablations.md)."""
