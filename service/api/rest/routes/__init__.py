"""Thin HTTP adapters: parse, hand over to the engine, encode. One module per protocol."""
