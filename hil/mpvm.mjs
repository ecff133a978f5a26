#!/usr/bin/env node
// Run a MicroPython script in the official MicroPython WebAssembly port (npm package
// @micropython/micropython-webassembly-pyscript, pinned in package.json).
//
//   node hil/mpvm.mjs [--heap BYTES] [--speed N] [--file HOST=VM ...] [--dir HOST=VM ...]
//                     SCRIPT.py|-
//
// --heap BYTES   GC heap size, default 131072 (an ESP32 without PSRAM has about that free).
// --speed N      time compression: the script lives N times faster than the world (see below).
// --cpu K        with --speed: the script's computing costs K times its real duration of its
//                time (default N). See "Time compression".
// --epoch MS     with --speed: the script's clock starts at this epoch ms (default: now).
// --file H=V     copy host file H to the absolute VM path V (parent directories are created).
// --dir H=V      copy host directory H recursively to VM directory V (skipping __pycache__)
//                and put V on sys.path, after '' and before '.frozen' like the board's root.
//                The cwd is '/' and sys.path starts as ['', '.frozen', '/lib'], so files
//                copied to '/' or '/lib' are importable too.
// SCRIPT         the script to run as __main__; '-' reads it from stdin.
//
// MicroPython's stdout and stderr go to ours, byte by byte as produced. Exit status: 0, 1 if the
// script raised (its traceback goes to stderr), or the code given to sys.exit().
//
// asyncio: this port has no asyncio.run; the JS event loop drives asyncio. Top-level `await` is
// allowed, so write `await main()`. The process exits as soon as the script's top level has
// finished, like asyncio.run returning: tasks still pending are dropped. An exception in a task
// nobody awaits is printed ("Task exception wasn't retrieved") and does not change the status.
//
// How this port differs from the board (tests/test_mpvm.py pins these down):
// - Modules: it has what the firmware uses (struct, binascii.crc32, hashlib.sha256 only,
//   micropython.const, gc, asyncio) and some a stock ESP32 build lacks, e.g. hmac; it has none
//   of the hardware ones (machine, network, socket, bluetooth, esp32). Small ints are 31-bit,
//   as on the ESP32, so gc.mem_alloc() deltas carry over.
// - Its GC heap grows on demand: when full, it asks the C heap for a new area of up to
//   gc_get_max_new_split() = 128 MiB. We patch that constant to 0 in the wasm binary as it is
//   loaded, so the Python heap stays at --heap, allocations beyond it raise MemoryError, and
//   gc.mem_free() tells the truth. The C heap (the port's JS glue) may still grow.
// - The GC only collects when control returns to JS: gc.collect() does nothing until then. So
//   code that allocates more than the heap in total without returning to JS raises MemoryError,
//   even if most of it is garbage. Only a real sleep returns to JS: one whose deadline is still
//   ahead when asyncio's loop looks next; sleep_ms(0) and other task switches stay inside
//   asyncio's loop, and each leaves ~16 bytes of garbage there (the port reschedules its loop
//   through js.setTimeout). sleep_ms(1) is not always real: its deadline is the next tick of a
//   millisecond clock, which may come before the loop looks (more often on a loaded machine; a
//   test's power-cut loop ran out of heap that way). Scripts that rely on it sleep 10 ms.
// - If an exception reaches JS while the heap is full, the port spins forever: formatting the
//   traceback for JS allocates outside any handler, and the port's nlr_jump_fail() is a
//   `while (1)` (seen with MicroPython 1.27, also with micropython.heap_lock()). So the script
//   runs under a small bootstrap that catches everything and prints the traceback from inside
//   Python, which needs no allocation. Hence the first traceback frame, "<mpvm>". A MemoryError
//   escaping asyncio's own loop with a full heap can still hang; callers need a timeout.
//
// Time compression (--speed N, --cpu K; neither given: untouched). The port reads every clock
// through Date.now() (time.ticks_ms() is Date.now() minus the epoch taken at load, time.time()
// is Date.now()), and asyncio sleeps by js.setTimeout(), looked up on globalThis at each call.
// So both are replaced before the port loads. The script's clock then runs N times faster
// than real time while the script waits, and K times faster while it computes (a timer's
// callback, i.e. the script's asyncio loop, runs as computing; so does the script's start):
// asyncio.sleep_ms(1000) takes 1000/N ms of real time
// and ticks_ms() advances by 1000, and work that takes 0.2 ms costs 0.2*K ms of the script's
// time (one callback at most 20 ms of real time: beyond, the machine was busy elsewhere).
// K = N (the default) is
// plain compression: everything N times faster, computing included, so a loop that does not
// keep up at N shows it in its own lateness. A smaller K says how much slower the target CPU
// is than this VM, whatever N (an ESP32 is roughly 10-30 times slower: an estimate).
// Sleeps end on their deadline: a timer wakes up to 1.5 ms (real) early and blocks for the
// rest in Atomics.wait (a futex: no spinning), since Node's own timers step in whole real
// milliseconds, N ms of the script's time; what lateness is left (the wait's cost, the
// process not being scheduled while the script was idle) is taken off the script's clock
// (snappedMs). So the script's clock is not a function of real time, only paced by it:
// ask the script (or the rig it reports to) what time it is. globalThis.mpvmClock:
//   speed, cpu          the factors in force
//   realMs()            the real clock (epoch ms), whatever the factors
//   snappedMs()         script ms taken out by ending sleeps on their deadline
//   setSpeed(n, k)      change the factors from now on; the script's clock stays continuous
// Node's own I/O (sockets, the net bridge) runs in real time, so a peer's answer that takes
// 1 ms of real time takes N ms of the script's, and a busy machine's 10 ms is 10 N ms: at
// N = 3000, 30 s, which no MQTT client's response timeout survives. So on a connection marked
// with mpvmNet.roundTrips(id), a write that asks for an answer (an MQTT CONNECT, SUBSCRIBE,
// PINGREQ or QoS 1 PUBLISH) holds the script's clock while the script idles, until every
// such request has its answer (CONNACK, SUBACK, PINGRESP, PUBACK), the connection closes, or
// 100 ms of real time pass: for the script a round trip takes no time, as if its network
// were much faster than its CPU (a slow network is a fault a rig injects, not an accident of
// the host's load).
// clock.heldMs() says how much real time was held. Real time is untouched at N = 1 without
// --cpu; the tests of the firmware run that way.
//
// TCP: globalThis.mpvmNet is a small bridge to Node's `net`, reached from Python with
// `import js; js.mpvmNet...` (hil/vboard/socket.py wraps it as usocket). Client sockets only;
// each id has its own receive buffer, filled by Node between the script's sleeps. Bytes cross
// as hex strings (the port converts str both ways, but passes bytes only as proxies).
//   connect(host, port) -> id      state(id) -> 0 connecting, 1 open, 2 closed
//   error(id) -> errno or 0        write(id, hex) -> bytes accepted (all of them)
//   read(id, max) -> hex of up to max bytes, or null if none are buffered
//   close(id)   (FIN)              reset(id)   (RST: the peer sees the connection drop)
//   timeSync(id, framing, spec)    see below
//   roundTrips(id)                 see "Time compression": MQTT requests hold the clock
//
// Host time in a compressed VM: a host's time_sync command carries the host's clock, which
// is not compressed; a board that took it would jump back by all the time compressed so far
// (and its later frames would look older than those before). timeSync(id, framing, spec)
// makes the bridge rewrite every unsigned time_sync frame arriving on connection id so that
// it carries the script's clock at the moment the script reads it, CRC recomputed; everything
// else passes untouched. framing "mqtt": the frame is the payload of an MQTT PUBLISH; "cobs":
// COBS frames with a 0x00 delimiter (a serial stream). spec (JSON) is the frame layout:
// {header_size, off_msg_type, off_flags, off_payload_len, flag_signed, msg_time_sync,
//  time_sync_size, crc_len}, as the firmware's wire.py has it. Bytes of an incomplete packet
// are held back until it is complete. A signed time_sync is passed as it is (re-signing
// needs the board's key): give virtual boards in compressed time no key.

