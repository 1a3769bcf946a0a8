"""Reading media files through PyAV and OpenCV: audio of any container FFmpeg reads
(`mediaio.audio`), a face photo or every frame of a video (`mediaio.face_media`).

Sits between `export` and `models`: it uses only `models.errors`, and nothing under `models`
imports it.
"""
