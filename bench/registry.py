"""The benchmarks `python -m bench` runs, in this order: name -> "module:function".

A benchmark is one function `run(ctx: bench.harness.Context) -> list[bench.harness.Figure]`
in its own module (imported only when it runs). Add one by writing the module and a line here.
"""

BENCHMARKS: dict[str, str] = {
    "decode": "bench.decode:run",
    "soh": "bench.soh:run",
    "firmware": "bench.firmware:run",
    "ingest": "bench.ingest:run",
    "latency": "bench.latency:run",
    "serial": "bench.serial:run",
    "replay": "bench.replay:run",
    "startup": "bench.startup:run",
    "memory": "bench.memory:run",
}
