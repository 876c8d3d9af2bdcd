"""Helpers below every other package: no TensorFlow at import time, no gin."""
