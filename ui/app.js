// The web monitor: plain browser JavaScript, served by the server itself (uPlot for the charts, vendored from npm).
/* global confirm, location, ResizeObserver */
import UPlot from '/ui/vendor/uPlot.esm.js'
const $ = (selector) => document.querySelector(selector)
const state = { key: sessionStorage.getItem('interpreter-key'), admin: false, tab: 'status', timers: [], socket: null, logs: null, following: null, terminal: { sandbox: null, pid: null, socket: null, term: null }, sandboxes: { rows: [], sort: 'age_s', desc: false }, files: null }

// ---------- API ----------
async function api (method, path, body) {
  const response = await fetch(path, {
    method,
    headers: { authorization: `Bearer ${state.key}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  if (response.status === 204) return null
  const data = await response.json().catch(() => null)
  if (!response.ok) throw new Error(data?.error?.message ?? `The server answered ${response.status}`)
  return data
}

/** Reads a server-sent event stream from an authenticated GET, calling onEvent({ event, data, id }) until aborted. */
async function followSse (path, signal, onEvent) {
  const response = await fetch(path, { headers: { authorization: `Bearer ${state.key}` }, signal })
  if (!response.ok) throw new Error((await response.json()).error.message)
  const reader = response.body.getReader()
  const decoder = new TextDecoder()
  let buffer = ''
  void (async () => {
    try {
      for (;;) {
        const { value, done } = await reader.read()
        if (done) return
        buffer += decoder.decode(value, { stream: true })
        let cut
        while ((cut = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, cut)
          buffer = buffer.slice(cut + 2)
          const field = (name) => block.split('\n').find(l => l.startsWith(`${name}: `))?.slice(name.length + 2)
          const data = field('data')
          if (data !== undefined) onEvent({ event: field('event') ?? 'message', id: field('id'), data: JSON.parse(data) })
        }
      }
    } catch {}
  })()
}

function showError (err) {
  const box = $('#error')
  box.textContent = err ? `Error: ${err.message ?? err}` : ''
  box.hidden = !err
}

async function attempt (fn) {
  try {
    showError(null)
    return await fn()
  } catch (err) {
    showError(err)
  }
}

const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v)
    else node.setAttribute(k, v)
  }
  for (const child of children) node.append(child)
  return node
}

// ---------- code highlighting (keywords, strings, comments, numbers) ----------
const KEYWORDS = /^(def|class|return|import|from|as|for|while|if|elif|else|try|except|finally|with|in|not|and|or|is|None|True|False|lambda|yield|const|let|var|function|new|await|async|echo|then|fi|do|done)$/
function highlight (code) {
  const out = document.createDocumentFragment()
  const pattern = /(#[^\n]*|\/\/[^\n]*)|("(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`(?:\\.|[^`\\])*`)|(\b\d+(?:\.\d+)?\b)|([A-Za-z_]\w*)/g
  let last = 0
  for (const match of code.matchAll(pattern)) {
    out.append(code.slice(last, match.index))
    const [text, comment, string, number, word] = match
    const kind = comment ? 'c' : string ? 's' : number ? 'n' : KEYWORDS.test(word) ? 'k' : null
    out.append(kind ? el('span', { class: `tok-${kind}` }, text) : text)
    last = match.index + text.length
  }
  out.append(code.slice(last))
  return out
}

/** Renders stored messages or streamed chunks into a transcript element. */
class Transcript {
  constructor (root) { this.root = root; this.open = null }
  clear () { this.root.replaceChildren(); this.open = null }
  add (node) { this.root.append(node); this.root.scrollTop = this.root.scrollHeight; return node }

  message (m) {
    const content = typeof m.content === 'string' ? m.content : JSON.stringify(m.content)
    if (m.type === 'message') this.add(el('div', { class: `msg ${m.role}` }, content))
    else if (m.type === 'code') this.add(el('pre', { class: 'code', 'data-lang': m.format ?? '' }, highlight(content)))
    else if (m.type === 'console') this.add(el('pre', { class: 'output' }, content))
    else if (m.type === 'image') this.add(el('img', { alt: 'plot', src: `data:image/png;base64,${content}` }))
  }

  chunk (c, onConfirm) {
    const key = `${c.role}:${c.type}:${c.id ?? ''}`
    if (c.type === 'image') return this.message(c)
    if (c.type === 'confirmation') return this.confirmation(c, onConfirm)
    if (c.start) {
      const node = c.type === 'code'
        ? el('pre', { class: 'code', 'data-lang': c.format ?? '' })
        : c.type === 'console'
          ? el('pre', { class: 'output' })
          : el('div', { class: `msg ${c.role}` })
      node.dataset.raw = ''
      this.open = { key, node: this.add(node) }
      return
    }
    if (!this.open || this.open.key !== key) return
    if (c.end) {
      if (c.type === 'code') this.open.node.replaceChildren(highlight(this.open.node.dataset.raw))
      if (c.type === 'console' && !this.open.node.dataset.raw) this.open.node.remove()
      this.open = null
      return
    }
    if (typeof c.content === 'string') {
      this.open.node.dataset.raw += c.content
      this.open.node.append(c.content)
      this.root.scrollTop = this.root.scrollHeight
    }
  }

  confirmation (c, onConfirm) {
    const box = el('div', { class: 'confirm' }, el('div', {}, `Run this ${c.content.format} code?`))
    const decide = (approve) => { box.querySelectorAll('button').forEach(b => { b.disabled = true }); box.append(el('div', { class: 'hint' }, approve ? 'approved' : 'declined')); onConfirm(c.content.id, approve) }
    box.append(el('button', { type: 'button', class: 'approve', onclick: () => decide(true) }, 'Approve'), ' ', el('button', { type: 'button', class: 'decline', onclick: () => decide(false) }, 'Decline'))
    this.add(box)
  }
}

// ---------- tabs ----------
function showTab (tab) {
  state.tab = tab
  for (const section of document.querySelectorAll('main > section')) section.hidden = section.id !== tab
  for (const button of document.querySelectorAll('#tabs [data-tab]')) button.classList.toggle('active', button.dataset.tab === tab)
  state.timers.forEach(clearInterval)
  state.timers = []
  if (tab !== 'logs') stopLogs()
  if (tab !== 'sessions') stopFollowing()
  if (tab !== 'terminal') detachTerminal()
  const open = { status: openStatus, sessions: openSessions, sandboxes: openSandboxes, audit: openAudit, terminal: openTerminal, playground: openPlayground, logs: openLogs, settings: openSettings }[tab]
  void attempt(open)
}

// ---------- status ----------
let previous = null
async function openStatus () {
  await refreshStatus()
  state.timers.push(setInterval(() => { void attempt(refreshStatus) }, 2000))
  $('#charts').hidden = !state.admin
  if (state.admin) {
    await refreshCharts()
    state.timers.push(setInterval(() => { void attempt(refreshCharts) }, 10_000))
  }
}

const mb = (n) => n >= 1024 ? `${(n / 1024).toFixed(1)} GB` : `${n} MB`

async function refreshStatus () {
  const [ready, stats] = await Promise.all([fetch('/v1/ready').then(r => r.json()), api('GET', '/v1/stats')])
  const now = Date.now()
  const rate = (field) => previous ? ((stats[field] - previous.stats[field]) / ((now - previous.at) / 1000)).toFixed(2) : '…'
  const latency = (count, seconds) => previous && stats[count] > previous.stats[count]
    ? `${(((stats[seconds] - previous.stats[seconds]) / (stats[count] - previous.stats[count])) * 1000).toFixed(1)} ms`
    : '—'
  const cap = stats.capacity
  const recovery = ready.sandboxes?.recovery
  const cards = [
    ...Object.entries(ready.checks).map(([name, value]) => [name, value, value === 'ok']),
    ['pool', `${stats.pool.warm} warm / ${stats.pool.busy} busy`],
    ['capacity', `${cap.live} / ${cap.max} live · ${cap.paused} paused`, cap.live < cap.max],
    ['memory budget', `${mb(cap.memory_used_mb)} / ${mb(cap.memory_budget_mb)}`, cap.memory_used_mb < cap.memory_budget_mb],
    ['start queue', `${stats.pool.queued} waiting · ${stats.pool.avg_start_ms} ms starts`],
    ...(recovery ? [['recovery', `${recovery.state} · ${recovery.adopted}/${recovery.total} adopted`, recovery.state !== 'failed']] : []),
    ['sessions', String(stats.sessions)],
    ['sandboxes', String(stats.sandboxes)],
    ['requests / s', rate('requests_total')],
    ['request latency', latency('requests_total', 'request_seconds_total')],
    ['executions / s', rate('executions_total')],
    ['execution time', latency('executions_total', 'execution_seconds_total')],
    // One card per Docker host (SANDBOX_DOCKER_HOSTS), always.
    ...stats.hosts.map(h => [`host ${h.name}`, `${h.status} · ${h.live} live · ${h.warm} warm · ${h.paused} paused · ${mb(h.memory_used_mb)}`, h.status === 'up'])
  ]
  previous = { at: now, stats }
  $('#cards').replaceChildren(...cards.map(([label, value, ok]) =>
    el('div', { class: 'card', 'data-card': label }, el('div', { class: 'label' }, label), el('div', { class: `value ${ok === true ? 'ok' : ok === false ? 'bad' : ''}` }, value))))
}

// ---------- charts (uPlot) ----------
const COLORS = ['#1d5fd6', '#d6461d', '#18794e', '#8a5a00', '#7a3fd6', '#0a8a8a', '#b42318', '#4b5563', '#c0267d', '#2f6f00']
const charts = new Map()
/** One chart: made once (its series named by `labels`), then fed; remade when its series change (a new protocol). */
function plot (name, labels, columns) {
  const figure = document.querySelector(`[data-chart="${name}"]`)
  let chart = charts.get(name)
  if (chart && chart.labels.join() !== labels.join()) { chart.plot.destroy(); chart = null }
  if (!chart) {
    const opts = {
      width: Math.max(240, figure.clientWidth - 8),
      height: 170,
      legend: { live: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true } },
      axes: [{ size: 30 }, { size: 56, values: (_u, ticks) => ticks.map(v => Math.abs(v) >= 10_000 ? `${Math.round(v / 1000)}k` : Math.abs(v) >= 1000 ? `${(v / 1000).toFixed(1)}k` : String(+v.toFixed(2))) }],
      series: [{}, ...labels.map((label, i) => ({ label, stroke: COLORS[i % COLORS.length], width: 1.6, spanGaps: true, points: { show: false } }))]
    }
    chart = { labels, plot: new UPlot(opts, columns, figure) }
    charts.set(name, chart)
  } else chart.plot.setData(columns)
}

async function refreshCharts () {
  const { samples, interval_s: interval } = await api('GET', '/v1/admin/timeseries?minutes=60')
  const t = samples.map(s => s.t / 1000)
  const per = (n) => n / interval
  const protocols = [...new Set(samples.flatMap(s => Object.keys(s.executions)))].sort()
  const hosts = [...new Set(samples.flatMap(s => Object.keys(s.hosts)))].sort()
  plot('requests', ['requests / s'], [t, samples.map(s => per(s.requests))])
  plot('latency', ['p50', 'p99'], [t, samples.map(s => s.p50_ms), samples.map(s => s.p99_ms)])
  plot('executions', protocols.length ? protocols : ['(none yet)'], [t, ...(protocols.length ? protocols.map(p => samples.map(s => per(s.executions[p] ?? 0))) : [samples.map(() => 0)])])
  plot('sandboxes', ['live', 'warm', 'paused'], [t, samples.map(s => s.live), samples.map(s => s.warm), samples.map(s => s.paused)])
  plot('starts', ['queued', 'start ms'], [t, samples.map(s => s.queued), samples.map(s => s.start_ms)])
  plot('memory', ['used', 'budget'], [t, samples.map(s => s.memory_used_mb), samples.map(s => s.memory_budget_mb)])
  plot('hosts', hosts.length ? hosts : ['(no host)'], [t, ...(hosts.length ? hosts.map(h => samples.map(s => s.hosts[h] ?? 0)) : [samples.map(() => 0)])])
  $('#charts').dataset.samples = String(samples.length)
}

// Charts follow the page's width (a phone turned, a window resized).
new ResizeObserver(() => {
  for (const [name, chart] of charts) {
    const figure = document.querySelector(`[data-chart="${name}"]`)
    chart.plot.setSize({ width: Math.max(240, figure.clientWidth - 8), height: 170 })
  }
}).observe($('#charts'))

// ---------- sessions ----------
async function openSessions () {
  const list = await api('GET', `/v1/sessions?limit=100${state.admin ? '&all=true' : ''}`)
  const items = list.data.map(s => el('li', { 'data-id': s.id, onclick: () => attempt(() => openTranscript(s.id)) },
    s.title ?? s.id, el('small', {}, `${s.owner} · ${s.message_count} messages · ${new Date(s.created_at).toLocaleString()}`)))
  $('#session-list').replaceChildren(...(items.length ? items : [el('li', {}, 'No sessions yet.')]))
}

/**
 * The sandboxes the key may see (an admin: all) with their live CPU and memory, sorted and filtered here; each with
 * what can be done to it: pause or resume, a terminal, its files, delete.
 */
async function openSandboxes () {
  await refreshSandboxes()
  state.timers.push(setInterval(() => { void attempt(refreshSandboxes) }, 5000))
}

const duration = (s) => s < 60 ? `${s} s` : s < 3600 ? `${Math.round(s / 60)} min` : s < 86400 ? `${(s / 3600).toFixed(1)} h` : `${(s / 86400).toFixed(1)} d`
const bytes = (n) => n === null ? '…' : n >= 1 << 30 ? `${(n / (1 << 30)).toFixed(2)} GB` : `${(n / (1 << 20)).toFixed(1)} MB`

async function refreshSandboxes () {
  const { data } = await api('GET', '/v1/admin/sandboxes')
  state.sandboxes.rows = data
  renderSandboxes()
}

function renderSandboxes () {
  const { rows, sort, desc } = state.sandboxes
  const filter = $('#sandbox-filter').value.trim().toLowerCase()
  const shown = rows
    .filter(s => !filter || [s.id, s.key, s.session_id, s.language, s.host, s.runtime, s.state, s.network, s.source].some(v => String(v ?? '').toLowerCase().includes(filter)))
    .sort((a, b) => {
      const x = a[sort] ?? -1
      const y = b[sort] ?? -1
      return (x < y ? -1 : x > y ? 1 : 0) * (desc ? -1 : 1)
    })
  const act = (label, method, path) => el('button', { class: 'quiet', 'data-action': label, onclick: () => attempt(async () => { await api(method, path); await refreshSandboxes() }) }, label)
  const body = shown.map(s => el('tr', { 'data-id': s.id },
    el('td', { title: s.source ? `made by ${s.source}` : '' }, s.id), el('td', {}, s.key), el('td', {}, s.session_id ?? '—'), el('td', {}, s.language),
    el('td', {}, s.host), el('td', {}, s.runtime),
    el('td', { class: `state ${s.state}` }, s.state === 'paused' ? `paused (${s.pause_mode === 'memory' ? 'memory kept' : 'files kept'})` : s.state), el('td', {}, duration(s.age_s)), el('td', {}, duration(s.idle_s)),
    el('td', { 'data-cell': 'cpu' }, s.state === 'paused' ? '—' : s.cpu_percent === null ? '…' : `${s.cpu_percent.toFixed(1)} %`),
    el('td', { 'data-cell': 'memory' }, s.state === 'paused' ? '—' : `${bytes(s.memory_bytes)} / ${mb(s.memory_limit_mb)}`),
    el('td', { class: 'clip', title: s.network }, s.network),
    el('td', { class: 'actions' }, s.state === 'paused' ? act('resume', 'POST', `/v1/sandboxes/${s.id}/resume`) : act('pause', 'POST', `/v1/sandboxes/${s.id}/pause`),
      el('button', { class: 'quiet', 'data-action': 'terminal', onclick: () => startTerminal(s.id) }, 'terminal'),
      el('button', { class: 'quiet', 'data-action': 'files', onclick: () => attempt(() => openFiles(s.id, '')) }, 'files'),
      el('button', { class: 'quiet', 'data-action': 'delete', onclick: () => attempt(async () => { if (confirm(`Delete ${s.id} and everything in it?`)) { await api('DELETE', `/v1/sandboxes/${s.id}`); await refreshSandboxes() } }) }, 'delete'))))
  $('#sandbox-rows').replaceChildren(...(body.length ? body : [el('tr', {}, el('td', { colspan: '13' }, rows.length ? 'No sandbox matches.' : 'No sandboxes.'))]))
  $('#sandbox-count').textContent = `${shown.length} of ${rows.length}`
  for (const th of document.querySelectorAll('#sandboxes th[data-sort]')) th.classList.toggle('sorted', th.dataset.sort === sort)
}

// ---------- a sandbox's files: list, download, upload ----------
async function openFiles (sandbox, path) {
  state.files = { sandbox, path }
  const list = await api('GET', `/v1/sandboxes/${sandbox}/files${path ? `?path=${encodeURIComponent(path)}` : ''}`)
  $('#files').hidden = false
  $('#files-where').textContent = `${sandbox} · /home/user/${path}`
  const items = list.data.map(f => el('li', { 'data-path': f.path },
    f.type === 'directory'
      ? el('button', { class: 'quiet', onclick: () => attempt(() => openFiles(sandbox, f.path)) }, `${f.name}/`)
      : el('button', { class: 'quiet', 'data-action': 'download', onclick: () => attempt(() => download(sandbox, f.path, f.name)) }, f.name),
    el('small', {}, f.type === 'directory' ? 'directory' : bytes(f.size))))
  $('#files-list').replaceChildren(...(items.length ? items : [el('li', {}, 'Empty.')]))
}

async function download (sandbox, path, name) {
  const response = await fetch(`/v1/sandboxes/${sandbox}/files/${path.split('/').map(encodeURIComponent).join('/')}`, { headers: { authorization: `Bearer ${state.key}` } })
  if (!response.ok) throw new Error((await response.json()).error.message)
  const link = el('a', { href: URL.createObjectURL(await response.blob()), download: name })
  link.click()
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000)
}

async function upload () {
  const file = $('#files-upload').files[0]
  if (!file || !state.files) return
  const { sandbox, path } = state.files
  const target = [path, file.name].filter(Boolean).join('/')
  const response = await fetch(`/v1/sandboxes/${sandbox}/files/${target.split('/').map(encodeURIComponent).join('/')}`, { method: 'PUT', headers: { authorization: `Bearer ${state.key}`, 'content-type': 'application/octet-stream' }, body: file })
  if (!response.ok) throw new Error((await response.json()).error.message)
  $('#files-upload').value = ''
  await openFiles(sandbox, path)
}

// ---------- audit trail ----------
function auditQuery () {
  const q = new URLSearchParams()
  if (state.admin && $('#audit-key').value.trim()) q.set('key', $('#audit-key').value.trim())
  if ($('#audit-action').value) q.set('action', $('#audit-action').value)
  if ($('#audit-target').value.trim()) q.set('target', $('#audit-target').value.trim())
  return q
}

async function openAudit () {
  $('#audit-key').closest('label').hidden = !state.admin
  await refreshAudit()
  state.timers.push(setInterval(() => { void attempt(refreshAudit) }, 5000))
}

async function refreshAudit () {
  const q = auditQuery()
  q.set('limit', '200')
  const { data } = await api('GET', `/v1/admin/audit?${q}`)
  const detail = (d) => Object.entries(d).filter(([, v]) => v !== null && v !== '').map(([k, v]) => `${k}=${v}`).join(' · ')
  const rows = data.map(e => el('tr', { 'data-action': e.action, 'data-target': e.target ?? '' },
    el('td', { title: e.at }, new Date(e.at).toLocaleString()), el('td', {}, e.key), el('td', {}, e.action), el('td', {}, e.target ?? '—'), el('td', {}, e.ip ?? '—'),
    el('td', { class: 'clip wide', title: detail(e.detail) }, detail(e.detail))))
  $('#audit-rows').replaceChildren(...(rows.length ? rows : [el('tr', {}, el('td', { colspan: '6' }, 'Nothing recorded yet.'))]))
}

async function exportAudit () {
  const response = await fetch(`/v1/admin/audit.jsonl?${auditQuery()}`, { headers: { authorization: `Bearer ${state.key}` } })
  if (!response.ok) throw new Error((await response.json()).error.message)
  const link = el('a', { href: URL.createObjectURL(await response.blob()), download: 'audit.jsonl' })
  link.click()
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000)
}

/**
 * A session's stored messages, then, live, what its runs stream from now on. When a run starts or ends, the
 * stored messages are shown again (they hold the user's message and everything the run kept), in order with
 * the live chunks around them.
 */
async function openTranscript (id) {
  for (const li of document.querySelectorAll('#session-list li')) li.classList.toggle('active', li.dataset.id === id)
  stopFollowing()
  const controller = new AbortController()
  state.following = controller
  const view = new Transcript($('#transcript'))
  const confirmHere = (codeId, approve) => attempt(() => api('POST', `/v1/sessions/${id}/confirm`, { code_id: codeId, approve }))
  // Events wait behind the first reading of the messages, which waits until the events are followed: nothing is missed.
  let following
  let chain = new Promise(resolve => { following = resolve }).then(() => showStored(id, view))
  const queue = (fn) => { chain = chain.then(fn).catch(showError) }
  await followSse(`/v1/sessions/${id}/events?after=now`, controller.signal, (e) => {
    if (e.event === 'message') queue(() => view.chunk(e.data, confirmHere))
    else if (e.event === 'run_start' || e.event === 'done') queue(() => showStored(id, view))
  })
  following()
  await chain
}

async function showStored (id, view) {
  const [session, messages] = await Promise.all([api('GET', `/v1/sessions/${id}`), api('GET', `/v1/sessions/${id}/messages?limit=1000`)])
  const root = view.root
  view.clear()
  view.add(el('div', { class: 'row' }, el('strong', {}, session.title ?? session.id), el('span', { class: 'hint' }, `${session.owner} · ${session.usage.total_tokens} tokens`),
    el('button', { type: 'button', id: 'delete-session', onclick: () => attempt(async () => { if (confirm('Delete this session?')) { stopFollowing(); await api('DELETE', `/v1/sessions/${id}`); root.replaceChildren(); await openSessions() } }) }, 'Delete')))
  for (const m of messages.data) view.message(m)
}

function stopFollowing () {
  state.following?.abort()
  state.following = null
}

// ---------- terminal ----------
/** Opens the terminal tab on a sandbox: a new shell there (GET /v1/sandboxes/:id/pty as a WebSocket). */
function startTerminal (sandbox) {
  detachTerminal()
  state.terminal = { sandbox, pid: null, socket: null, term: null }
  $('#tabs [data-tab="terminal"]').hidden = false
  showTab('terminal')
}

/**
 * Draws the terminal and attaches it: to a new shell, or again to the one this tab started (?pid=, the server replays
 * its recent screen). Keys leave as binary frames, resizes as JSON messages; the shell's bytes come back as binary.
 */
async function openTerminal () {
  const t = state.terminal
  if (!t.sandbox) { $('#term-status').textContent = 'Open a terminal from the Sandboxes tab.'; return }
  $('#term-title').textContent = t.sandbox
  const { Terminal } = await import('/ui/vendor/xterm.mjs')
  const screen = $('#term-screen')
  screen.replaceChildren()
  const term = new Terminal({ cols: 100, rows: 28, convertEol: false, cursorBlink: true, fontSize: 13 })
  term.open(screen)
  t.term = term
  const query = t.pid ? `pid=${t.pid}` : `cols=${term.cols}&rows=${term.rows}`
  const socket = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/sandboxes/${encodeURIComponent(t.sandbox)}/pty?${query}`, ['interpreter.v1', `bearer.${state.key}`])
  socket.binaryType = 'arraybuffer'
  t.socket = socket
  const encoder = new TextEncoder()
  socket.onmessage = (message) => {
    if (message.data instanceof ArrayBuffer) return term.write(new Uint8Array(message.data))
    const m = JSON.parse(message.data)
    if (m.type === 'ready') {
      t.pid = m.pid
      $('#term-status').textContent = `shell ${m.pid}`
      if (m.pty) socket.send(JSON.stringify({ type: 'resize', cols: term.cols, rows: term.rows }))
    } else if (m.type === 'exit') {
      t.pid = null
      $('#term-status').textContent = `the shell ended (${m.status}${m.exit_code === null ? '' : `, exit ${m.exit_code}`})`
    } else if (m.type === 'error') showError(new Error(m.error.message))
  }
  socket.onclose = (event) => { if (t.socket === socket && event.code !== 1000) $('#term-status').textContent = `disconnected (${event.reason || event.code})` }
  term.onData((data) => { if (socket.readyState === 1) socket.send(encoder.encode(data)) })
  term.onResize(({ cols, rows }) => { if (socket.readyState === 1) socket.send(JSON.stringify({ type: 'resize', cols, rows })) })
  term.focus()
}

/** Leaves the shell running (it is reattached when the tab is opened again) and frees the drawing. */
function detachTerminal () {
  const t = state.terminal
  const socket = t.socket
  t.socket = null
  socket?.close(1000)
  t.term?.dispose()
  t.term = null
}

// ---------- playground ----------
const playground = { view: null, running: null }
async function openPlayground () {
  playground.view ??= new Transcript($('#conversation'))
  const models = await api('GET', '/v1/models')
  const select = $('#model')
  const chosen = select.value
  select.replaceChildren(...models.data.map(m => el('option', { value: m.id }, m.id)))
  if (chosen) select.value = chosen
  if (!state.socket || state.socket.readyState > 1) connectSocket()
}

function connectSocket () {
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/ws`
  const socket = new WebSocket(url, ['interpreter.v1', `bearer.${state.key}`])
  state.socket = socket
  socket.onopen = () => socket.send(JSON.stringify({ type: 'hello' }))
  socket.onclose = () => { if (state.socket === socket) setRunning(null) }
  socket.onmessage = (message) => {
    const frame = JSON.parse(message.data)
    if (frame.type === 'hello') $('#pg-session').textContent = `session ${frame.session_id}`
    else if (frame.type === 'ack' && frame.of === 'chat') setRunning(frame.run_id)
    else if (frame.type === 'error') { showError(new Error(frame.error.message)); if (frame.of === 'chat') setRunning(null) } else if (frame.type === 'event') onEvent(frame)
  }
}

function onEvent (frame) {
  const view = playground.view
  if (frame.event === 'message') view.chunk(frame.data, (id, approve) => state.socket.send(JSON.stringify({ type: 'confirm', code_id: id, approve })))
  else if (frame.event === 'fallback') view.add(el('div', { class: 'hint' }, `model ${frame.data.from} failed; using ${frame.data.to}`))
  else if (frame.event === 'error') showError(new Error(frame.data.error.message))
  else if (frame.event === 'done') setRunning(null)
}

function setRunning (runId) {
  playground.running = runId
  $('#send').disabled = Boolean(runId)
  $('#interrupt').disabled = !runId
}

// ---------- logs ----------
async function openLogs () {
  stopLogs()
  const controller = new AbortController()
  state.logs = { controller, paused: false, held: [] }
  $('#log-pause').textContent = 'Pause'
  $('#log-lines').replaceChildren()
  const session = $('#log-session').value.trim()
  await followSse(`/v1/admin/logs?level=${$('#log-level').value}${session ? `&session=${encodeURIComponent(session)}` : ''}`, controller.signal, (e) => addLog(e.data))
}

function addLog (line) {
  if (!state.logs) return
  if (state.logs.paused) { state.logs.held.push(line); return }
  const { level, time, msg, pid, hostname, ...rest } = line
  const text = `${new Date(time).toLocaleTimeString()} ${msg ?? ''} ${JSON.stringify(rest)}`
  const list = $('#log-lines')
  list.prepend(el('li', { class: `l${level}` }, text))
  while (list.children.length > 500) list.lastChild.remove()
}

function stopLogs () {
  state.logs?.controller.abort()
  state.logs = null
}

// ---------- settings ----------
async function openSettings () {
  const settings = await api('GET', '/v1/settings')
  const form = $('#settings-form')
  form.default_model.replaceChildren(...settings.models.map(m => el('option', { value: m }, m)))
  form.default_model.value = settings.default_model ?? ''
  form.auto_run.checked = settings.auto_run
  for (const name of ['execution_timeout_ms', 'pool_size', 'rate_limit_per_minute', 'session_rate_limit_per_minute']) form[name].value = settings[name]
}

async function saveSettings (event) {
  event.preventDefault()
  const form = $('#settings-form')
  const body = { auto_run: form.auto_run.checked }
  if (form.default_model.value) body.default_model = form.default_model.value
  for (const name of ['execution_timeout_ms', 'pool_size', 'rate_limit_per_minute', 'session_rate_limit_per_minute']) body[name] = Number(form[name].value)
  $('#settings-status').textContent = ''
  await api('PATCH', '/v1/settings', body)
  $('#settings-status').textContent = 'Saved: applied without a restart, in every server process.'
  await openSettings()
}

// ---------- sign in ----------
async function signIn (key) {
  state.key = key
  try {
    await api('GET', '/v1/sessions?limit=1')
  } catch (err) {
    state.key = null
    sessionStorage.removeItem('interpreter-key')
    throw err
  }
  sessionStorage.setItem('interpreter-key', key)
  state.admin = await api('GET', '/v1/settings').then(() => true, () => false)
  for (const button of document.querySelectorAll('#tabs [data-admin]')) button.hidden = !state.admin
  $('#tabs').hidden = false
  $('#whoami').textContent = state.admin ? '(admin key)' : '(user key)'
  showTab('status')
}

function signOut () {
  sessionStorage.removeItem('interpreter-key')
  state.socket?.close()
  location.reload()
}

$('#signin-form').addEventListener('submit', (event) => { event.preventDefault(); void attempt(() => signIn($('#key').value.trim())) })
$('#signout').addEventListener('click', signOut)
for (const button of document.querySelectorAll('#tabs [data-tab]')) button.addEventListener('click', () => showTab(button.dataset.tab))
$('#chat-form').addEventListener('submit', (event) => {
  event.preventDefault()
  const content = $('#prompt').value.trim()
  if (!content || !state.socket) return
  playground.view.message({ role: 'user', type: 'message', content })
  state.socket.send(JSON.stringify({ type: 'chat', content, model: $('#model').value, auto_run: $('#autorun').checked }))
  $('#prompt').value = ''
  $('#send').disabled = true
})
$('#sandbox-filter').addEventListener('input', renderSandboxes)
for (const th of document.querySelectorAll('#sandboxes th[data-sort]')) {
  th.addEventListener('click', () => {
    const sandboxes = state.sandboxes
    sandboxes.desc = sandboxes.sort === th.dataset.sort ? !sandboxes.desc : false
    sandboxes.sort = th.dataset.sort
    renderSandboxes()
  })
}
$('#files-upload').addEventListener('change', () => attempt(upload))
$('#files-up').addEventListener('click', () => attempt(() => state.files && openFiles(state.files.sandbox, state.files.path.split('/').slice(0, -1).join('/'))))
$('#files-close').addEventListener('click', () => { $('#files').hidden = true; state.files = null })
for (const id of ['#audit-key', '#audit-target']) $(id).addEventListener('change', () => attempt(refreshAudit))
$('#audit-action').addEventListener('change', () => attempt(refreshAudit))
$('#audit-export').addEventListener('click', () => attempt(exportAudit))
$('#term-new').addEventListener('click', () => { if (state.terminal.sandbox) startTerminal(state.terminal.sandbox) })
$('#term-end').addEventListener('click', () => { state.terminal.socket?.send(JSON.stringify({ type: 'signal', signal: 'SIGHUP' })) })
$('#interrupt').addEventListener('click', () => state.socket?.send(JSON.stringify({ type: 'interrupt' })))
$('#log-pause').addEventListener('click', () => {
  if (!state.logs) return
  state.logs.paused = !state.logs.paused
  $('#log-pause').textContent = state.logs.paused ? 'Resume' : 'Pause'
  if (!state.logs.paused) state.logs.held.splice(0).forEach(addLog)
})
$('#log-level').addEventListener('change', () => attempt(openLogs))
$('#log-session').addEventListener('change', () => attempt(openLogs))
$('#settings-form').addEventListener('submit', (event) => attempt(() => saveSettings(event)))
$('#reload-models').addEventListener('click', () => attempt(async () => { await api('PATCH', '/v1/settings', { reload_models: true }); $('#settings-status').textContent = 'Models reloaded.'; await openSettings() }))
$('#reset-settings').addEventListener('click', () => attempt(async () => { await api('PATCH', '/v1/settings', { reset: true }); $('#settings-status').textContent = 'Back to the configuration\'s values, in every server process.'; await openSettings() }))

if (state.key) {
  for (const section of document.querySelectorAll('main > section')) section.hidden = true
  void attempt(() => signIn(state.key)).then(() => { if (!state.key) $('#signin').hidden = false })
}
