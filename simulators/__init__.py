"""Device simulators (GSM modem on a pty, signal generators) for tests and the demo.

They never import gateway/, api/ or drivers/: each writes its own frame and signal generators from the
specs, so one misunderstanding of a spec cannot hide on both sides of a test.
"""
