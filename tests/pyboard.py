"""Moved to packsentry.hil.model_board; kept while in-flight tests still import it here."""

from packsentry.hil.model_board import MqttBoard, PyBoard, SerialBoard

__all__ = ["MqttBoard", "PyBoard", "SerialBoard"]
