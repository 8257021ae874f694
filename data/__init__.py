"""Streaming data: sources, tokenizer, infilling (FIM), mixture, packing, the embedded corpus, chat format."""
