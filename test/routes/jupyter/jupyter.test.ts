import t from 'tap'
import { Writable } from 'node:stream'
import { randomUUID } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import WebSocket from 'ws'
import { KernelManager, KernelSpecAPI, ServerConnection, SessionManager } from '@jupyterlab/services'
import type { Kernel, KernelMessage } from '@jupyterlab/services'
import { build, sandboxConfig, auth, KEYS, REDIS_URL, flushPrefix } from '../../helper.js'

let app: FastifyInstance
let base: string
let logged = ''

t.before(async () => {
  const config = await sandboxConfig({ POOL_SIZE: '2', KERNEL_KILL_GRACE_MS: '500', LOG_LEVEL: 'debug' })
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  const stream = new Writable({ write (chunk, _enc, done) { logged += String(chunk); done() } })
  app = await build(t, config, { logger: { stream } })
  base = await app.listen({ host: '127.0.0.1', port: 0 })
})

/** @jupyterlab/services' settings for our /jupyter base URL and a key as the Jupyter token. */
const settings = (token = KEYS.alice) => ServerConnection.makeSettings({ baseUrl: `${base}/jupyter/`, wsUrl: `${base.replace('http', 'ws')}/jupyter/`, token })

interface Collected { iopub: KernelMessage.IIOPubMessage[], reply: KernelMessage.IExecuteReplyMsg }
async function exec (kernel: Kernel.IKernelConnection, code: string, onIOPub?: (m: KernelMessage.IIOPubMessage) => void): Promise<Collected> {
  const future = kernel.requestExecute({ code })
  const iopub: KernelMessage.IIOPubMessage[] = []
  future.onIOPub = (m) => { iopub.push(m); onIOPub?.(m) }
  const reply = await future.done as KernelMessage.IExecuteReplyMsg
  return { iopub, reply }
}
const of = (c: Collected, type: string) => c.iopub.filter(m => m.header.msg_type === type)
const streamed = (c: Collected, name = 'stdout') => of(c, 'stream').filter(m => (m.content as { name: string }).name === name).map(m => (m.content as { text: string }).text).join('')

t.test('@jupyterlab/services runs a python3 kernel: state, streamed output, a plot, a value, an error, an interrupt', async (t) => {
  const specs = await KernelSpecAPI.getSpecs(settings()) // validated by the client
  t.equal(specs.default, 'python3')
  t.match(Object.keys(specs.kernelspecs), ['python3', 'javascript', 'bash'], 'kernel specs for the image\'s languages')
  t.ok(specs.kernelspecs.ir, 'R too, in the full image')

  const manager = new KernelManager({ serverSettings: settings() })
  t.teardown(() => manager.dispose())
  await manager.ready
  const kernel = await manager.startNew({ name: 'python3' })
  t.teardown(() => kernel.shutdown().catch(() => {}))

  const info = await kernel.info
  t.equal(info.language_info.name, 'python')
  t.equal(info.protocol_version, '5.3')
  t.equal((kernel as unknown as { _ws: WebSocket })._ws.protocol, 'v1.kernel.websocket.jupyter.org', 'the client got the binary framing it offered')

  const set = await exec(kernel, 'x = 20')
  t.equal(set.reply.content.status, 'ok')
  t.same(set.iopub.map(m => m.header.msg_type), ['status', 'execute_input', 'status'], 'busy, the input, idle')
  t.same(set.iopub.map(m => (m.content as { execution_state?: string }).execution_state).filter(Boolean), ['busy', 'idle'])

  const order: string[] = []
  const printed = await exec(kernel, 'import time\nfor i in range(3):\n    print(x + i)\n    time.sleep(0.05)', (m) => {
    if (m.header.msg_type === 'stream') order.push((m.content as { text: string }).text)
  })
  t.equal(streamed(printed), '20\n21\n22\n', 'the variable survived; stdout in order')
  t.ok(order.length >= 2, `streamed as printed, not in one piece at the end (${order.length} messages)`)

  const value = await exec(kernel, 'x * 2 + 2')
  const result = of(value, 'execute_result')[0]
  t.ok(result, 'an execute_result for the last expression')
  t.equal((result.content as { data: Record<string, string> }).data['text/plain'], '42')
  t.equal((result.content as { execution_count: number }).execution_count, value.reply.content.execution_count, 'numbered like its reply')

  const plot = await exec(kernel, 'import matplotlib\nmatplotlib.use("agg")\nimport matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()')
  const display = of(plot, 'display_data')[0]
  t.ok(display, 'a display_data for the plot')
  t.equal(Buffer.from((display.content as { data: Record<string, string> }).data['image/png'], 'base64').subarray(1, 4).toString(), 'PNG')

  const failed = await exec(kernel, '1 / 0')
  t.equal(failed.reply.content.status, 'error')
  const error = of(failed, 'error')[0]
  t.match(error?.content, { ename: 'ZeroDivisionError', evalue: /division by zero/ })
  t.ok((error.content as { traceback: string[] }).traceback.length > 0)

  // Interrupt out of a long sleep through the REST call the client makes; the kernel and its state survive.
  let started!: () => void
  const running = new Promise<void>(resolve => { started = resolve })
  const sleeping = exec(kernel, 'import time\nprint("sleeping", flush=True)\ntime.sleep(60)', (m) => { if (m.header.msg_type === 'stream') started() })
  await running
  const t0 = Date.now()
  await kernel.interrupt()
  const interrupted = await sleeping
  t.ok(Date.now() - t0 < 20_000, 'the interrupt ended the sleep')
  t.equal(interrupted.reply.content.status, 'error')
  t.match(of(interrupted, 'error')[0]?.content, { ename: 'KeyboardInterrupt' })
  t.equal(streamed(await exec(kernel, 'print(x)')), '20\n', 'usable after the interrupt, state kept')

  // Visible to our own API: the kernel is a session whose history holds the cells.
  const messages = await fetch(`${base}/v1/sessions/${kernel.id}/messages`, { headers: auth(KEYS.alice) }).then(r => r.json()) as { data: Array<{ type: string, content: unknown }> }
  t.ok(messages.data.some(m => m.type === 'code' && m.content === 'x = 20'), 'the kernel\'s cells are in its session\'s history (the monitor shows them)')

  await kernel.restart()
  const after = await exec(kernel, 'print("x" in globals())')
  t.equal(streamed(after), 'False\n', 'a restart clears the variables')
  t.equal(after.reply.content.execution_count, 1, 'and the count starts again')

  await kernel.shutdown()
  const gone = await fetch(`${base}/jupyter/api/kernels/${kernel.id}`, { headers: { authorization: `token ${KEYS.alice}` } })
  t.equal(gone.status, 404, 'shut down: the kernel is gone')
})

