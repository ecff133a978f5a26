import sys
from pathlib import Path

import pytest

# tests/ holds helper modules (strategies.py) next to the tests.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def broker(tmp_path):
    """A real Mosquitto of the test's own, on a free loopback port (test_firmware_mqtt.py)."""
    from test_firmware_mqtt import Broker

    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()
