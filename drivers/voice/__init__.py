"""Voice devices on analogue lines: V.253 voice modems now, USB voice boxes later.

``events`` is the line-event vocabulary every voice driver reports; ``v253`` is the sans-IO V.253 codec
(DLE-shielded stream, voice AT commands, capability parsers); ``callerid_text`` reads the caller ID that
modems print as text. See docs/voice-modems.md.
"""
