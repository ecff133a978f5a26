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


@pytest.fixture
def host(broker):
    """The host's subscription (packsentry/#, so that sync() probes come back), standing
    before the board starts."""
    from test_firmware_mqtt import Subscriber

    s = Subscriber(broker)
    try:
        s.sync()
        yield s
    finally:
        s.close()
