// MCP 2026-07-28 at the same /mcp URL, with the official v2 client (@modelcontextprotocol/client): it negotiates the
// modern era with server/discover, every call is a request of its own (no MCP session), and a named workspace keeps
// the state. The 2025-11-25 client (v1 SDK) keeps its sessions at the same URL (mcp.test.ts).
import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client'
import { Client as LegacyClient } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport as LegacyTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { build, sandboxConfig, auth, KEYS, REDIS_URL, flushPrefix } from '../../helper.js'

let app: FastifyInstance
let base: string

t.before(async () => {
  const config = await sandboxConfig({ POOL_SIZE: '2', KERNEL_KILL_GRACE_MS: '500' })
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  app = await build(t, config)
  base = await app.listen({ host: '127.0.0.1', port: 0 })
})

/** The v2 client, negotiating the protocol version (server/discover first). */
async function connect (key = KEYS.alice): Promise<Client> {
  const client = new Client({ name: 'modern-client', version: '1.0.0' }, { versionNegotiation: { mode: 'auto' } })
  await client.connect(new StreamableHTTPClientTransport(new URL(`${base}/mcp`), { requestInit: { headers: auth(key) } }))
  t.teardown(() => client.close())
  return client
}

type Content = Array<{ type: string, text?: string, data?: string }>
const texts = (content: unknown) => (content as Content).filter(c => c.type === 'text').map(c => c.text).join('')

t.test('a 2026-07-28 client: stateless requests, state kept in a named workspace', async (t) => {
  const client = await connect()
  t.equal(client.getProtocolEra(), 'modern', 'the client negotiated the modern era')
  t.equal(client.getNegotiatedProtocolVersion(), '2026-07-28')
  const { tools } = await client.listTools()
  t.same(tools.map(x => x.name).sort(), ['execute_code', 'list_files', 'read_file', 'reset', 'write_file'])
  t.match(tools.find(x => x.name === 'execute_code')!.inputSchema, { properties: { workspace: { type: 'string', default: 'default' }, code: { type: 'string' } }, required: ['code'] })

  t.equal(texts((await client.callTool({ name: 'execute_code', arguments: { code: 'x = 20\nprint("set")' } })).content), 'set\n')
  t.equal(texts((await client.callTool({ name: 'execute_code', arguments: { code: 'x * 2 + 2' } })).content), '42', 'the next request sees the variable')
  t.equal(texts((await client.callTool({ name: 'execute_code', arguments: { code: 'print("x" in dir())', workspace: 'other' } })).content), 'False\n', 'another workspace is another sandbox')
  await client.callTool({ name: 'write_file', arguments: { path: 'a.txt', content: 'hello' } })
  t.equal(texts((await client.callTool({ name: 'read_file', arguments: { path: 'a.txt' } })).content), 'hello')

  // Another client of the same key finds the workspace; another key does not.
  const again = await connect()
  t.equal(texts((await again.callTool({ name: 'execute_code', arguments: { code: 'x' } })).content), '20', 'state outlives the client: it is the workspace\'s')
  const bob = await connect(KEYS.bob)
  const bobs = await bob.callTool({ name: 'execute_code', arguments: { code: 'x' } })
  t.ok(bobs.isError, 'another key has a workspace of its own')
  t.match(texts(bobs.content), /NameError/)

  const sessions = await app.inject({ method: 'GET', url: '/v1/sessions', headers: auth(KEYS.alice) })
  t.ok((sessions.json().data as Array<{ metadata: Record<string, string> }>).some(s => s.metadata.workspace === 'default' && s.metadata.source === 'mcp'), 'the workspace is a session the monitor lists')

  const failed = await client.callTool({ name: 'execute_code', arguments: { code: 'bash -c "exit 3"', language: 'shell' } })
  t.ok(failed.isError, 'a non-zero exit is a successful call reporting failure')
  t.match(texts(failed.content), /exit code 3/)
  const bad = await client.callTool({ name: 'execute_code', arguments: { code: '1', workspace: '../etc' } }).catch((err: Error) => err)
  t.match(bad instanceof Error ? bad.message : texts((bad as { content: unknown }).content), /workspace|letters/i, 'a workspace name is checked')
})

t.test('2026-07-28: progress while a run goes on, and a cancel interrupts it', async (t) => {
  const client = await connect()
  const progress: string[] = []
  const result = await client.callTool({ name: 'execute_code', arguments: { code: 'import time\nfor i in range(3):\n    print("step", i, flush=True)\n    time.sleep(1)\n', workspace: 'long' } }, {
    onprogress: (p) => { progress.push(p.message ?? '') }
  })
  t.equal(texts(result.content), 'step 0\nstep 1\nstep 2\n')
  t.ok(progress.length >= 1, `progress notifications came (${progress.length})`)
  t.match(progress.join('\n'), /running for \d+ s: step/, 'with the output tail')

  const abort = new AbortController()
  const cancelled = client.callTool({ name: 'execute_code', arguments: { code: 'import time\ntime.sleep(60)', workspace: 'long' } }, { signal: abort.signal })
  await new Promise(resolve => setTimeout(resolve, 1500))
  const began = Date.now()
  abort.abort()
  await t.rejects(cancelled, 'the client sees its cancel')
  const after = await client.callTool({ name: 'execute_code', arguments: { code: 'print("free again")', workspace: 'long' } })
  t.equal(texts(after.content), 'free again\n', 'the run was interrupted: the workspace answers the next call')
  t.comment(`the cancel-to-next-answer time was ${Date.now() - began} ms`)
})

t.test('one URL, both eras: a 2025-11-25 client still gets its MCP session', async (t) => {
  const legacy = new LegacyClient({ name: 'legacy', version: '1.0.0' })
  const transport = new LegacyTransport(new URL(`${base}/mcp`), { requestInit: { headers: auth(KEYS.alice) } })
  await legacy.connect(transport)
  t.teardown(() => legacy.close())
  t.ok(transport.sessionId, 'an Mcp-Session-Id')
  t.ok((await legacy.listTools()).tools.some(x => x.name === 'execute_code_task'), 'with the tasks of the 2025 path')
  const unauth = await fetch(`${base}/mcp`, { method: 'POST', headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: '{}' })
  t.equal(unauth.status, 401, 'a key is needed on either path')
})
