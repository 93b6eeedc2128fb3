"""Encoders (pretrained or from a config) and the heads put on top of them."""
