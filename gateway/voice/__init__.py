"""Analogue voice lines: one call object per call on a line, whatever box is behind the line (issue 5).

``devices`` adapts the drivers to :class:`devices.LineDevice`; ``line`` is the pure per-line state machine;
``calls`` the call object the IVR and the API drive; ``dialer`` outbound soft dialling; ``media`` prompts and
recordings; ``service`` ties them to the store, the event bus and the API.
"""
