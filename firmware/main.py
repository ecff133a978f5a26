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
uart = machine.UART(cfg["link.uart"], baudrate=cfg["link.baud"])
if cfg["link.uart"] == 0:
    micropython.kbd_intr(-1)  # binary frames share the REPL port: 0x03 must not interrupt
board = app.Board(cfg, machine, app.SerialLink(uart, frame_max=2048))
asyncio.run(board.run())
