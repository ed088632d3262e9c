import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { sandboxConfig, sandboxCalls, auth, KEYS, containersIn } from '../../helper.js'
import { buildApp } from '../../../app.js'

const alice = auth(KEYS.alice)
let app: FastifyInstance

t.before(async () => {
  app = await buildApp({ config: await sandboxConfig({ POOL_SIZE: '2', KERNEL_KILL_GRACE_MS: '500' }), sandbox: { waitWarm: true } }, false)
  await app.ready()
})

const { newSandbox, run } = sandboxCalls(() => app)

t.test('state persists between runs in python, javascript and shell', async (t) => {
  const id = await newSandbox()
  t.match(await run(id, 'import math\nx = 41\ndef inc(v):\n    return v + 1'), { error: null })
  const py = await run(id, 'print("hello")\ninc(x)')
  t.equal(py.stdout, 'hello\n')
  t.same(py.results, [{ type: 'result', data: { 'text/plain': '42' } }])
  t.equal(py.execution_count, 2)

  await run(id, 'var counter = 10; function twice (n) { return n * 2 }', { language: 'javascript' })
  const js = await run(id, 'console.log("from node"); twice(counter) + 1', { language: 'javascript' })
  t.equal(js.stdout, 'from node\n')
  t.same(js.results[0].data, { 'text/plain': '21' })

  await run(id, 'cd /tmp && export GREETING=hi && greet () { echo "$GREETING $1"; }', { language: 'shell' })
  const sh = await run(id, 'greet there; pwd', { language: 'shell' })
  t.equal(sh.stdout, 'hi there\n/tmp\n')
  const failing = await run(id, 'false', { language: 'shell' })
  t.match(failing, { error: null, stdout: '' }, 'a failing command is not a crash')
})

t.test('errors come back with name, value and a traceback of the user code only', async (t) => {
  const id = await newSandbox()
  const res = await run(id, 'def f():\n    return 1 / 0\nf()')
  t.match(res.error, { name: 'ZeroDivisionError', value: 'division by zero' })
  t.match(res.error.traceback.join(''), /File "<cell>", line 2, in f/)
  t.notMatch(res.error.traceback.join(''), /kernel_python/)
  const syntax = await run(id, 'def (')
  t.equal(syntax.error.name, 'SyntaxError')
  const js = await run(id, 'null.x', { language: 'javascript' })
  t.equal(js.error.name, 'TypeError')
  t.equal((await run(id, 'print("still fine")')).stdout, 'still fine\n')
})

t.test('a matplotlib plot comes back as a PNG, shown or left open; a DataFrame also as HTML', async (t) => {
  const id = await newSandbox()
  const shown = await run(id, 'import matplotlib.pyplot as plt\nplt.plot([1, 4, 9])\nplt.show()\nprint("after show")')
  t.equal(shown.results.length, 1)
  t.equal(shown.results[0].type, 'display')
  const png = Buffer.from(shown.results[0].data['image/png'], 'base64')
  t.same([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], 'a real PNG')
  t.equal(shown.stdout, 'after show\n')
  const open = await run(id, 'fig, ax = plt.subplots()\nax.bar(["a", "b"], [3, 5])')
  t.ok(open.results.some((r: { type: string, data: Record<string, string> }) => r.type === 'display' && r.data['image/png']), 'a figure left open is sent at the end')
  const df = await run(id, 'import pandas as pd\npd.DataFrame({"city": ["Oslo", "Lima"], "temp": [3, 19]})')
  t.match(df.results[0].data['text/plain'], /Oslo/)
  t.match(df.results[0].data['text/html'], /<table[\s\S]*Lima/)
})

t.test('plots and printed lines arrive in the order the code made them, none lost', async (t) => {
  const id = await newSandbox()
  const res = await app.inject({
    method: 'POST',
    url: `/v1/sandboxes/${id}/execute`,
    headers: alice,
    payload: { stream: true, code: 'import matplotlib.pyplot as plt\nfor i in range(4):\n    plt.plot([i, i + 1])\n    plt.show()\n    print(f"after {i}")' }
  })
  const order = res.body.trim().split('\n\n').map(block => {
    const data = JSON.parse(block.slice(block.indexOf('data: ') + 6))
    return data.type === 'stdout' ? data.text.trim() : data.type
  }).filter(e => e !== 'start' && e !== 'end')
  t.same(order, ['display', 'after 0', 'display', 'after 1', 'display', 'after 2', 'display', 'after 3'])
})

t.test('a timeout interrupts the code, keeps state, and the sandbox still works', async (t) => {
  const id = await newSandbox()
  const res = await run(id, 'import time\nstep = 0\nwhile True:\n    step += 1\n    time.sleep(0.01)', { timeout_ms: 500 })
  t.match(res.error, { name: 'TimeoutError', code: 'execution_timeout', state_lost: false })
  t.equal(res.state_lost, false)
  const after = await run(id, 'step > 0')
  t.same(after.results[0].data, { 'text/plain': 'True' }, 'variables set before the interrupt are still there')
})

