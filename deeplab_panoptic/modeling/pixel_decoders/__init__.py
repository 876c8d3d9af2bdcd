"""Pixel decoders."""
