// A textarea bound to the Y.Text "text" of a crdtsync doc, through the node's y-websocket endpoint.
// Open index.html?ws=ws://HOST:PORT/v1/ws&doc=DOC[&token=TOKEN][&name=NAME]; bundle this file first
// (see README.md): the page loads bundle.js.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'

const params = new URLSearchParams(window.location.search)
const url = params.get('ws') || `${window.location.protocol === 'https:' ? 'wss' : 'ws'}://${window.location.host}/v1/ws`
const docId = params.get('doc') || 'examples/browser'
const token = params.get('token')
const name = params.get('name') || `browser-${Math.floor(Math.random() * 1000)}`

const ydoc = new Y.Doc()
const provider = new WebsocketProvider(url, docId, ydoc, { params: token ? { token } : {} })
const ytext = ydoc.getText('text')
const area = document.getElementById('text')
const peers = document.getElementById('peers')
document.getElementById('doc').textContent = docId
document.getElementById('node').textContent = url

provider.on('status', ({ status }) => {
  document.getElementById('status').textContent = status
  document.body.dataset.status = status
})
provider.on('sync', (synced) => { document.body.dataset.synced = String(synced) })

// Remote changes: rewrite the textarea, keeping the caret where it was (good enough for a demo).
ytext.observe((event) => {
  if (event.transaction.local) return
  const caret = area.selectionStart
  area.value = ytext.toString()
  area.selectionStart = area.selectionEnd = Math.min(caret, area.value.length)
})

// Local typing: apply the smallest replacement that turns the old text into the new one.
area.addEventListener('input', () => {
  const before = ytext.toString()
  const after = area.value
  let start = 0
  while (start < before.length && start < after.length && before[start] === after[start]) start++
  let endBefore = before.length
  let endAfter = after.length
  while (endBefore > start && endAfter > start && before[endBefore - 1] === after[endAfter - 1]) {
    endBefore--
    endAfter--
  }
  ydoc.transact(() => {
    if (endBefore > start) ytext.delete(start, endBefore - start)
    if (endAfter > start) ytext.insert(start, after.slice(start, endAfter))
  })
})

// Presence: who else has this doc open on the same node.
const color = `hsl(${Math.floor(Math.random() * 360)}, 60%, 45%)`
provider.awareness.setLocalStateField('user', { name, color })
provider.awareness.on('change', () => {
  peers.replaceChildren(...[...provider.awareness.getStates()]
    .filter(([id, state]) => id !== ydoc.clientID && state.user)
    .map(([, state]) => {
      const badge = document.createElement('span')
      badge.textContent = state.user.name
      badge.style.background = state.user.color
      return badge
    }))
})

window.crdtsync = { ydoc, provider, ytext }
