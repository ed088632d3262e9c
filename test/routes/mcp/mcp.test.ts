import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { CallToolResultSchema } from '@modelcontextprotocol/sdk/types.js'
import { build, sandboxConfig, auth, KEYS, REDIS_URL, flushPrefix, waitFor } from '../../helper.js'

let app: FastifyInstance
let base: string

t.before(async () => {
  const config = await sandboxConfig({ POOL_SIZE: '2', KERNEL_KILL_GRACE_MS: '500' })
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  app = await build(t, config)
  base = await app.listen({ host: '127.0.0.1', port: 0 })
})

/** The official SDK client, connected to /mcp with a key. */
async function connect (key = KEYS.alice): Promise<{ client: Client, transport: StreamableHTTPClientTransport }> {
  const transport = new StreamableHTTPClientTransport(new URL(`${base}/mcp`), { requestInit: { headers: auth(key) } })
  const client = new Client({ name: 'test-client', version: '1.0.0' })
  await client.connect(transport)
  return { client, transport }
}

type Content = Array<{ type: string, text?: string, data?: string, mimeType?: string }>
const texts = (content: unknown) => (content as Content).filter(c => c.type === 'text').map(c => c.text).join('')

t.test('an MCP client lists the tools and runs code twice, keeping state; a plot comes back as an image', async (t) => {
  const { client, transport } = await connect()
  t.teardown(() => client.close())
  const { tools } = await client.listTools()
  t.same(tools.map(x => x.name).sort(), ['execute_code', 'execute_code_task', 'list_files', 'read_file', 'reset', 'write_file'])
  const exec = tools.find(x => x.name === 'execute_code')!
  t.match(exec.inputSchema, { type: 'object', properties: { language: { enum: ['python', 'javascript', 'shell', 'typescript', 'c', 'cpp', 'java', 'php', 'rust', 'go', 'd', 'fortran', 'r'] }, code: { type: 'string' } }, required: ['code'] })

  const first = await client.callTool({ name: 'execute_code', arguments: { code: 'x = 20\nprint("set")' } })
  t.equal(texts(first.content), 'set\n')
  t.notOk(first.isError)
  const second = await client.callTool({ name: 'execute_code', arguments: { code: 'x * 2 + 2' } })
  t.equal(texts(second.content), '42', 'the variable survived: state is kept between calls')
  const js = await client.callTool({ name: 'execute_code', arguments: { language: 'javascript', code: 'console.log(6 * 7)' } })
  t.equal(texts(js.content), '42\n')
  const rust = await client.callTool({ name: 'execute_code', arguments: { language: 'rust', code: 'fn main() { println!("{}", 6 * 7); }' } })
  t.equal(texts(rust.content), '42\n', 'a compiled language too')
  const r = await client.callTool({ name: 'execute_code', arguments: { language: 'r', code: 'plot(1:3)' } })
  t.same((r.content as Content).map(c => c.type), ['image'], 'an R plot as image content, and nothing else')

  const plot = await client.callTool({ name: 'execute_code', arguments: { code: 'import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()' } })
  const image = (plot.content as Content).find(c => c.type === 'image')
  t.equal(image?.mimeType, 'image/png')
  t.equal(Buffer.from(image!.data!, 'base64').subarray(1, 4).toString(), 'PNG', 'a real PNG')

  const session = await app.inject({ method: 'GET', url: `/v1/sessions/${transport.sessionId}`, headers: auth(KEYS.alice) })
  t.equal(session.statusCode, 200, 'the MCP session is one of our sessions (shown in the monitor)')
  t.match(session.json(), { title: 'MCP session', metadata: { source: 'mcp' } })
  const messages = await app.inject({ method: 'GET', url: `/v1/sessions/${transport.sessionId}/messages`, headers: auth(KEYS.alice) })
  t.ok(messages.json().data.some((m: { type: string, content: string }) => m.type === 'code' && m.content === 'x * 2 + 2'), 'its runs are in the session history')
})

t.test('errors come back as tool errors: an exception, a timeout, a bad argument', async (t) => {
  const { client } = await connect()
  t.teardown(() => client.close())
  const raised = await client.callTool({ name: 'execute_code', arguments: { code: '1 / 0' } })
  t.equal(raised.isError, true)
  t.match(texts(raised.content), /ZeroDivisionError: division by zero/)
  const slow = await client.callTool({ name: 'execute_code', arguments: { code: 'import time\ntime.sleep(30)', timeout_ms: 300 } })
  t.equal(slow.isError, true)
  t.match(texts(slow.content), /TimeoutError: execution exceeded 300 ms; interrupted, state kept/)
  const bad = await client.callTool({ name: 'execute_code', arguments: { language: 'cobol', code: 'x' } })
  t.equal(bad.isError, true, 'a language the schema does not allow is refused')
  t.match(texts(bad.content), /language/)
  const after = await client.callTool({ name: 'execute_code', arguments: { code: 'print("still fine")' } })
  t.equal(texts(after.content), 'still fine\n')
})

