// y-websocket clients (npm yjs, y-websocket, ws) for tests/integration/test_websocket.py.
//
//   node clients.mjs converge URL_A URL_B DOC TOKEN   one client on each node edits concurrently
//   node clients.mjs awareness URL DOC TOKEN          two clients of one node see each other's presence
//   node clients.mjs awareness URL_A URL_B DOC TOKEN  the same with the clients on two nodes
//   node clients.mjs fetch URL DOC TOKEN              a fresh client syncs a doc: its data's sizes
//   node clients.mjs reconnect URL DOC                edits, the node is killed (the test says so on
//                                                     stdin), edits offline, the node restarts: resync
//   node clients.mjs killed URL_A URL_B DOC SEED       a client on each node edits concurrently (random
//                                                     places, seeded) while the test kills -9 node A and
//                                                     restarts it (it says so on stdin); both resync
//   node clients.mjs offline URL DOC TOKEN BYTES      edits BYTES offline (100 kB map values), reconnects
//                                                     and stays connected until the test says "stored"
//
// URL is ws://127.0.0.1:PORT/v1/ws (the provider appends /DOC). Prints one JSON line; exits 1 with a
// message when a step misses its deadline.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { createInterface } from 'node:readline'

const STEP_TIMEOUT_MS = 10000

function fail (message) {
  console.error(message)
  process.exit(1)
}

