// y-websocket clients (npm yjs, y-websocket, ws) for bench/websocket.py. One Node.js process holds
// every client, so that a sender's clock and its receivers' clocks are the same clock.
//
//   node load.mjs fanout SPEC   clients edit docs through servers: fan-out latency from each update
//                               to every other client of its doc
//   node load.mjs idle SPEC     connections that stay open and idle until "quit" on stdin
//   node load.mjs large SPEC    {url, doc, write_mb, timeout_ms}: a client writes write_mb Map values
//                               of 1 MB (none when 0), then, after "fetch" on stdin, a fresh
//                               client syncs the doc: its time, the messages it received
//
// SPEC is JSON. fanout: {urls, docs, clients, rate_hz, seconds, timeout_ms}: client i edits doc
// i % docs through urls[floor(i / docs) % urls.length] (each doc's clients spread over the
// servers), rate_hz Map sets a second each, for `seconds`; then, with `burst` > 0, every client
// makes `burst` sets at once and the time until all are equal is measured. idle: {url, docs, connections, batch,
// timeout_ms}: connection i to doc i % docs, opened `batch` at a time.
// URLs are provider base URLs (the provider appends "/" + the doc name). Events are JSON lines on
// stdout ({"ev": ...}); a missed deadline prints {"ev": "error"} and exits 1.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { performance } from 'node:perf_hooks'
import { createInterface } from 'node:readline'

process.setMaxListeners(0) // each provider adds an exit listener

function emit (ev, fields = {}) {
  process.stdout.write(JSON.stringify({ ev, ...fields }) + '\n')
}

function fail (message) {
  emit('error', { msg: message })
  process.exit(1)
}