t.test('files: write, list, read (text and binary); reset gives a fresh sandbox', async (t) => {
  const { client } = await connect()
  t.teardown(() => client.close())
  const wrote = await client.callTool({ name: 'write_file', arguments: { path: 'data/notes.txt', content: 'hello from MCP\n' } })
  t.equal(texts(wrote.content), 'wrote 15 bytes to data/notes.txt')
  const listed = await client.callTool({ name: 'list_files', arguments: { path: 'data' } })
  t.match(texts(listed.content), /-\s+15 data\/notes.txt/)
  const read = await client.callTool({ name: 'read_file', arguments: { path: 'data/notes.txt' } })
  t.equal(texts(read.content), 'hello from MCP\n')
  await client.callTool({ name: 'execute_code', arguments: { code: 'open("bytes.bin", "wb").write(bytes(range(256)))\nkept = 1' } })
  const binary = await client.callTool({ name: 'read_file', arguments: { path: 'bytes.bin' } })
  const resource = (binary.content as Array<{ type: string, resource?: { blob?: string } }>)[0]
  t.equal(resource.type, 'resource')
  t.same([...Buffer.from(resource.resource!.blob!, 'base64')], [...Array(256).keys()], 'binary comes back byte for byte')
  const outside = await client.callTool({ name: 'read_file', arguments: { path: '../../etc/passwd' } })
  t.equal(outside.isError, true, 'a path that leaves the workspace is refused')

  t.equal(texts((await client.callTool({ name: 'reset', arguments: {} })).content), 'the sandbox was reset')
  const fresh = await client.callTool({ name: 'execute_code', arguments: { code: 'import os\nprint("kept" in dir(), os.path.exists("bytes.bin"))' } })
  t.equal(texts(fresh.content), 'False False\n', 'no variables and no files after reset')
})

t.test('keys: none is 401; another key cannot reach an MCP session; ending it removes our session', async (t) => {
  const noKey = await fetch(`${base}/mcp`, { method: 'POST', headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'x', version: '1' } } }) })
  t.equal(noKey.status, 401)
  t.equal((await noKey.json()).error.code, 'missing_api_key')

  const { client, transport } = await connect()
  const sessionId = transport.sessionId!
  const asBob = await fetch(`${base}/mcp`, {
    method: 'POST',
    headers: { ...auth(KEYS.bob), 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-session-id': sessionId, 'mcp-protocol-version': '2025-06-18' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: 'execute_code', arguments: { code: 'print(1)' } } })
  })
  t.equal(asBob.status, 404, "bob cannot use alice's MCP session")
  t.match(await asBob.json(), { jsonrpc: '2.0', error: { code: -32001, message: 'Session not found' } })

  await client.callTool({ name: 'execute_code', arguments: { code: 'print(1)' } })
  const sandboxId = (await app.store.getSession(sessionId))!.sandbox_id!
  await transport.terminateSession()
  await client.close()
  t.equal((await app.inject({ method: 'GET', url: `/v1/sessions/${sessionId}`, headers: auth(KEYS.alice) })).statusCode, 404, 'ending the MCP session deletes ours')
  t.equal((await app.inject({ method: 'GET', url: `/v1/sandboxes/${sandboxId}`, headers: auth(KEYS.alice) })).statusCode, 404, 'and its sandbox')
})

