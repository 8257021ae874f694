"""codellama-selfinstruct: instruction data made by a model and filtered by running its own tests (paper §2.5, App. H)."""
