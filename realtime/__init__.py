"""The lip-sync engine: sources -> mel stream -> scheduler -> generator -> compositor -> sinks.

Nothing under `realtime/` imports torch: the live path runs on ONNX Runtime alone.
"""
