"""The browser studio (`lipsync serve`): aiohttp + aiortc. Imported only by that command."""