import { readFileSync, readdirSync, statSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import zlib from "node:zlib";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

const ERRNO = { ECONNREFUSED: 111, ECONNRESET: 104, EPIPE: 32, ETIMEDOUT: 110,
  EHOSTUNREACH: 113, ENETUNREACH: 101, ECONNABORTED: 103, ENOTFOUND: 202 };

function cobsDecode(enc) {
  const out = [];
  for (let i = 0; i < enc.length;) {
    const code = enc[i++];
    if (code === 0) return null;
    for (let j = 1; j < code; j++) {
      if (i >= enc.length) return null;
      out.push(enc[i++]);
    }
    if (code < 0xff && i < enc.length) out.push(0);
  }
  return Buffer.from(out);
}

function cobsEncode(data) {
  const out = [0];
  let codeAt = 0;
  let code = 1;
  for (const b of data) {
    if (b === 0) {
      out[codeAt] = code;
      codeAt = out.length;
      out.push(0);
      code = 1;
    } else {
      out.push(b);
      if (++code === 0xff) {
        out[codeAt] = code;
        codeAt = out.length;
        out.push(0);
        code = 1;
      }
    }
  }
  out[codeAt] = code;
  return Buffer.from(out);
}

// Splits a received byte stream into packets ("mqtt" or "cobs" framing) and gives each time
// sync frame the script's clock as the script takes it (see timeSync in the header).
class TimeSyncRewriter {
  constructor(framing, spec) {
    if (framing !== "mqtt" && framing !== "cobs") throw new Error(`framing ${framing}?`);
    this.framing = framing;
    this.spec = spec;
    this.rest = Buffer.alloc(0); // an incomplete packet
    this.ready = []; // [{buf, frameAt, frameLen}] complete packets, oldest first
    this.rewritten = 0;
  }

  push(data) {
    let buf = this.rest.length ? Buffer.concat([this.rest, data]) : data;
    for (;;) {
      const n = this.framing === "cobs" ? buf.indexOf(0) + 1 : this.mqttLength(buf);
      if (n <= 0) break;
      this.ready.push(this.inspect(buf.subarray(0, n)));
      if (this.framing === "mqtt") this.onPacket?.(buf[0] >> 4);
      buf = buf.subarray(n);
    }
    this.rest = Buffer.from(buf); // a copy: the socket's chunk is not ours to keep
  }

  mqttLength(buf) { // whole packet length, or 0 while incomplete
    let len = 0;
    for (let i = 1; i <= 4; i++) {
      if (i >= buf.length) return 0;
      len += (buf[i] & 0x7f) * 128 ** (i - 1);
      if (!(buf[i] & 0x80)) return buf.length >= 1 + i + len ? 1 + i + len : 0;
    }
    return buf.length; // malformed length: pass it all on, the client will complain
  }

  inspect(pkt) {
    const p = { buf: pkt, frameAt: -1 };
    if (this.framing === "cobs") {
      p.frameAt = 0; // decoded when taken
      return p;
    }
    if (pkt[0] >> 4 !== 3) return p; // not a PUBLISH
    let i = 1;
    while (pkt[i] & 0x80) i++;
    i += 1;
    i += 2 + pkt.readUInt16BE(i); // topic
    if ((pkt[0] >> 1) & 3) i += 2; // packet id (QoS > 0)
    p.frameAt = i;
    return p;
  }

  isTimeSync(f) {
    const s = this.spec;
    return f.length === s.header_size + s.time_sync_size + s.crc_len
      && f[s.off_msg_type] === s.msg_time_sync
      && !(f.readUInt16LE(s.off_flags) & s.flag_signed)
      && f.readUInt16LE(s.off_payload_len) === s.time_sync_size;
  }

  fix(p) { // at take time: the script's clock now
    const s = this.spec;
    p.fixed = true;
    const frame = this.framing === "cobs" ? cobsDecode(p.buf.subarray(0, p.buf.length - 1))
      : p.buf.subarray(p.frameAt);
    if (frame === null || !this.isTimeSync(frame)) return;
    frame.writeBigUInt64LE(BigInt(Date.now()), s.header_size);
    const end = s.header_size + s.time_sync_size;
    frame.writeUInt32LE(zlib.crc32(frame.subarray(0, end)), end);
    if (this.framing === "cobs") p.buf = Buffer.concat([cobsEncode(frame), Buffer.from([0])]);
    this.rewritten++;
  }

  take(max) {
    if (this.ready.length === 0) return null;
    const p = this.ready[0];
    if (p.frameAt >= 0 && !p.fixed) this.fix(p);
    const out = p.buf.subarray(0, max);
    if (out.length < p.buf.length) p.buf = p.buf.subarray(out.length);
    else this.ready.shift();
    return out;
  }
}

function netBridge() {
  const conns = new Map();
  let nextId = 1;
  const get = (id) => {
    const c = conns.get(id);
    if (c === undefined) throw new Error(`mpvmNet: no socket ${id}`);
    return c;
  };
  return {
    connect(host, port) {
      const id = nextId++;
      const c = { sock: net.connect({ host, port }), state: 0, error: 0, chunks: [],
        awaiting: 0 }; // MQTT requests without their answer yet (roundTrips)
      c.answered = (all = false) => {
        c.awaiting = all ? 0 : Math.max(0, c.awaiting - 1);
        if (c.awaiting === 0) globalThis.mpvmClock.release?.(id);
      };
      c.sock.setNoDelay(true);
      c.sock.on("connect", () => { c.state = 1; });
      c.sock.on("data", (d) => {
        if (c.rewriter) c.rewriter.push(d);
        else c.chunks.push(d);
        if (c.roundTrips && !c.rewriter) c.answered(true); // no packets seen: any bytes do
      });
      c.sock.on("error", (e) => { c.error ||= ERRNO[e.code] ?? 5; }); // 5: EIO
      c.sock.on("close", () => { c.state = 2; c.answered(true); });
      conns.set(id, c);
      return id;
    },
    state: (id) => get(id).state,
    error: (id) => get(id).error,
    write(id, hex) {
      const c = get(id);
      if (c.state !== 1 || c.sock.destroyed) return 0;
      const data = Buffer.from(hex, "hex");
      c.sock.write(data);
      // MQTT packets that ask for an answer: CONNECT, PUBLISH with QoS > 0, SUBSCRIBE, PINGREQ
      const type = data[0] >> 4;
      if (c.roundTrips && (type === 1 || type === 8 || type === 12
          || (type === 3 && (data[0] & 0x06)))) {
        c.awaiting++;
        globalThis.mpvmClock.hold?.(id);
      }
      return data.length;
    },
    read(id, max) {
      const c = get(id);
      if (c.rewriter) return c.rewriter.take(max)?.toString("hex") ?? null;
      if (c.chunks.length === 0) return null;
      const all = c.chunks.length === 1 ? c.chunks[0] : Buffer.concat(c.chunks);
      const out = all.subarray(0, max);
      c.chunks = out.length < all.length ? [all.subarray(out.length)] : [];
      return out.toString("hex");
    },
    timeSync(id, framing, spec) {
      const c = get(id);
      c.rewriter = new TimeSyncRewriter(framing, JSON.parse(spec));
      // the answers: CONNACK, PUBACK, SUBACK, PINGRESP
      c.rewriter.onPacket = (t) => { if (c.roundTrips && [2, 4, 9, 13].includes(t)) c.answered(); };
      for (const d of c.chunks.splice(0)) c.rewriter.push(d);
    },
    rewritten: (id) => get(id).rewriter?.rewritten ?? 0,
    roundTrips(id) {
      get(id).roundTrips = true;
    },
    close(id) {
      const c = conns.get(id);
      if (c !== undefined) c.sock.end(); // queued writes first, then FIN
      conns.delete(id);
    },
    reset(id) {
      const c = conns.get(id);
      if (c !== undefined) c.sock.resetAndDestroy();
      conns.delete(id);
    },
  };
}

const DEFAULT_HEAP = 131072;
const MIN_HEAP = 16384; // less fails in MicroPython's own start-up
const USAGE = "usage: node hil/mpvm.mjs [--heap BYTES] [--speed N] [--file|--dir HOST=VM ...] "
  + "SCRIPT.py|-";
const MAX_SPEED = 100_000; // beyond, one real millisecond is minutes of script time

function fail(message) {
  process.stderr.write(`mpvm: ${message}\n${USAGE}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { heap: DEFAULT_HEAP, speed: 1, cpu: null, epoch: null, copies: [], script: null };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (["--heap", "--speed", "--cpu", "--epoch", "--file", "--dir"].includes(arg)) {
      const value = argv[++i];
      if (value === undefined) fail(`${arg} needs a value`);
      if (arg === "--epoch") {
        opts.epoch = Number(value);
        if (!Number.isSafeInteger(opts.epoch) || opts.epoch < 0) fail("--epoch wants epoch ms");
        continue;
      }
      if (arg === "--speed" || arg === "--cpu") {
        const n = Number(value);
        if (!(n > 0 && n <= MAX_SPEED)) fail(`${arg} must be a number above 0, at most ${MAX_SPEED}`);
        opts[arg.slice(2)] = n;
        continue;
      }
      if (arg === "--heap") {
        opts.heap = Number(value);
        if (!Number.isInteger(opts.heap) || opts.heap < MIN_HEAP) {
          fail(`--heap must be an integer >= ${MIN_HEAP}`);
        }
        continue;
      }
      const eq = value.lastIndexOf("="); // host paths may contain '=', VM paths may not
      const [host, vm] = [value.slice(0, eq), value.slice(eq + 1)];
      if (eq <= 0 || !vm.startsWith("/")) fail(`${arg} wants HOST=VM with an absolute VM path`);
      opts.copies.push({ kind: arg.slice(2), host, vm });
    } else if (opts.script === null && (arg === "-" || !arg.startsWith("-"))) {
      opts.script = arg;
    } else {
      fail(`unexpected argument ${arg}`);
    }
  }
  if (opts.script === null) fail("no script given");
  return opts;
}

// The body of gc_get_max_new_split(): no locals, i32.const 134217728 (a padded 5-byte LEB), end.
const MAX_NEW_SPLIT = Buffer.from([0x08, 0x00, 0x41, 0x80, 0x80, 0x80, 0xc0, 0x00, 0x0b]);

function fixGcHeap(binary) {
  const bytes = Buffer.from(binary); // a copy
  const at = bytes.indexOf(MAX_NEW_SPLIT);
  if (at < 0 || bytes.indexOf(MAX_NEW_SPLIT, at + 1) >= 0) {
    throw new Error("mpvm: gc_get_max_new_split() not found once in micropython.wasm; "
      + "the heap limit needs updating for this MicroPython version");
  }
  bytes[at + 6] = 0x80; // the constant becomes 0: never add a GC heap area
  return bytes;
}

// See "Time compression" above. Installed before the port loads: it takes its epoch then.
// The script's clock runs at `speed` while the script waits and at `cpu` while it computes.
function compressTime(speed, cpu, epoch = null) {
  const realNow = Date.now;
  const realSetTimeout = globalThis.setTimeout;
  const realClearTimeout = globalThis.clearTimeout;
  // While the script waits its clock follows real time; while it computes too, except that
  // one callback is never charged more than MAX_CALLBACK_MS of real time: a callback that
  // took longer was the machine running something else (a board's MicroPython GC or its
  // 1 Hz tick take a few ms here), and that must not cost the script seconds of its time.
  const MAX_CALLBACK_MS = 20;
  let computing = true; // it starts by loading, i.e. computing (uncapped: a long import)
  let capped = false;
  let anchorReal = performance.now(); // real ms ...
  let anchorScript = epoch ?? realNow.call(Date); // ... and the script's epoch ms there
  let rate = cpu; // the script's ms per elapsed ms
  let seen = 0; // the latest time the script was told: its clock never goes back
  let snapped = 0; // script ms taken out by ending sleeps on their deadline (see fire)
  const holds = new Map(); // connection id -> real-time cap timer: the clock is held
  let heldSince = 0;
  let held = 0; // real ms the clock stood still for round trips
  const parked = []; // timers that came due while the clock was held
  const elapsed = () => {
    const real = performance.now() - anchorReal;
    return capped ? Math.min(real, MAX_CALLBACK_MS) : real;
  };
  const scriptNow = () => anchorScript + elapsed() * rate;
  const anchor = (newRate, at = scriptNow()) => {
    anchorScript = at;
    anchorReal = performance.now();
    rate = newRate;
  };
  const clock = {
    speed,
    cpu,
    realMs: () => realNow.call(Date),
    snappedMs: () => snapped,
    setSpeed(n, c = Math.min(n, clock.cpu)) {
      for (const v of [n, c]) {
        if (!(v > 0 && v <= MAX_SPEED)) throw new RangeError(`speed ${v} out of range`);
      }
      [clock.speed, clock.cpu] = [n, c];
      [speed, cpu] = [n, c];
      anchor(computing ? c : holds.size ? 0 : n);
    },
    heldMs: () => held,
    idle() { // the script's top level has handed over to its timers
      const at = scriptNow();
      computing = false;
      anchor(holds.size ? 0 : speed, at);
    },
    hold(id) {
      if (holds.has(id)) return;
      holds.set(id, realSetTimeout(() => clock.release(id), HOLD_MAX_MS));
      if (holds.size === 1) heldSince = performance.now();
      if (!computing) anchor(0);
    },
    release(id) {
      if (!holds.has(id)) return;
      realClearTimeout(holds.get(id));
      holds.delete(id);
      if (holds.size) return;
      held += performance.now() - heldSince;
      if (!computing) anchor(speed);
      for (const fire of parked.splice(0)) fire();
    },
  };
  Date.now = () => {
    const t = Math.floor(scriptNow());
    if (t > seen) seen = t;
    return seen;
  };
  // A timer wakes up to EARLY_MS (real) before its deadline and blocks for the rest
  // (Atomics.wait: a futex, no spinning): Node's own timers have 1 ms steps, which at speed N
  // would be N ms of the script's time. Its callback then starts exactly on the deadline:
  // whatever lateness is left (the wait's own cost, the process not being scheduled) is
  // taken off the script's clock, since the script was idle meanwhile. The callback (the
  // script's asyncio loop) runs at the compute rate.
  const gate = new Int32Array(new SharedArrayBuffer(4));
  const EARLY_MS = 1.5;
  const WAIT_COST_MS = 0.06; // Atomics.wait returns about this late
  const HOLD_MAX_MS = 100; // a peer that never answers (frozen) holds the clock no longer
  const arm = (fire, realMs) => (realMs >= 1 ? realSetTimeout(fire, Math.floor(realMs))
    : setImmediate(fire));
  globalThis.setTimeout = (fn, ms, ...args) => {
    const due = scriptNow() + Math.max(0, Number(ms) || 0);
    const handle = { timer: null, cancelled: false };
    const fire = () => {
      if (handle.cancelled) return;
      if (holds.size) { // the clock stands still: go on when the round trip is done
        parked.push(fire);
        return;
      }
      const left = (due - scriptNow()) / rate; // real ms
      if (left > EARLY_MS + 1) { // woken early (the rate changed): wait again
        handle.timer = arm(fire, left - EARLY_MS);
        return;
      }
      if (left > WAIT_COST_MS) Atomics.wait(gate, 0, 0, left - WAIT_COST_MS);
      const start = Math.max(due, seen);
      snapped += Math.max(0, scriptNow() - start);
      computing = true;
      capped = true;
      anchor(cpu, start);
      try {
        fn(...args);
      } finally {
        const at = scriptNow();
        computing = capped = false;
        anchor(holds.size ? 0 : speed, at);
      }
    };
    // scheduled while computing: the wait itself passes at the idle rate
    handle.timer = arm(fire, (due - scriptNow()) / speed - EARLY_MS);
    return handle;
  };
  globalThis.clearTimeout = (handle) => {
    if (handle === null || typeof handle !== "object" || !("cancelled" in handle)) {
      realClearTimeout(handle);
      return;
    }
    handle.cancelled = true;
    realClearTimeout(handle.timer);
    clearImmediate(handle.timer);
  };
  globalThis.mpvmClock = clock;
}

const instantiate = WebAssembly.instantiate;
WebAssembly.instantiate = (binary, imports) => instantiate(fixGcHeap(binary), imports);

function copyIn(FS, { kind, host, vm }) {
  let stat;
  try {
    stat = statSync(host);
  } catch {
    fail(`--${kind} ${host}: no such file or directory`);
  }
  if (stat.isDirectory() !== (kind === "dir")) fail(`--${kind} ${host}: not a ${kind}`);
  if (stat.isDirectory()) {
    FS.mkdirTree(vm);
    for (const name of readdirSync(host)) {
      if (name === "__pycache__") continue; // CPython bytecode, useless to MicroPython
      const child = path.join(host, name);
      const childKind = statSync(child).isDirectory() ? "dir" : "file";
      copyIn(FS, { kind: childKind, host: child, vm: path.posix.join(vm, name) });
    }
  } else {
    FS.mkdirTree(path.posix.dirname(vm));
    FS.writeFile(vm, readFileSync(host));
  }
}

// Phase 1 (_mpvm_run) compiles and starts the script. It contains no `await` itself, so it runs
// inside runPythonAsync while the port allows top-level await in compile(); calling a module
// that awaits gives a generator, which phase 2 (_mpvm_await, called from JS) runs as an asyncio
// task (_mpvm_task). Awaited from JS directly instead, each of its yields would be a JS round
// trip whose proxies stay in the Python heap until V8 happens to collect: a slow leak. The state
// names exist before the script runs, so storing into them needs no allocation.
const BOOTSTRAP = `
import sys as _mpvm_sys
_mpvm_status = 1
_mpvm_main = None
_mpvm_pending = False

def _mpvm_fail(e):
    global _mpvm_status
    if isinstance(e, SystemExit):
        code = e.args[0] if e.args else None
        if code is None or isinstance(code, int):
            _mpvm_status = code or 0
            return
        print(code, file=_mpvm_sys.stderr)
    else:
        _mpvm_sys.print_exception(e, _mpvm_sys.stderr)
    _mpvm_status = 1

def _mpvm_run(path, name, dirs):
    global _mpvm_status, _mpvm_main, _mpvm_pending
    for d in reversed(dirs):
        _mpvm_sys.path.insert(1, d)
    try:
        with open(path) as f:
            code = compile(f.read(), name, "exec")
        _mpvm_main = exec(code)
        _mpvm_pending = _mpvm_main is not None
        _mpvm_status = 0
    except BaseException as e:
        _mpvm_fail(e)

async def _mpvm_task(main):
    global _mpvm_status
    try:
        await main
        _mpvm_status = 0
    except BaseException as e:  # asyncio's loop would let SystemExit escape into JS
        _mpvm_fail(e)

async def _mpvm_await():
    global _mpvm_main
    import asyncio
    main, _mpvm_main = _mpvm_main, None
    await asyncio.create_task(_mpvm_task(main))
`;
const SCRIPT_VM_PATH = "/tmp/__mpvm_main__.py";

const opts = parseArgs(process.argv.slice(2));
let source;
try {
  source = readFileSync(opts.script === "-" ? 0 : opts.script);
} catch (e) {
  fail(`cannot read ${opts.script}: ${e.message}`);
}
globalThis.mpvmNet = netBridge();
if (opts.speed !== 1 || opts.cpu !== null || opts.epoch !== null) {
  compressTime(opts.speed, opts.cpu ?? opts.speed, opts.epoch);
} else {
  globalThis.mpvmClock = { speed: 1, cpu: 1, realMs: () => Date.now(), snappedMs: () => 0,
    heldMs: () => 0, idle() {},
    setSpeed() { throw new Error("start the VM with --speed to change it"); } };
}
const mp = await loadMicroPython({
  heapsize: opts.heap,
  linebuffer: false, // called once per byte: pass each on at once
  stdout: (bytes) => process.stdout.write(bytes),
  stderr: (bytes) => process.stderr.write(bytes),
});
for (const copy of opts.copies) copyIn(mp.FS, copy);
mp.FS.writeFile(SCRIPT_VM_PATH, source);
// Compiled under its own name, so its frame in tracebacks reads "<mpvm>".
mp.runPython(`exec(compile(${JSON.stringify(BOOTSTRAP)}, "<mpvm>", "exec"))`);
const awaitMain = mp.globals.get("_mpvm_await"); // fetched while the heap is still empty

// A Python exception escaping asyncio's loop (e.g. SystemExit in a background task) reaches JS
// from a timer callback; print its traceback rather than Node's dump of the port's source.
process.on("uncaughtException", (e) => {
  if (e?.name !== "PythonError") throw e;
  process.stderr.write(e.message);
  process.exit(1);
});

const name = opts.script === "-" ? "<stdin>" : opts.script;
const dirs = opts.copies.filter((c) => c.kind === "dir" && c.vm !== "/").map((c) => c.vm);
const args = [SCRIPT_VM_PATH, name, dirs].map((a) => JSON.stringify(a)).join(", ");
mp.runPythonAsync(`_mpvm_run(${args})`);
globalThis.mpvmClock.idle();
if (mp.globals.get("_mpvm_pending")) await awaitMain();
// stdout/stderr writes to pipes and files are synchronous in Node, so nothing is lost here.
process.exit(mp.globals.get("_mpvm_status"));
