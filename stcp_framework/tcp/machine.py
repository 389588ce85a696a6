"""One TCP connection as a sans-IO state machine (RFC 9293, 7323, 5681/6582, 6298, 5961).

Theory of operation
-------------------
Inputs are segments (``on_segment``), application calls (``app_*``) and the clock
(``on_timer``); every entry point takes ``now`` (float seconds, the stack's clock).
Nothing here does I/O, sleeps, reads a clock or draws randomness (ISS comes in).
Outputs accumulate until ``drain()`` returns them as one ``Step``: the ``StateDelta``
to persist, the ``OutSegment``s to send (each with ``needs_version``) and the
``Event``s for the API layer. ``next_deadline()`` tells the driver when to call
``on_timer`` next.
"""

from __future__ import annotations

# The implementation is filled in by the tcp work package; the public surface below
# is the contract the stack and api layers are written against.