t.test('bash and javascript kernels, and a fresh-process language', async (t) => {
  const manager = new KernelManager({ serverSettings: settings() })
  t.teardown(() => manager.dispose())
  for (const [name, code, expected] of [
    ['bash', 'n=6; echo $((n * 7))', '42\n'],
    ['javascript', 'const n = 6; console.log(n * 7)', '42\n'],
    ['c', '#include <stdio.h>\nint main(void) { printf("%d\\n", 6 * 7); return 0; }', '42\n']
  ]) {
    const kernel = await manager.startNew({ name })
    const first = await exec(kernel, code)
    t.equal(streamed(first), expected, `${name} runs`)
    t.equal((await kernel.info).language_info.name, name === 'bash' ? 'bash' : name, `${name}'s language_info`)
    await kernel.shutdown()
  }
  const bash = await manager.startNew({ name: 'bash' })
  await exec(bash, 'export KEEP=kept')
  t.equal(streamed(await exec(bash, 'echo $KEEP')), 'kept\n', 'the bash kernel keeps its variables')
  await bash.shutdown()
})

t.test('Jupyter sessions: a notebook path gets a kernel, renames keep it, a kernel change replaces it', async (t) => {
  const serverSettings = settings()
  const kernelManager = new KernelManager({ serverSettings })
  const manager = new SessionManager({ serverSettings, kernelManager })
  t.teardown(() => { manager.dispose(); kernelManager.dispose() })
  const session = await manager.startNew({ path: 'work/a.ipynb', name: 'a.ipynb', type: 'notebook', kernel: { name: 'python3' } })
  t.equal(session.path, 'work/a.ipynb')
  const reply = await exec(session.kernel!, 'print(1 + 1)')
  t.equal(streamed(reply), '2\n')

  await session.setPath('work/b.ipynb')
  const listed = await fetch(`${base}/jupyter/api/sessions`, { headers: { authorization: `token ${KEYS.alice}` } }).then(r => r.json()) as Array<{ id: string, path: string, kernel: { id: string } }>
  t.match(listed, [{ id: session.id, path: 'work/b.ipynb', kernel: { id: session.kernel!.id } }], 'renamed, same kernel')

  const old = session.kernel!.id
  await session.changeKernel({ name: 'bash' })
  t.not(session.kernel!.id, old)
  t.equal(streamed(await exec(session.kernel!, 'echo changed')), 'changed\n', 'the new kernel runs bash')
  t.equal((await fetch(`${base}/jupyter/api/kernels/${old}`, { headers: { authorization: `token ${KEYS.alice}` } })).status, 404, 'the kernel it left is shut down')

  await session.shutdown()
  const after = await fetch(`${base}/jupyter/api/sessions`, { headers: { authorization: `token ${KEYS.alice}` } }).then(r => r.json()) as unknown[]
  t.same(after, [], 'ended with its kernel')
})

