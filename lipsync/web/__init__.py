"""The browser studio (`lipsync serve`): aiohttp + aiortc (the `web` extra), imported inside the
functions that use them, so importing this package needs neither."""