// Resolve once pred() holds, checked every 10 ms; reject at the deadline.
function waitFor (pred, what, timeoutMs) {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + timeoutMs
    const check = () => {
      if (pred()) return resolve()
      if (Date.now() > deadline) return reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`))
      setTimeout(check, 10)
    }
    check()
  })
}

function connect (url, doc) {
  const ydoc = new Y.Doc()
  const provider = new WebsocketProvider(url, doc, ydoc, { WebSocketPolyfill: WebSocket, disableBc: true })
  return { ydoc, provider, data: ydoc.getMap('data') }
}

function percentiles (values) {
  const sorted = Float64Array.from(values).sort()
  const at = (pct) => sorted.length ? sorted[Math.min(sorted.length, Math.ceil(pct / 100 * sorted.length)) - 1] : null
  return { count: sorted.length, p50_ms: at(50), p90_ms: at(90), p99_ms: at(99), max_ms: at(100) }
}

async function fanout (spec) {
  const { urls, docs, clients: count, rate_hz: rateHz, seconds, timeout_ms: timeoutMs } = spec
  const clients = []
  for (let i = 0; i < count; i++) {
    clients.push({ index: i, doc: `bench/d${i % docs}`, ...connect(urls[Math.floor(i / docs) % urls.length], `bench/d${i % docs}`) })
  }
  const started = performance.now()
  await waitFor(() => clients.every((c) => c.provider.synced), 'every client synced', timeoutMs)
  emit('synced', { ms: performance.now() - started })

  const sent = new Map() // "c<i>:<seq>" -> performance.now() at the sender
  const latencies = []
  for (const client of clients) {
    client.data.observe((event, transaction) => {
      if (transaction.local) return
      const now = performance.now()
      for (const key of event.keysChanged) {
        const at = sent.get(`${key}:${client.data.get(key)}`)
        if (at !== undefined) latencies.push(now - at)
      }
    })
  }
  const peersOf = new Map()
  for (const client of clients) peersOf.set(client.doc, (peersOf.get(client.doc) || 0) + 1)

  emit('editing')
  let updates = 0
  let expected = 0
  const intervalMs = 1000 / rateHz
  const editUntil = performance.now() + seconds * 1000
  await new Promise((resolve) => {
    let running = clients.length
    for (const client of clients) {
      let seq = 0
      const tick = () => {
        if (performance.now() >= editUntil) {
          if (--running === 0) resolve()
          return
        }
        seq += 1
        sent.set(`c${client.index}:${seq}`, performance.now())
        client.data.set(`c${client.index}`, seq)
        updates += 1
        expected += peersOf.get(client.doc) - 1
        // Uniform jitter around the interval, so that the clients do not edit in lockstep.
        setTimeout(tick, intervalMs * (0.5 + Math.random()))
      }
      setTimeout(tick, intervalMs * Math.random())
    }
  })
  const edited = performance.now()
  emit('edited', { updates })
  // Every client of a doc holds the same state: the updates have all been delivered.
  const byDoc = new Map()
  for (const client of clients) {
    if (!byDoc.has(client.doc)) byDoc.set(client.doc, [])
    byDoc.get(client.doc).push(client)
  }
  const equal = () => [...byDoc.values()].every((group) => {
    const first = Y.encodeStateVector(group[0].ydoc).toString()
    return group.every((c) => Y.encodeStateVector(c.ydoc).toString() === first)
  })
  await waitFor(equal, 'every client of each doc to hold the same state', timeoutMs)
  const drainMs = performance.now() - edited
  emit('result', { updates, deliveries_expected: expected, drain_ms: drainMs, ...percentiles(latencies) })
  if (spec.burst > 0) {
    // Every client makes `burst` sets at once (one update each), then: how long until all are equal.
    emit('bursting')
    const burstStarted = performance.now()
    for (let n = 0; n < spec.burst; n++) {
      for (const client of clients) client.data.set(`b${client.index}`, n)
    }
    await waitFor(equal, 'every client of each doc to hold the same state after the burst', timeoutMs)
    const ms = performance.now() - burstStarted
    const closed = clients.filter((c) => !c.provider.wsconnected).length
    emit('burst', { updates: spec.burst * clients.length, ms, disconnected: closed })
  }
  for (const client of clients) client.provider.destroy()
}

async function idle (spec) {
  const { url, docs, connections, batch, timeout_ms: timeoutMs } = spec
  const clients = []
  const started = performance.now()
  for (let first = 0; first < connections; first += batch) {
    const opened = []
    for (let i = first; i < Math.min(connections, first + batch); i++) opened.push(connect(url, `idle/d${i % docs}`))
    clients.push(...opened)
    await waitFor(() => opened.every((c) => c.provider.synced), `connections ${first}..${first + opened.length} synced`, timeoutMs)
  }
  emit('connected', { connections: clients.length, ms: performance.now() - started })
  const lines = createInterface({ input: process.stdin })
  for await (const line of lines) {
    if (line.trim() === 'count') {
      // How many are still connected (a provider that heard nothing for 30 s reconnects).
      emit('count', { connected: clients.filter((c) => c.provider.wsconnected).length, connections: clients.length })
    } else if (line.trim() === 'quit') {
      break
    }
  }
  for (const client of clients) client.provider.destroy()
  emit('closed')
}

// A WebSocket that counts the messages it receives and their largest size.
const received = { messages: 0, bytes: 0, largest: 0 }
class CountingWebSocket extends WebSocket {
  constructor (...args) {
    super(...args)
    this.on('message', (data) => {
      // An ArrayBuffer: the provider sets binaryType to 'arraybuffer'.
      const size = data.byteLength
      received.messages += 1
      received.bytes += size
      received.largest = Math.max(received.largest, size)
    })
  }
}

async function large (spec) {
  const { url, doc, write_mb: writeMb, timeout_ms: timeoutMs } = spec
  if (writeMb > 0) {
    // Through the provider, as one update (servers that take a frame this large).
    const writer = connect(url, doc)
    await waitFor(() => writer.provider.synced, 'the writer synced', timeoutMs)
    writer.ydoc.transact(() => {
      for (let i = 0; i < writeMb; i++) writer.data.set(`k${i}`, 'y'.repeat(1_000_000))
    })
    await waitFor(() => writer.provider.ws.bufferedAmount === 0, 'the writer to send its update', timeoutMs)
    emit('written')
    if ((await nextLine()) !== 'fetch') fail('expected "fetch"')
    writer.provider.destroy()
  }
  const ydoc = new Y.Doc()
  const started = performance.now()
  const provider = new WebsocketProvider(url, doc, ydoc, { WebSocketPolyfill: CountingWebSocket, disableBc: true })
  const data = ydoc.getMap('data')
  await waitFor(() => provider.synced, 'a fresh client synced', timeoutMs)
  const ms = performance.now() - started
  let bytes = 0
  for (const value of data.values()) bytes += String(value).length
  provider.destroy()
  emit('fetched', { ms, keys: data.size, value_bytes: bytes, ...received })
}

let stdinLines = null
function nextLine () {
  stdinLines = stdinLines || createInterface({ input: process.stdin })[Symbol.asyncIterator]()
  return stdinLines.next().then(({ value, done }) => (done ? '' : value.trim()))
}

const [mode, specText] = process.argv.slice(2)
const modes = { fanout, idle, large }
if (!modes[mode]) fail(`unknown mode ${mode}`)
modes[mode](JSON.parse(specText)).then(() => process.exit(0), (e) => fail(e.stack || String(e)))