/** Open WebUI's JupyterCodeExecuter, call for call: token in the query, no subprotocol, JSON frames, stop at idle. */
async function openWebUiRun (code: string, token = KEYS.alice): Promise<{ stdout: string, stderr: string, result: string, frames: any[] }> {
  const q = `?token=${token}`
  const created = await fetch(`${base}/jupyter/api/kernels${q}`, { method: 'POST' })
  if (!created.ok) throw new Error(`POST /api/kernels: ${created.status}`)
  const { id } = await created.json() as { id: string }
  const ws = new WebSocket(`${base.replace('http', 'ws')}/jupyter/api/kernels/${id}/channels${q}`)
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
  const msgId = randomUUID().replace(/-/g, '')
  ws.send(JSON.stringify({
    header: { msg_id: msgId, msg_type: 'execute_request', username: 'user', session: randomUUID().replace(/-/g, ''), date: '', version: '5.3' },
    parent_header: {},
    metadata: {},
    content: { code, silent: false, store_history: true, user_expressions: {}, allow_stdin: false, stop_on_error: true },
    channel: 'shell'
  }))
  let stdout = ''; let stderr = ''; let result = ''
  const frames: any[] = []
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no idle status within 60 s')), 60_000)
    ws.on('message', (data) => {
      const message = JSON.parse(String(data))
      frames.push(message)
      if (message.parent_header?.msg_id !== msgId) return
      const content = message.content
      switch (message.msg_type) { // the top-level msg_type, as Open WebUI reads it
        case 'stream': if (content.name === 'stdout') stdout += content.text; else stderr += content.text; break
        case 'execute_result': case 'display_data':
          if (content.data['image/png']) result += `data:image/png;base64,${content.data['image/png']}\n`
          else result += content.data['text/plain'] ?? ''
          break
        case 'error': stderr += content.traceback.join('\n'); break
        case 'status': if (content.execution_state === 'idle') { clearTimeout(timer); resolve() } break
      }
    })
  })
  ws.close()
  await fetch(`${base}/jupyter/api/kernels/${id}${q}`, { method: 'DELETE' })
  return { stdout: stdout.trim(), stderr: stderr.trim(), result: result.trim(), frames }
}

t.test("Open WebUI's exact call sequence gets the output it shows, image included; the token never reaches the log", async (t) => {
  const out = await openWebUiRun('import matplotlib.pyplot as plt\nprint("hello from open webui")\nplt.plot([3, 1, 2])\nplt.show()\n6 * 7')
  t.equal(out.stdout, 'hello from open webui')
  t.equal(out.stderr, '')
  t.match(out.result, /^data:image\/png;base64,iVBOR/, 'the plot as a data URL')
  t.match(out.result, /42$/, 'and the last value')
  t.ok(out.frames.every(f => typeof f.msg_type === 'string' && f.header.msg_type === f.msg_type && typeof f.msg_id === 'string'), 'msg_type and msg_id at the top level too')

  const failed = await openWebUiRun('raise ValueError("bad value")')
  t.match(failed.stderr, /ValueError/, 'an exception reaches stderr through the error message')

  const list = await fetch(`${base}/jupyter/api/kernels?token=${KEYS.alice}`).then(r => r.json()) as unknown[]
  t.same(list, [], 'every kernel was deleted after its block')
  t.notMatch(logged, KEYS.alice, 'the key passed as ?token= is not in the log')
  t.match(logged, /token=\[redacted\]/)
})

