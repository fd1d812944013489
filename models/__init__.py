"""One module per server architecture, each charging the shared operation vocabulary."""
