"""Boot entry point on the board: load the config, start the monitor. Never a crash loop:
config errors fall back to defaults (config.py) and the watchdog resets a hung loop."""

import asyncio

import app
import config
import machine
import micropython

# Held BOOT button (GPIO0) at reset: stay in the REPL, for `packsentry board deploy`. The
# running program disables Ctrl-C on the REPL port and starts a watchdog, so mpremote could not
# otherwise get in.
if machine.Pin(0, machine.Pin.IN, machine.Pin.PULL_UP).value() == 0:
    raise SystemExit

cfg = config.load()
FRAME_MAX = 1024  # a 256-cell, 8-probe sample with tag is 610 bytes
if cfg["link.kind"] == "mqtt":
    from mqtt_link import MqttLink

    link = MqttLink(cfg, cfg["board_id"], frame_max=FRAME_MAX)
else:
    uart = machine.UART(cfg["link.uart"], baudrate=cfg["link.baud"])
    if cfg["link.uart"] == 0:
        micropython.kbd_intr(-1)  # binary frames share the REPL port: 0x03 must not interrupt
    link = app.SerialLink(uart, frame_max=FRAME_MAX)
board = app.Board(cfg, machine, link)
asyncio.run(board.run())
