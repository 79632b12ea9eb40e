"""Model zoo: gMLP / aMLP and the Transformer baseline. ``build_model`` is the entry point."""
