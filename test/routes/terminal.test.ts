// Open WebUI's terminal integration against our Open Terminal API, replayed call for call from its code (open-webui
// backend/open_webui/utils/tools.py set_terminal_servers, get_terminal_system_prompt, get_terminal_tools,
// get_terminal_cwd, execute_tool_server; routers/terminals.py proxy_terminal and ws_terminal; utils/terminals.py
// get_terminal_server_url and terminal_context_id; src/lib/apis/terminal for the file browser), with a connection of
// server_type orchestrator and policy_id "team": every request goes to {url}/p/team with X-User-Id,
// X-Session-Id = the chat and X-Terminal-Context-Id = chat:<chat>.
import t from 'tap'
import { WebSocket } from 'ws'
import { build, sandboxConfig, KEYS, REDIS_URL, flushPrefix } from '../helper.js'

interface Spec { name: string, description: string, parameters: { properties: Record<string, any>, required: string[] } }

/** Open WebUI's convert_openapi_to_tool_payload: one tool per operationId, path+query parameters and body properties. */
function convert (doc: { paths: Record<string, Record<string, any>> }): Spec[] {
  const tools: Spec[] = []
  for (const methods of Object.values(doc.paths)) {
    for (const op of Object.values(methods)) {
      if (!op.operationId) continue
      const tool: Spec = { name: op.operationId, description: op.description ?? op.summary, parameters: { properties: {}, required: [] } }
      for (const p of op.parameters ?? []) {
        tool.parameters.properties[p.name] = { type: p.schema?.type, description: p.description ?? '' }
        if (p.required) tool.parameters.required.push(p.name)
      }
      const schema = op.requestBody?.content?.['application/json']?.schema
      if (schema?.properties) { Object.assign(tool.parameters.properties, schema.properties); tool.parameters.required.push(...(schema.required ?? [])) }
      tools.push(tool)
    }
  }
  return tools
}