t.test('a session deleted through the API ends its MCP session; invalid JSON-RPC gets a JSON-RPC error', async (t) => {
  const { client, transport } = await connect()
  t.equal((await app.inject({ method: 'DELETE', url: `/v1/sessions/${transport.sessionId}`, headers: auth(KEYS.alice) })).statusCode, 204)
  await t.rejects(client.callTool({ name: 'execute_code', arguments: { code: 'print(1)' } }), /404|Session not found/)
  await client.close().catch(() => {})

  const headers = { ...auth(KEYS.alice), 'content-type': 'application/json', accept: 'application/json, text/event-stream' }
  const garbage = await fetch(`${base}/mcp`, { method: 'POST', headers, body: '{"jsonrpc": "2.0", "id": 1, "meth' })
  t.equal(garbage.status, 400)
  t.match(await garbage.json(), { jsonrpc: '2.0', error: { code: -32700 } })
  const notInit = await fetch(`${base}/mcp`, { method: 'POST', headers, body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list' }) })
  t.equal(notInit.status, 400)
  t.match(await notInit.json(), { jsonrpc: '2.0', error: { code: -32000 } })
  const { client: again } = await connect()
  t.equal((await again.listTools()).tools.length, 6, 'the server is unharmed')
  await again.close()
})

t.test('long runs: progress notifications with the output tail; a cancel interrupts the kernel and keeps the sandbox; a failed exit reports failure', async (t) => {
  const { client } = await connect()
  t.teardown(() => client.close())
  const progress: Array<{ progress: number, message?: string }> = []
  const slow = await client.callTool({ name: 'execute_code', arguments: { code: 'import time\nfor i in range(5):\n    print(f"step {i}", flush=True)\n    time.sleep(1)' } }, undefined, {
    onprogress: (p) => { progress.push(p) },
    timeout: 60_000
  })
  t.equal(texts(slow.content), 'step 0\nstep 1\nstep 2\nstep 3\nstep 4\n')
  t.ok(progress.length >= 3, `a 5-second run sent ${progress.length} progress notifications`)
  t.same(progress.map(p => p.progress), progress.map((_, i) => i + 1), 'progress counts up')
  t.ok(progress.some(p => /running for \d+ s: step \d/.test(p.message ?? '')), 'with the last line printed')

  const quiet = await client.callTool({ name: 'execute_code', arguments: { code: 'import time\ntime.sleep(1.5)\nprint("done")' } })
  t.equal(texts(quiet.content), 'done\n', 'a client that asked for no progress gets none, and the answer')

  await client.callTool({ name: 'execute_code', arguments: { code: 'kept = "still here"' } })
  const abort = new AbortController()
  const began = Date.now()
  const cancelled = client.callTool({ name: 'execute_code', arguments: { code: 'import time\ntime.sleep(60)' } }, undefined, { signal: abort.signal })
  setTimeout(() => abort.abort('enough'), 1000)
  await t.rejects(cancelled, /enough|abort/i, 'the client sees its cancel')
  const after = await client.callTool({ name: 'execute_code', arguments: { code: 'print(kept)' } }, undefined, { timeout: 30_000 })
  t.equal(texts(after.content), 'still here\n', 'the sandbox is usable at once and kept its state: the kernel was interrupted, not killed')
  t.comment(`the cancel-to-next-answer time was ${Date.now() - began - 1000} ms`)

  const failed = await client.callTool({ name: 'execute_code', arguments: { language: 'shell', code: 'echo partial; (exit 4)' } })
  t.equal(failed.isError, true, 'a non-zero exit is a call that reports failure')
  t.match(texts(failed.content), /partial\n[^]*\[exit code 4\]/)
  const ok = await client.callTool({ name: 'execute_code', arguments: { language: 'shell', code: 'true' } })
  t.notOk(ok.isError)
})

t.test('tasks: a run that outlives its request is polled to completion after the client reconnects; its id is our run id; tasks/cancel interrupts', async (t) => {
  const first = await connect()
  const { tools } = await first.client.listTools()
  t.match(tools.find(x => x.name === 'execute_code_task'), { execution: { taskSupport: 'required' } })
  /** Starts the tool as a task and returns its id at once (the stream's first message). */
  const start = async (client: Client, code: string) => {
    for await (const message of client.experimental.tasks.callToolStream({ name: 'execute_code_task', arguments: { code } }, CallToolResultSchema, { task: { ttl: 60_000 } })) {
      if (message.type === 'taskCreated') return message.task.taskId
      if (message.type === 'error') throw message.error
    }
    throw new Error('no task was created')
  }
  const taskId = await start(first.client, 'import time\ntime.sleep(2)\nprint("finished")')
  t.match(taskId, /^run_/, 'the task id is a run id')
  const session = first.transport.sessionId!
  await first.client.close()

  const second = await connect()
  t.teardown(() => second.client.close())
  const seen = await second.client.experimental.tasks.getTask(taskId)
  t.equal(seen.status, 'working', 'a new connection of the same key sees the task still running')
  const ended = await waitFor('the task to end', async () => {
    const task = await second.client.experimental.tasks.getTask(taskId)
    return task.status === 'working' ? null : task
  }, { ms: 30_000 })
  t.equal(ended.status, 'completed')
  const result = await second.client.experimental.tasks.getTaskResult(taskId, CallToolResultSchema)
  t.equal(texts(result.content), 'finished\n')
  const events = await app.inject({ method: 'GET', url: `/v1/sessions/${session}/messages`, headers: auth(KEYS.alice) })
  t.ok(events.json().data.some((m: { id?: string }) => m.id === taskId), 'the run is in the session history under the task id')
  t.ok((await second.client.experimental.tasks.listTasks()).tasks.some(x => x.taskId === taskId), 'listed')

  const bob = await connect(KEYS.bob)
  t.teardown(() => bob.client.close())
  await t.rejects(bob.client.experimental.tasks.getTask(taskId), 'another key never sees it')

  const failing = await start(second.client, '1/0')
  const failed = await waitFor('the failing task to end', async () => {
    const task = await second.client.experimental.tasks.getTask(failing)
    return task.status === 'working' ? null : task
  }, { ms: 30_000 })
  t.equal(failed.status, 'failed', 'an exception fails the task')
  t.match(texts((await second.client.experimental.tasks.getTaskResult(failing, CallToolResultSchema)).content), /ZeroDivisionError/)

  const long = await start(second.client, 'import time\ntime.sleep(60)')
  await new Promise(resolve => setTimeout(resolve, 1000))
  const cancelled = await second.client.experimental.tasks.cancelTask(long)
  t.equal(cancelled.status, 'cancelled')
  const after = await second.client.callTool({ name: 'execute_code', arguments: { code: 'print("free again")' } }, undefined, { timeout: 30_000 })
  t.equal(texts(after.content), 'free again\n', 'the cancel interrupted the run: the sandbox answers the next call')
})