// Resolve once pred() holds, checked at every doc or awareness event and every 20 ms; reject at the deadline.
function waitFor (pred, what, describe = () => '', timeoutMs = STEP_TIMEOUT_MS) {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + timeoutMs
    const check = () => {
      let ok = false
      try { ok = pred() } catch (e) { return reject(e) }
      if (ok) return resolve()
      if (Date.now() > deadline) return reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what} ${describe()}`))
      setTimeout(check, 20)
    }
    check()
  })
}

// A map's JSON with its keys sorted: two equal Y.Maps may list their keys in different orders.
function sorted (object) {
  return JSON.stringify(Object.fromEntries(Object.entries(object).sort(([x], [y]) => (x < y ? -1 : 1))))
}

function connect (url, doc, token) {
  const ydoc = new Y.Doc()
  const provider = new WebsocketProvider(url, doc, ydoc, {
    WebSocketPolyfill: WebSocket,
    params: token ? { token } : {},
    disableBc: true
  })
  return { ydoc, provider, text: ydoc.getText('text'), data: ydoc.getMap('data') }
}

async function converge ([urlA, urlB, doc, token]) {
  const a = connect(urlA, doc, token)
  const b = connect(urlB, doc, token)
  await waitFor(() => a.provider.synced && b.provider.synced, 'both clients synced')
  // Neither client has seen the other's edits: they are concurrent.
  a.ydoc.transact(() => {
    a.text.insert(0, 'hello from A 😀. ')
    a.data.set('a', 1)
    a.data.set('both', 'A')
  })
  b.ydoc.transact(() => {
    b.text.insert(0, 'hello from B, wörld. ')
    b.data.set('b', 2)
    b.data.set('both', 'B')
  })
  await waitFor(
    () => a.text.toString() === b.text.toString() &&
      a.text.toString().includes('from A') && a.text.toString().includes('from B') &&
      sorted(a.data.toJSON()) === sorted(b.data.toJSON()) &&
      a.data.has('a') && a.data.has('b'),
    'both clients to converge',
    () => JSON.stringify({ a: [a.text.toString(), a.data.toJSON()], b: [b.text.toString(), b.data.toJSON()] })
  )
  const result = { text: a.text.toString(), data: a.data.toJSON() }
  a.provider.destroy()
  b.provider.destroy()
  console.log(JSON.stringify(result))
}

async function awareness (args) {
  const [urlA, urlB, doc, token] = args.length === 4 ? args : [args[0], ...args]
  const a = connect(urlA, doc, token)
  const b = connect(urlB, doc, token)
  await waitFor(() => a.provider.synced && b.provider.synced, 'both clients synced')
  a.provider.awareness.setLocalStateField('user', { name: 'alice' })
  b.provider.awareness.setLocalStateField('user', { name: 'bob' })
  const alice = a.ydoc.clientID
  const bob = b.ydoc.clientID
  await waitFor(() => b.provider.awareness.getStates().get(alice)?.user?.name === 'alice', "alice's presence at b")
  await waitFor(() => a.provider.awareness.getStates().get(bob)?.user?.name === 'bob', "bob's presence at a")
  const seen = b.provider.awareness.getStates().get(alice)
  // Cut a's connection without a goodbye: only the node can tell b that alice left (b's own
  // timeout would take 30 s).
  a.provider.shouldConnect = false
  a.provider.ws.terminate()
  await waitFor(() => !b.provider.awareness.getStates().has(alice), "alice's departure at b")
  b.provider.destroy()
  a.provider.destroy()
  console.log(JSON.stringify({ seen, removed: true }))
}

// The next line the test writes on stdin; rejects at the deadline.
const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]()
function nextLine (timeoutMs = 40000) {
  return Promise.race([
    stdinLines.next().then(({ value, done }) => done ? Promise.reject(new Error('stdin closed')) : value),
    new Promise((resolve, reject) => setTimeout(() => reject(new Error('no line on stdin')), timeoutMs).unref())
  ])
}

async function reconnect ([url, doc]) {
  const a = connect(url, doc)
  await waitFor(() => a.provider.synced, 'synced')
  a.text.insert(0, 'before the kill. ')
  console.log(JSON.stringify({ step: 'edited' }))
  if (await nextLine() !== 'killed') fail('expected "killed"')
  await waitFor(() => !a.provider.wsconnected, 'the provider to see the connection drop')
  a.text.insert(a.text.length, 'while the node was down.')
  a.data.set('offline', true)
  console.log(JSON.stringify({ step: 'offline' }))
  if (await nextLine() !== 'restarted') fail('expected "restarted"')
  // The provider reconnects with its backoff (at most 2.5 s) and both sides send what the other lacks.
  await waitFor(() => a.provider.wsconnected && a.provider.synced, 'the provider to reconnect and resync', () => '', 20000)
  const result = { step: 'done', text: a.text.toString(), data: a.data.toJSON() }
  a.provider.destroy()
  console.log(JSON.stringify(result))
}

const [mode, ...args] = process.argv.slice(2)
async function fetch ([url, doc, token]) {
  const a = connect(url, doc, token)
  await waitFor(() => a.provider.synced, 'synced', () => '', 20000)
  const sizes = Object.fromEntries(Object.entries(a.data.toJSON()).map(([key, value]) => [key, String(value).length]))
  a.provider.destroy()
  console.log(JSON.stringify({ sizes }))
}

// A small seeded PRNG (mulberry32): the test prints the seed, and the same seed makes the same edits.
function random (seed) {
  let state = seed >>> 0
  return () => {
    state = (state + 0x6D2B79F5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

// Concurrent edits on two nodes, through a kill -9 of node A and its restart.
async function killed ([urlA, urlB, doc, seed]) {
  const next = random(Number(seed))
  const a = connect(urlA, doc)
  const b = connect(urlB, doc)
  await waitFor(() => a.provider.synced && b.provider.synced, 'both clients synced')
  let edits = 0
  const edit = (client, name) => {
    const at = Math.floor(next() * (client.text.length + 1))
    // Non-ASCII but one UTF-16 unit: a random delete never splits a character.
    client.text.insert(at, `${name}${edits}${next() < 0.2 ? 'ö' : ''} `)
    if (next() < 0.3 && client.text.length > 10) client.text.delete(Math.floor(next() * (client.text.length - 3)), 2)
    client.data.set(`${name}${edits % 7}`, edits)
    edits++
  }
  // Both clients edit every 10 ms until the node is back, A's client through the kill and offline.
  const timer = setInterval(() => { edit(a, 'A'); edit(b, 'B') }, 10)
  await waitFor(() => edits >= 40, 'edits before the kill')
  console.log(JSON.stringify({ step: 'editing' }))
  if (await nextLine() !== 'killed') fail('expected "killed"')
  await waitFor(() => !a.provider.wsconnected, "A's client to see its node go")
  const atKill = edits
  await waitFor(() => edits >= atKill + 40, 'edits while node A is down')
  console.log(JSON.stringify({ step: 'offline' }))
  if (await nextLine() !== 'restarted') fail('expected "restarted"')
  await waitFor(() => a.provider.wsconnected && a.provider.synced, "A's client to reconnect and resync", () => '', 20000)
  clearInterval(timer)
  await waitFor(
    () => a.text.toString() === b.text.toString() && sorted(a.data.toJSON()) === sorted(b.data.toJSON()),
    'both clients to converge', () => JSON.stringify([a.text.length, b.text.length]), 20000
  )
  const result = { step: 'done', edits, text: a.text.toString(), data: a.data.toJSON() }
  console.log(JSON.stringify(result))
  if (await nextLine() !== 'stored') fail('expected "stored"')
  a.provider.destroy()
  b.provider.destroy()
}

// Offline edits larger than the node's frames: the provider's sync step 2 carries all of them.
async function offline ([url, doc, token, bytes]) {
  const a = connect(url, doc, token)
  await waitFor(() => a.provider.synced, 'synced')
  a.provider.disconnect()
  await waitFor(() => !a.provider.wsconnected, 'the provider to disconnect')
  const valueBytes = 100000
  for (let i = 0; i * valueBytes < Number(bytes); i++) a.data.set(`k${i}`, `${i}`.padEnd(valueBytes, '.'))
  a.text.insert(0, 'written offline')
  let closes = 0
  a.provider.on('connection-close', () => { closes++ })
  a.provider.connect()
  await waitFor(() => a.provider.wsconnected && a.provider.synced, 'the provider to reconnect and sync')
  console.log(JSON.stringify({ step: 'reconnected', keys: a.data.size }))
  if (await nextLine() !== 'stored') fail('expected "stored"')
  const result = { step: 'done', closes, connected: a.provider.wsconnected, text: a.text.toString() }
  a.provider.destroy()
  console.log(JSON.stringify(result))
}

const scenarios = { converge, awareness, reconnect, fetch, offline, killed }
if (!scenarios[mode]) fail(`unknown scenario ${mode}`)
scenarios[mode](args).then(() => process.exit(0), (e) => fail(e.stack || String(e)))