/** Python's urlencode of a dict: str() of each value (True/False for booleans). */
const urlencode = (params: Record<string, unknown>) => Object.entries(params)
  .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(typeof v === 'boolean' ? (v ? 'True' : 'False') : String(v))}`).join('&')

/** Open WebUI's execute_tool_server: the operation found by operationId, query params in the URL, every argument in the body. */
async function executeToolServer (url: string, doc: { paths: Record<string, Record<string, any>> }, headers: Record<string, string>, name: string, params: Record<string, unknown>) {
  for (const [routePath, methods] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      if (op.operationId !== name) continue
      const query: Record<string, unknown> = {}
      let path = routePath
      for (const p of op.parameters ?? []) {
        if (!(p.name in params)) continue
        const value = params[p.name]
        if (p.in === 'path') path = path.replace(`{${p.name}}`, encodeURIComponent(String(value)))
        if (p.in === 'query' && value !== null && !(value === '' && !p.required)) query[p.name] = value
      }
      let final = `${url.replace(/\/$/, '')}${path}`
      if (Object.keys(query).length) final += `?${urlencode(query)}`
      const withBody = ['post', 'put', 'patch', 'delete'].includes(method)
      const body = op.requestBody?.content ? params : {}
      const res = await fetch(final, { method: method.toUpperCase(), headers, ...(withBody ? { body: JSON.stringify(body) } : {}) })
      if (res.status >= 400) return { error: `HTTP error ${res.status}: ${await res.text()}` }
      const type = res.headers.get('content-type') ?? ''
      return type.includes('json') ? await res.json() as any : type.startsWith('text/') ? await res.text() : `data:${type};base64,${Buffer.from(await res.arrayBuffer()).toString('base64')}`
    }
  }
  throw new Error(`No matching route found for operationId: ${name}`)
}

t.test('Open WebUI\'s terminal integration, orchestrated per user and chat', async (t) => {
  const config = await sandboxConfig({ POOL_SIZE: '2' })
  const app = await build(t, config)
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  const base = await app.listen({ port: 0, host: '127.0.0.1' })
  // get_terminal_server_url: an orchestrator connection with a policy.
  const connection = { url: `${base}/terminal`, key: KEYS.alice, policy_id: 'team' }
  const url = `${connection.url}/p/${encodeURIComponent(connection.policy_id)}`

  // set_terminal_servers: the document with the connection's key, converted into tools.
  const docRes = await fetch(`${url}/openapi.json`, { headers: { Accept: 'application/json', 'Content-Type': 'application/json', Authorization: `Bearer ${connection.key}` } })
  t.equal(docRes.status, 200)
  const doc = await docRes.json() as { paths: Record<string, Record<string, any>>, servers: Array<{ url: string }> }
  const tools = convert(doc)
  t.same(tools.map(x => x.name).sort(), ['display_file', 'get_info', 'get_process_status', 'glob_search', 'grep_search', 'kill_process', 'list_files', 'list_processes', 'read_file', 'replace_file_content', 'run_command', 'send_process_input', 'write_file'],
    'Open Terminal\'s model-facing operation ids, one tool each')
  t.match(tools.find(x => x.name === 'run_command')!.parameters, { properties: { command: { type: 'string' }, wait: { type: 'number' } }, required: ['command'] })
  t.ok(doc.paths['/execute/{id}/status'], 'paths relative to the connection (Open WebUI prefixes its url)')
  t.equal(doc.servers[0]!.url, url)
  t.equal((await fetch(`${base}/terminal/openapi.json`)).status, 200, 'without a policy too')

  // get_terminal_system_prompt: /api/config (no key), then /system as the "system" user.
  const features = await (await fetch(`${url}/api/config`)).json() as any
  t.same(features, { features: { terminal: true, notebooks: true, system: true } })
  const system = await fetch(`${url}/system`, { headers: { Authorization: `Bearer ${connection.key}`, 'X-User-Id': 'system' } })
  t.match(await system.json(), { prompt: /computer.*home \/home\/user/s })
  t.equal((await fetch(`${url}/system`)).status, 401, 'the prompt needs the key')
  t.same(await (await fetch(`${url}/health`)).json(), { status: 'ok' })

  // get_terminal_tools: the headers every tool call of a chat carries.
  const headersOf = (user: string, chat: string) => ({ 'Content-Type': 'application/json', 'X-User-Id': user, Authorization: `Bearer ${connection.key}`, 'X-Session-Id': chat, 'X-Terminal-Context-Id': `chat:${chat}` })
  const u1c1 = headersOf('user-1', 'chat-1')
  const cwd = await (await fetch(`${url}/files/cwd`, { headers: u1c1 })).json() as any
  t.same(cwd, { cwd: '/home/user', home: '/home/user', root: { path: '/home/user', label: 'Home' } }, 'get_terminal_cwd')
  const call = async (headers: Record<string, string>, name: string, params: Record<string, unknown>) => await executeToolServer(url, doc, headers, name, params)

  const ran = await call(u1c1, 'run_command', { command: 'echo hello > notes.txt && cat notes.txt && echo oops >&2', wait: 10 })
  t.match(ran, { status: 'done', exit_code: 0, command: 'echo hello > notes.txt && cat notes.txt && echo oops >&2', log_path: null }, JSON.stringify(ran))
  t.same(ran.output.map((e: any) => e.type).sort(), ['stderr', 'stdout'])
  t.match(ran.output, [{ data: /hello|oops/ }, { data: /hello|oops/ }])
  t.match(await call(u1c1, 'read_file', { path: 'notes.txt' }), { path: '/home/user/notes.txt', total_lines: 1, content: 'hello\n' }, 'the next call of chat 1 sees its file')
  t.match(await call(u1c1, 'write_file', { path: '/home/user/src/app.py', content: 'a = 1\nb = 2\nc = 1\n' }), { path: '/home/user/src/app.py', size: 18 })
  t.match(await call(u1c1, 'read_file', { path: 'src/app.py', start_line: 2, end_line: 3 }), { total_lines: 3, content: 'b = 2\nc = 1\n' })
  t.match(await call(u1c1, 'replace_file_content', { path: 'src/app.py', replacements: [{ target: '= 1', replacement: '= 10' }] }), { error: /HTTP error 400: .*2 occurrences/ }, 'an ambiguous target is refused')
  t.match(await call(u1c1, 'replace_file_content', { path: 'src/app.py', replacements: [{ target: '= 1', replacement: '= 10', allow_multiple: true }, { target: 'b = 2', replacement: 'b = 20' }] }), { size: 21 })
  t.match(await call(u1c1, 'read_file', { path: 'src/app.py' }), { content: 'a = 10\nb = 20\nc = 10\n' })
  t.match(await call(u1c1, 'grep_search', { query: 'B = 2', case_insensitive: true, path: 'src' }), { matches: [{ file: '/home/user/src/app.py', line: 2, content: 'b = 20' }], truncated: false })
  t.match(await call(u1c1, 'grep_search', { query: 'a.', regex: false }), { matches: [] }, 'regex=False from Python\'s urlencode is a literal search')
  t.match(await call(u1c1, 'glob_search', { pattern: '*.py' }), { matches: [{ path: 'src/app.py', type: 'file', size: 21 }] })
  t.match(await call(u1c1, 'list_files', { directory: '/home/user/src' }), { dir: '/home/user/src', entries: [{ name: 'app.py', type: 'file', size: 21 }] })
  t.same(await call(u1c1, 'display_file', { path: 'src/app.py' }), { path: '/home/user/src/app.py', exists: true })
  t.match(await call(u1c1, 'get_info', {}), { info: /Interpreter Server/ })

  // A long command: started, polled by offset, fed input, then killed.
  const cat = await call(u1c1, 'run_command', { command: 'echo ready; cat' })
  t.match(cat, { status: 'running', exit_code: null })
  const ready = await call(u1c1, 'get_process_status', { id: cat.id, wait: 1 })
  t.match(ready, { status: 'running', output: [{ type: 'stdout', data: 'ready\n' }] })
  t.same(await call(u1c1, 'send_process_input', { id: cat.id, input: 'echoed\\n' }), { status: 'ok' }, 'a literal \\n from a model becomes a newline')
  let polled: any
  for (let i = 0; i < 50; i++) {
    polled = await call(u1c1, 'get_process_status', { id: cat.id, offset: ready.next_offset })
    if (polled.output.length) break
    await new Promise(resolve => setTimeout(resolve, 100))
  }
  t.same(polled.output, [{ type: 'stdout', data: 'echoed\n' }], 'only the output after the offset')
  t.ok((await call(u1c1, 'list_processes', {})).some((p: any) => p.id === cat.id && p.status === 'running'))
  t.same(await call(u1c1, 'kill_process', { id: cat.id }), { status: 'killed' })
  t.match(await call(u1c1, 'get_process_status', { id: cat.id }), { status: 'killed', exit_code: 143 })
  t.match(await call(u1c1, 'get_process_status', { id: '99999' }), { error: /HTTP error 404/ })
  t.match(await call(u1c1, 'get_process_status', { id: 'nope' }), { error: /HTTP error 404/ })

  // Isolation: chat 2 of the same user, and another user's chat 1, have workspaces of their own.
  t.match(await call(headersOf('user-1', 'chat-2'), 'read_file', { path: 'notes.txt' }), { error: /HTTP error 404/ }, 'chat 2 does not see chat 1\'s file')
  t.match(await call(headersOf('user-2', 'chat-1'), 'read_file', { path: 'notes.txt' }), { error: /HTTP error 404/ }, 'another user never sees it')
  const bob = await fetch(`${url}/files/read?path=notes.txt`, { headers: { ...u1c1, Authorization: `Bearer ${KEYS.bob}` } })
  t.equal(bob.status, 404, 'another key naming the same user and chat never reaches it')
  t.match(await call(u1c1, 'read_file', { path: '/etc/passwd' }), { error: /HTTP error 403/ }, 'outside the home: 403, as multi-user Open Terminal answers')
  t.match(await call(u1c1, 'read_file', { path: '../../etc/passwd' }), { error: /HTTP error 403/ })
  const denied = await fetch(`${url}/files/read?path=/etc/passwd`, { headers: u1c1 })
  t.match(await denied.json(), { detail: /outside/ }, 'errors in Open Terminal\'s shape')

  // The file browser through Open WebUI's proxy (proxy_terminal: X-User-Id, X-Session-Id, X-Terminal-Context-Id).
  const proxied = { 'X-User-Id': 'user-1', 'X-Session-Id': 'chat-1', 'X-Terminal-Context-Id': 'chat:chat-1', Authorization: `Bearer ${connection.key}` }
  const form = new FormData()
  form.append('file', new Blob([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0, 1, 2])], { type: 'image/png' }), 'chart.png')
  const up = await fetch(`${url}/files/upload?directory=${encodeURIComponent('/home/user/uploads')}`, { method: 'POST', headers: proxied, body: form })
  t.same(await up.json(), { path: '/home/user/uploads/chart.png', size: 7 }, 'an upload into a new directory')
  const image = await fetch(`${url}/files/read?path=uploads/chart.png`, { headers: proxied })
  t.equal(image.headers.get('content-type'), 'image/png', 'an image is returned as its bytes')
  t.equal(Buffer.from(await image.arrayBuffer()).length, 7)
  const viewed = await fetch(`${url}/files/view?path=${encodeURIComponent('/home/user/uploads/chart.png')}`, { headers: proxied })
  t.equal(viewed.status, 200)
  t.equal(Buffer.from(await viewed.arrayBuffer())[1], 0x50)
  t.same(await (await fetch(`${url}/files/mkdir`, { method: 'POST', headers: { ...proxied, 'Content-Type': 'application/json' }, body: JSON.stringify({ path: '/home/user/dir/sub' }) })).json(), { path: '/home/user/dir/sub' })
  const moved = await fetch(`${url}/files/move`, { method: 'POST', headers: { ...proxied, 'Content-Type': 'application/json' }, body: JSON.stringify({ source: '/home/user/notes.txt', destination: '/home/user/dir/notes.txt' }) })
  t.same(await moved.json(), { source: '/home/user/notes.txt', destination: '/home/user/dir/notes.txt' })
  const clash = await fetch(`${url}/files/move`, { method: 'POST', headers: { ...proxied, 'Content-Type': 'application/json' }, body: JSON.stringify({ source: '/home/user/src', destination: '/home/user/dir' }) })
  t.equal(clash.status, 409)
  t.same(await (await fetch(`${url}/files/cwd`, { method: 'POST', headers: { ...proxied, 'Content-Type': 'application/json' }, body: JSON.stringify({ path: 'dir' }) })).json(), { cwd: '/home/user/dir' })
  t.match(await call(u1c1, 'run_command', { command: 'pwd; ls', wait: 10 }), { output: [{ data: '/home/user/dir\nnotes.txt\nsub\n' }] }, 'commands start in the session\'s cwd')
  t.match(await call(u1c1, 'read_file', { path: 'notes.txt' }), { path: '/home/user/dir/notes.txt' }, 'relative paths resolve against it')
  const removed = await fetch(`${url}/files/delete?path=${encodeURIComponent('/home/user/dir')}`, { method: 'DELETE', headers: proxied })
  t.same(await removed.json(), { path: '/home/user/dir', type: 'directory' })
  t.equal((await fetch(`${url}/files/list?directory=null`, { headers: { ...proxied, 'X-Session-Id': 'other' } })).status, 200, 'a literal null query value is no value (the home)')

  // A terminal: created through the proxy, attached by ws_terminal (user in the query, context header, auth frame).
  const created = await (await fetch(`${url}/api/terminals`, { method: 'POST', headers: proxied })).json() as { id: string, pid: number, created_at: string }
  t.match(created, { id: String(created.pid), created_at: /^\d{4}-/ }, JSON.stringify(created))
  t.ok((await (await fetch(`${url}/api/terminals`, { headers: proxied })).json() as any[]).some(x => x.id === created.id))
  const ws = new WebSocket(`${url.replace('http', 'ws')}/api/terminals/${created.id}?user_id=user-1`, { headers: { 'X-Terminal-Context-Id': 'chat:chat-1' } })
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
  ws.send(JSON.stringify({ type: 'auth', token: connection.key }))
  // One listener for the whole screen from the start: nothing that arrives between two waits is missed.
  let screen = ''
  const waits = new Set<() => void>()
  ws.on('message', (data: Buffer) => { screen += data.toString(); for (const check of waits) check() })
  const saw = (re: RegExp) => new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => { waits.delete(check); reject(new Error(`no ${re} on the terminal; it showed ${JSON.stringify(screen.slice(-300))}`)) }, 20_000)
    const check = () => { if (re.test(screen)) { clearTimeout(timer); waits.delete(check); resolve() } }
    waits.add(check)
    check()
  })
  ws.send(JSON.stringify({ type: 'resize', cols: 100, rows: 30 }))
  ws.send(Buffer.from('echo hi-$((40+2)); stty size\n'))
  await saw(/hi-42/)
  await saw(/30 100/)
  t.pass('the terminal echoes the command\'s output, at the size it was given')
  const closed = new Promise<void>(resolve => ws.once('close', () => resolve()))
  ws.close()
  await closed
  let gone = false
  for (let i = 0; i < 50 && !gone; i++) {
    gone = !(await (await fetch(`${url}/api/terminals`, { headers: proxied })).json() as any[]).some(x => x.id === created.id)
    if (!gone) await new Promise(resolve => setTimeout(resolve, 100))
  }
  t.ok(gone, 'the terminal ends with its socket, as in Open Terminal')

  const other = await (await fetch(`${url}/api/terminals`, { method: 'POST', headers: proxied })).json() as { id: string }
  const codes: number[] = []
  for (const [token, query, context] of [[KEYS.bob, 'user-1', 'chat:chat-1'], ['wrong', 'user-1', 'chat:chat-1'], [connection.key, 'user-2', 'chat:chat-1'], [connection.key, 'user-1', 'chat:chat-2']] as const) {
    const bad = new WebSocket(`${url.replace('http', 'ws')}/api/terminals/${other.id}?user_id=${query}`, { headers: { 'X-Terminal-Context-Id': context } })
    await new Promise(resolve => bad.once('open', resolve))
    bad.send(JSON.stringify({ type: 'auth', token }))
    codes.push(await new Promise<number>(resolve => bad.once('close', resolve)))
  }
  t.same(codes, [4004, 4001, 4004, 4004], 'another key, a wrong key, another user and another chat cannot attach')

  // Notebooks on a kernel of the workspace: variables kept between cells, outputs written into the file.
  const nb = { nbformat: 4, nbformat_minor: 5, metadata: { kernelspec: { name: 'python3' } }, cells: [{ cell_type: 'code', source: ['x = 20\n', 'print(x)'], outputs: [], metadata: {} }, { cell_type: 'code', source: 'x + 22', outputs: [], metadata: {} }] }
  await call(u1c1, 'write_file', { path: 'analysis.ipynb', content: JSON.stringify(nb) })
  const json = (body: unknown) => ({ method: 'POST', headers: { ...proxied, 'Content-Type': 'application/json' }, body: JSON.stringify(body) })
  const session = await (await fetch(`${url}/notebooks`, json({ path: '/home/user/analysis.ipynb' }))).json() as { id: string, kernel: string, status: string }
  t.match(session, { kernel: 'python3', status: 'ready' })
  t.match(await (await fetch(`${url}/notebooks/${session.id}/execute`, json({ cell_index: 0 }))).json(), { status: 'ok', outputs: [{ output_type: 'stream', name: 'stdout', text: '20\n' }] })
  t.match(await (await fetch(`${url}/notebooks/${session.id}/execute`, json({ cell_index: 1 }))).json(), { status: 'ok', outputs: [{ output_type: 'execute_result', data: { 'text/plain': '42' } }] })
  const saved = JSON.parse((await call(u1c1, 'read_file', { path: 'analysis.ipynb' })).content)
  t.match(saved.cells[1], { execution_count: Number, outputs: [{ output_type: 'execute_result' }] }, 'the notebook file holds the outputs')
  t.equal((await fetch(`${url}/notebooks/${session.id}/execute`, json({ cell_index: 9 }))).status, 400)
  t.match(await (await fetch(`${url}/notebooks/${session.id}`, { headers: proxied })).json(), { path: '/home/user/analysis.ipynb', status: 'ready' })
  t.same(await (await fetch(`${url}/notebooks/${session.id}`, { method: 'DELETE', headers: proxied })).json(), { status: 'stopped' })
  t.equal((await fetch(`${url}/notebooks/${session.id}`, { headers: proxied })).status, 404)
  t.equal((await fetch(`${url}/notebooks/nb_Li4vZXRj`, { headers: proxied })).status, 404, 'a made-up session id naming a path outside')

  // The file browser's download of a folder, and an app's port previewed through /proxy.
  const zip = await fetch(`${url}/files/archive`, json({ paths: ['/home/user/src', 'uploads/chart.png'] }))
  t.equal(zip.headers.get('content-type'), 'application/zip')
  t.match(zip.headers.get('content-disposition'), /filename="download\.zip"/)
  const zipped = Buffer.from(await zip.arrayBuffer())
  t.equal(zipped.subarray(0, 2).toString(), 'PK', 'a ZIP')
  t.ok(zipped.includes('src/app.py') && zipped.includes('chart.png'), 'holding the folder under its name and the file by its name')
  t.notOk((await call(u1c1, 'glob_search', { pattern: '*.zip', path: '/home/user' })).matches.length, 'the ZIP made on the way is gone')
  t.equal((await fetch(`${url}/files/archive`, json({ paths: ['nope'] }))).status, 404)
  const server = await call(u1c1, 'run_command', { command: 'mkdir -p site && echo port-page > site/index.html && cd site && exec python3 -m http.server 8123' })
  let ports: any = { ports: [] }
  for (let i = 0; i < 100 && !ports.ports.some((p: any) => p.port === 8123); i++) {
    ports = await (await fetch(`${url}/ports`, { headers: proxied })).json()
    if (!ports.ports.some((p: any) => p.port === 8123)) await new Promise(resolve => setTimeout(resolve, 100))
  }
  t.match(ports.ports, [{ port: 8123, pid: null, process: null }], 'the listening port is found')
  const page = await fetch(`${url}/proxy/8123/index.html?x=1`, { headers: proxied })
  t.equal(page.status, 200)
  t.equal(await page.text(), 'port-page\n', 'the app answers through /proxy/{port}/{path}')
  t.equal((await fetch(`${url}/proxy/8124/`, { headers: proxied })).status, 502, 'a closed port')
  t.equal((await fetch(`${url}/proxy/8123/`, { headers: { ...proxied, Authorization: `Bearer ${KEYS.bob}` } })).status, 502, 'another key naming the same user and chat reaches a workspace of its own, where nothing listens')
  await call(u1c1, 'kill_process', { id: server.id })

  // Open WebUI's delete_terminal_chat_attachments when a chat is deleted: /files/cwd for the home, then a DELETE.
  const attachments = { 'Content-Type': 'application/json', 'X-User-Id': 'user-1', 'X-Session-Id': 'chat-1', Authorization: `Bearer ${connection.key}` }
  await call(u1c1, 'write_file', { path: '/home/user/chat_attachments/chat-1/report.csv', content: 'a,b\n' })
  const home = (await (await fetch(`${url}/files/cwd`, { headers: attachments })).json() as any).home
  const cleanup = await fetch(`${url}/files/delete?path=${encodeURIComponent(`${home}/chat_attachments/chat-1`)}`, { method: 'DELETE', headers: attachments })
  t.equal(cleanup.status, 404, `${await cleanup.clone().text()}: without X-Terminal-Context-Id that call reaches the user's default workspace, which has no attachments`)
  t.equal((await call(u1c1, 'list_files', { directory: '/home/user/chat_attachments/chat-1' })).entries.length, 1, 'the chat\'s own attachments are untouched by it')

  // Bad input: 4xx in Open Terminal's shape, nothing half done.
  const bad = async (path: string, init: RequestInit = {}) => (await fetch(`${url}${path}`, { ...init, headers: { ...proxied, 'Content-Type': 'application/json', ...(init.headers as object) } })).status
  t.equal(await bad('/execute?wait=1e9', { method: 'POST', body: JSON.stringify({ command: 'true' }) }), 400)
  t.equal(await bad('/files/read?path=src'), 404, 'a directory where a file is expected')
  t.equal(await bad('/files/list?directory=src/app.py'), 404, 'a file where a directory is expected')
  t.equal(await bad('/files/grep?query=(unclosed'), 400)
  t.equal(await bad('/files/replace', { method: 'POST', body: JSON.stringify({ path: 'src/app.py', replacements: [{ target: 'zzz', replacement: '' }] }) }), 400)
  t.equal(await bad('/files/upload?directory=/home/user', { method: 'POST', body: '{}' }), 400, 'an upload that is not multipart')
  t.equal(await bad('/execute/1/input', { method: 'POST', body: JSON.stringify({ input: 5 }) }), 400)
  t.equal((await fetch(`${url}/files/cwd`, { headers: { 'X-User-Id': 'user-1' } })).status, 401)
})
