"""Runs sushy-tools' Redfish emulator with the fake driver's power delay pinned.

The fake driver applies every reset after random.randint(1, 11) seconds. Tests set
SUSHY_FAKE_POWER_DELAY (seconds, default 0) so a reset shows on the next GET; unset
SUSHY_FAKE_POWER_DELAY=random keeps the emulator's own random delay.
"""
import os
import random
import sys

_delay = os.environ.get("SUSHY_FAKE_POWER_DELAY", "0")
if _delay != "random":
    random.randint = lambda _a, _b: int(_delay)

from sushy_tools.emulator.main import main  # noqa: E402  (after the patch on purpose)

sys.exit(main())
