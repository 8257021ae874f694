"""codellama-prepare: raw code to the training sources on datatrove pipelines (docs/prepare.md)."""