t.test('code that ignores the interrupt is killed after the grace period; state lost, said clearly, next run works', async (t) => {
  const id = await newSandbox()
  await run(id, 'kept = "before"')
  const res = await run(id, 'import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass', { timeout_ms: 300 })
  t.match(res.error, { code: 'execution_timeout', state_lost: true })
  t.match(res.error.value, /state was lost/)
  t.equal(res.state_lost, true)
  const after = await run(id, 'print("alive"); "kept" in dir()')
  t.equal(after.stdout, 'alive\n')
  t.same(after.results[0].data, { 'text/plain': 'False' }, 'the restarted kernel starts empty')
  await run(id, '1', { language: 'javascript' }) // the kernel up first: an interrupt before node has started is a kill
  const js = await run(id, 'while (true) {}', { language: 'javascript', timeout_ms: 300 })
  t.match(js.error, { code: 'execution_timeout', state_lost: false }, 'a busy javascript loop is interrupted too')
})

t.test('a timeout above the configured maximum is a validation error', async (t) => {
  const id = await newSandbox()
  const res = await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/execute`, headers: alice, payload: { code: '1', timeout_ms: 10_000_000 } })
  t.equal(res.statusCode, 400)
  t.match(res.json().error.message, /timeout_ms/)
})

t.test('SSE streams events in order while the code is still running', async (t) => {
  const id = await newSandbox()
  const address = await app.listen({ port: 0, host: '127.0.0.1' })
  const response = await fetch(`${address}/v1/sandboxes/${id}/execute`, {
    method: 'POST',
    headers: { ...alice, 'content-type': 'application/json' },
    body: JSON.stringify({ stream: true, code: 'import time\nprint("first", flush=True)\ntime.sleep(1.5)\nprint("second")\n7 * 6' })
  })
  t.equal(response.status, 200)
  t.match(response.headers.get('content-type'), /text\/event-stream/)
  const reader = response.body!.getReader()
  const decoder = new TextDecoder()
  let text = ''
  let sawFirstBeforeEnd = false
  for (;;) {
    const { value, done } = await reader.read()
    if (done) break
    text += decoder.decode(value, { stream: true })
    if (text.includes('"first\\n"') && !text.includes('event: end')) sawFirstBeforeEnd = true
  }
  t.ok(sawFirstBeforeEnd, 'the first line arrived before the execution ended')
  const events = text.trim().split('\n\n').map(block => {
    const lines = Object.fromEntries(block.split('\n').map(l => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 2)]))
    return { id: Number(lines.id), event: lines.event, data: JSON.parse(lines.data) }
  })
  t.same(events.map(e => e.event), ['start', 'stdout', 'stdout', 'result', 'end'])
  t.same(events.map(e => e.id), [1, 2, 3, 4, 5], 'numbered in order')
  t.same(events[3].data.data, { 'text/plain': '42' })
})

t.test('a silent run announces its start while it runs: a client can interrupt it on that event', async (t) => {
  const id = await newSandbox()
  const address = app.server.listening ? `http://127.0.0.1:${(app.server.address() as { port: number }).port}` : await app.listen({ port: 0, host: '127.0.0.1' })
  const response = await fetch(`${address}/v1/sandboxes/${id}/execute`, {
    method: 'POST',
    headers: { ...alice, 'content-type': 'application/json' },
    body: JSON.stringify({ stream: true, timeout_ms: 60_000, code: 'import time\ntime.sleep(50)' })
  })
  let text = ''
  let interrupted: Promise<Response> | undefined
  const decoder = new TextDecoder()
  for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
    text += decoder.decode(chunk, { stream: true })
    if (!interrupted && text.includes('event: start')) interrupted = fetch(`${address}/v1/sandboxes/${id}/interrupt`, { method: 'POST', headers: alice })
  }
  t.ok(interrupted, 'the start event came before the run ended')
  t.same(await (await interrupted!).json(), { interrupted: true }, 'the run was still going when the client heard of it')
  t.match(text, /"name":"KeyboardInterrupt"/, 'and the interrupt stopped it')
})

t.test('a process forked by user code never acts as the kernel', async (t) => {
  const id = await newSandbox()
  const res = await run(id, 'import os\nif os.fork() == 0:\n    1 / 0\nos.wait()\nprint("parent")')
  t.equal(res.error, null, "the child's exception is not reported as the run's")
  t.equal(res.stdout, 'parent\n')
  const next = await run(id, 'print("next")')
  t.equal(next.stdout, 'next\n', 'the next run is answered once, by the kernel')
})

t.test('closing the server removes its containers (SANDBOX_KEEP_ON_CLOSE=false)', async (t) => {
  const namespace = app.config.SANDBOX_NAMESPACE
  t.ok(await containersIn(namespace) > 0)
  await app.close()
  t.equal(await containersIn(namespace), 0)
})
