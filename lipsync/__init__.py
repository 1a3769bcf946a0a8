"""The application: the `lipsync` command line, the offline render, the browser studio and the
voice-agent integrations, built on the live engine (`realtime`).

Layers, each importing only those below it (checked by `lint-imports`, see pyproject.toml):
lipsync -> realtime -> export -> mediaio -> models.
"""
