"""Phone calls in: Twilio Media Streams, Genesys Cloud AudioHook and Asterisk AudioSocket.

Each provider parses its own wire format and feeds a :class:`~.call.CallStream` (one stream per
call, a track per direction: ``customer`` and ``agent``); :mod:`.simulators` plays calls in the
providers' formats for tests and benchmarks.
"""
