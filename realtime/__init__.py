"""The live engine: sources -> mel stream -> scheduler -> generator -> compositor -> sinks.

Nothing under `realtime/` imports torch: the live path runs on ONNX Runtime alone (`lint-imports`
checks it). The application on top of it (CLI, offline render, browser studio, integrations) is
`lipsync`.
"""