t.test('auth and bad input: wrong token, another key\'s kernel, malformed frames, unknown kernels', async (t) => {
  const wrong = await fetch(`${base}/jupyter/api/kernels`, { method: 'POST', headers: { authorization: 'token nope' } })
  t.equal(wrong.status, 401)
  t.equal((await wrong.json() as { message: string }).message, 'The API key is not valid', 'Jupyter clients show `message`')
  t.equal((await fetch(`${base}/jupyter/api/kernels`)).status, 401, 'no token at all')

  const mine = await fetch(`${base}/jupyter/api/kernels`, { method: 'POST', headers: { authorization: `Bearer ${KEYS.alice}`, 'content-type': 'application/json' }, body: JSON.stringify({ name: 'python3' }) })
  t.equal(mine.status, 201, 'our Bearer header works too')
  const { id } = await mine.json() as { id: string }
  t.teardown(() => fetch(`${base}/jupyter/api/kernels/${id}?token=${KEYS.alice}`, { method: 'DELETE' }))

  const refused = (url: string) => new Promise<number>((resolve, reject) => {
    const ws = new WebSocket(url)
    ws.once('unexpected-response', (_req, res) => { resolve(res.statusCode!); ws.terminate() })
    ws.once('open', () => { ws.close(); reject(new Error('upgraded')) })
    ws.once('error', () => {})
  })
  const wsBase = `${base.replace('http', 'ws')}/jupyter/api/kernels`
  t.equal(await refused(`${wsBase}/${id}/channels?token=wrong`), 401, 'a wrong token is refused before the upgrade')
  t.equal(await refused(`${wsBase}/${id}/channels?token=${KEYS.bob}`), 404, 'another key\'s kernel does not exist for it')
  t.equal(await refused(`${wsBase}/nope/channels?token=${KEYS.alice}`), 404, 'an unknown kernel id')
  t.equal((await fetch(`${base}/jupyter/api/kernels/${id}`, { headers: { authorization: `token ${KEYS.bob}` } })).status, 404)
  t.equal((await fetch(`${base}/jupyter/api/kernels/${id}`, { method: 'DELETE', headers: { authorization: `token ${KEYS.bob}` } })).status, 404, 'nor can it shut it down')

  const unknown = await fetch(`${base}/jupyter/api/kernels`, { method: 'POST', headers: { authorization: `token ${KEYS.alice}`, 'content-type': 'application/json' }, body: JSON.stringify({ name: 'cobol' }) })
  t.equal(unknown.status, 400)
  t.match((await unknown.json() as { message: string }).message, /No such kernel: cobol.*python3/)

  // Malformed frames are ignored; the socket still answers.
  const ws = new WebSocket(`${wsBase}/${id}/channels?token=${KEYS.alice}`)
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
  const replies: any[] = []
  ws.on('message', (data) => replies.push(JSON.parse(String(data))))
  ws.send('not json')
  ws.send(JSON.stringify({ hello: 'world' }))
  ws.send(Buffer.from([0, 0, 0, 9, 1, 2, 3]))
  ws.send(JSON.stringify({ header: { msg_id: 'u1', msg_type: 'frobnicate_request', username: 'u', session: 's', date: '', version: '5.3' }, parent_header: {}, metadata: {}, content: {}, channel: 'shell' }))
  ws.send(JSON.stringify({ header: { msg_id: 'k1', msg_type: 'kernel_info_request', username: 'u', session: 's', date: '', version: '5.3' }, parent_header: {}, metadata: {}, content: {}, channel: 'shell' }))
  const deadline = Date.now() + 10_000
  while (!replies.some(r => r.msg_type === 'kernel_info_reply') && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 20))
  t.match(replies.find(r => r.msg_type === 'frobnicate_reply'), { parent_header: { msg_id: 'u1' }, content: { status: 'error', ename: 'NotImplementedError' } }, 'an unknown request gets an error reply')
  t.match(replies.find(r => r.msg_type === 'kernel_info_reply'), { parent_header: { msg_id: 'k1' }, channel: 'shell', content: { status: 'ok', language_info: { name: 'python' } } }, 'still usable after garbage')
  t.equal(ws.readyState, WebSocket.OPEN)

  // interrupt_request on the control channel, and stop_on_error aborting what was queued behind a failed cell
  const send = (msgId: string, type: string, content: object, channel = 'shell') => ws.send(JSON.stringify({ header: { msg_id: msgId, msg_type: type, username: 'u', session: 's', date: '', version: '5.3' }, parent_header: {}, metadata: {}, content, channel }))
  const replyTo = async (msgId: string, type: string) => {
    const until = Date.now() + 30_000
    let found
    while (!(found = replies.find(r => r.parent_header?.msg_id === msgId && r.msg_type === type)) && Date.now() < until) await new Promise(resolve => setTimeout(resolve, 20))
    return found
  }
  send('e1', 'execute_request', { code: 'import time\nprint("go", flush=True)\ntime.sleep(60)', stop_on_error: true })
  send('e2', 'execute_request', { code: 'print("queued behind")', stop_on_error: true })
  const until = Date.now() + 30_000
  while (!replies.some(r => r.parent_header?.msg_id === 'e1' && r.msg_type === 'stream') && Date.now() < until) await new Promise(resolve => setTimeout(resolve, 20))
  send('i1', 'interrupt_request', {}, 'control')
  t.match(await replyTo('i1', 'interrupt_reply'), { channel: 'control', content: { status: 'ok' } })
  t.match(await replyTo('e1', 'execute_reply'), { content: { status: 'error', ename: 'KeyboardInterrupt' } })
  t.match(await replyTo('e2', 'execute_reply'), { content: { status: 'aborted' } }, 'the cell queued behind the failed one is aborted (stop_on_error)')
  send('e3', 'execute_request', { code: 'print("after")' })
  t.match(await replyTo('e3', 'execute_reply'), { content: { status: 'ok' } }, 'a new cell runs')
  ws.close()
})
