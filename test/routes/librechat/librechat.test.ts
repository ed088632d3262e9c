import t from 'tap'
import type { FastifyInstance } from 'fastify'
import * as agents from '@librechat/agents'
import { build, sandboxConfig, auth, KEYS, REDIS_URL, flushPrefix } from '../../helper.js'
import { PROGRAMS, LIBRECHAT_NAMES } from '../../services/sandbox/programs.js'

let app: FastifyInstance
let base: string

t.before(async () => {
  const config = await sandboxConfig({ POOL_SIZE: '2', MAX_UPLOAD_BYTES: '65536', MAX_SANDBOXES_PER_KEY: '40' })
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  app = await build(t, config)
  base = `${await app.listen({ host: '127.0.0.1', port: 0 })}/librechat/v1`
})

// The package's .d.ts re-exports without file extensions, which this project's module resolution cannot follow.
const { createCodeExecutionTool } = agents as unknown as { createCodeExecutionTool: (params: Record<string, unknown>) => { invoke: (call: object) => Promise<unknown> } }

interface Artifact { session_id: string, files?: Array<{ id: string, name: string, path: string, session_id: string }> }
type ToolResult = { content: string, artifact: Artifact }

/** LibreChat's own tool, as LibreChat builds it, invoked the way its agents invoke tools. */
async function execute (args: { lang: string, code: string, args?: string[] }, opts: { key?: string, session_id?: string, files?: unknown[] } = {}): Promise<ToolResult> {
  const tool = createCodeExecutionTool({ baseUrl: base, authHeaders: { 'X-API-Key': opts.key ?? KEYS.alice }, ...(opts.session_id ? { session_id: opts.session_id } : {}) })
  return await tool.invoke({ id: 'call_1', name: 'execute_code', type: 'tool_call', args, ...(opts.files ? { _injected_files: opts.files } : {}) }) as unknown as ToolResult
}

const download = (sessionId: string, fileId: string, key = KEYS.alice) => fetch(`${base}/download/${sessionId}/${fileId}`, { headers: { 'x-api-key': key } })

t.test('LibreChat\'s tool runs Python that writes a CSV and a PNG; a later call reads the CSV; downloads are byte-identical', async (t) => {
  const first = await execute({
    lang: 'py',
    code: [
      'import csv, matplotlib',
      "matplotlib.use('Agg')",
      'import matplotlib.pyplot as plt',
      "with open('/mnt/data/table.csv', 'w', newline='') as f:",
      '    csv.writer(f).writerows([["n", "square"], *[[i, i * i] for i in range(5)]])',
      'plt.plot([1, 4, 9])',
      "plt.savefig('/mnt/data/plot.png')",
      "print('wrote 2 files')"
    ].join('\n')
  })
  t.match(first.content, /^stdout:\nwrote 2 files\n/)
  const { session_id: sessionId, files } = first.artifact
  t.match(sessionId, /^sbx_/)
  t.same(files!.map(f => f.name).sort(), ['plot.png', 'table.csv'], 'both new files come back as refs')
  t.same(files!.map(f => f.path).sort(), ['/mnt/data/plot.png', '/mnt/data/table.csv'])

  const second = await execute({ lang: 'py', code: "print(open('/mnt/data/table.csv').read().splitlines()[-1])\nx = 1" }, { session_id: sessionId })
  t.match(second.content, /^stdout:\n4,16(\n|$)/, 'a later call in the same session reads the file')
  t.equal(second.artifact.session_id, sessionId)
  t.notOk(second.artifact.files, 'files it only read are not returned again')
  const third = await execute({ lang: 'py', code: "print('x' in dir())" }, { session_id: sessionId })
  t.match(third.content, /^stdout:\nFalse(\n|$)/, 'each call is a fresh process: variables do not carry over')

  for (const file of files!) {
    const res = await download(sessionId, file.id)
    t.equal(res.status, 200)
    const bytes = Buffer.from(await res.arrayBuffer())
    const ours = await app.inject({ method: 'GET', url: `/v1/sandboxes/${sessionId}/files/${file.name}`, headers: auth(KEYS.alice) })
    t.ok(bytes.equals(ours.rawPayload), `${file.name} downloads byte-identical`)
    t.match(res.headers.get('content-disposition'), new RegExp(`filename="${file.name}"`))
  }
  t.equal((await download(sessionId, files![0].id)).headers.get('content-type'), files![0].name.endsWith('.png') ? 'image/png' : 'text/csv')

  const moved = await execute({ lang: 'py', code: "print(open('/mnt/data/input.csv').read().count('\\n'))" }, { files: [{ id: files!.find(f => f.name === 'table.csv')!.id, storage_session_id: sessionId, name: 'input.csv', kind: 'user' }] })
  t.match(moved.content, /^stdout:\n6(\n|$)/, 'input files (current shape) are placed in /mnt/data of a new session first')
  t.not(moved.artifact.session_id, sessionId)
})

t.test('JavaScript and bash run too; a failing program is output and an exit code, not an HTTP error', async (t) => {
  const js = await execute({ lang: 'js', code: 'console.log([1, 2, 3].map(x => x * 2).join(","), process.argv.slice(2).join("+"))', args: ['a', 'b c'] })
  t.match(js.content, /^stdout:\n2,4,6 a\+b c(\n|$)/, 'args reach the program')
  const bash = await execute({ lang: 'bash', code: 'echo "$((6 * 7))"; pwd' })
  t.match(bash.content, /^stdout:\n42\n\/mnt\/data(\n|$)/)
  const res = await fetch(`${base}/exec`, { method: 'POST', headers: { 'x-api-key': KEYS.alice, 'content-type': 'application/json' }, body: JSON.stringify({ lang: 'py', code: 'import sys\nprint("partial")\nraise SystemExit(3)', user_id: 'u1', entity_id: 'agent_1', runtime_session_hint: 'x' }) })
  t.equal(res.status, 200, 'unknown fields (user_id, entity_id, ...) are accepted')
  t.match(await res.json(), { stdout: 'partial\n', code: 3 })
  const error = await execute({ lang: 'py', code: '1/0' })
  t.match(error.content, /stderr:\n[\s\S]*ZeroDivisionError/)
})

t.test("each of the 13 languages of LibreChat's tool prints a computed value; a C compile error is output, not an HTTP error", async (t) => {
  for (const [lang, language] of Object.entries(LIBRECHAT_NAMES)) {
    const started = Date.now()
    const result = await execute({ lang, code: PROGRAMS[language] })
    t.match(result.content, new RegExp(`^stdout:\\n${language}\\s+42`), `${lang} (${Date.now() - started} ms)`)
  }
  const broken = await fetch(`${base}/exec`, { method: 'POST', headers: { 'x-api-key': KEYS.alice, 'content-type': 'application/json' }, body: JSON.stringify({ lang: 'c', code: 'int main(void) { return missing; }' }) })
  t.equal(broken.status, 200)
  t.match(await broken.json(), { stdout: '', stderr: /error: .missing. undeclared/, code: 1 })
  const viaTool = await execute({ lang: 'c', code: 'int main(void) { return missing; }' })
  t.match(viaTool.content, /stderr:\n[\s\S]*missing. undeclared/, "LibreChat's tool shows the compiler's message to the model")
})

t.test('bad input: unknown lang names the languages; paths that leave /mnt/data; an oversized upload', async (t) => {
  const headers = { 'x-api-key': KEYS.alice, 'content-type': 'application/json' }
  const lang = await fetch(`${base}/exec`, { method: 'POST', headers, body: JSON.stringify({ lang: 'cobol', code: 'x' }) })
  t.equal(lang.status, 400)
  t.match(await lang.json(), { error: /Unsupported language: cobol \(this server runs python, javascript, shell, typescript, c, cpp, java, php, rust, go, d, fortran, r\)/, code: 'unsupported_language' })

  const first = await execute({ lang: 'bash', code: 'echo hi > /mnt/data/a.txt' })
  const traversal = await fetch(`${base}/exec`, { method: 'POST', headers, body: JSON.stringify({ lang: 'py', code: '1', files: [{ id: first.artifact.files![0].id, session_id: first.artifact.session_id, name: '../../etc/evil' }] }) })
  t.equal(traversal.status, 400)
  t.match(await traversal.json(), { code: 'invalid_path' })
  t.equal((await download(first.artifact.session_id, Buffer.from('../../etc/passwd').toString('base64url'))).status, 400, 'a file id naming a path outside is refused')

  const form = new FormData()
  form.append('entity_id', 'agent_1')
  form.append('file', new Blob([Buffer.alloc(70_000, 1)]), 'big.bin')
  const big = await fetch(`${base}/upload`, { method: 'POST', headers: { 'x-api-key': KEYS.alice }, body: form })
  t.equal(big.status, 413)
  t.match(await big.json(), { code: 'file_too_large' })
  const evil = new FormData()
  evil.append('file', new Blob(['x']), '../evil.txt')
  t.equal((await fetch(`${base}/upload`, { method: 'POST', headers: { 'x-api-key': KEYS.alice }, body: evil })).status, 400)
})

t.test('upload, list, probe, use in exec, delete; keys: X-API-Key or Bearer, none is 401, another key\'s ids are 404', async (t) => {
  const form = new FormData()
  form.append('entity_id', 'agent_1')
  form.append('file', new Blob(['alpha,beta\n1,2\n']), 'data.csv')
  const up = await fetch(`${base}/upload`, { method: 'POST', headers: { authorization: `Bearer ${KEYS.alice}` }, body: form })
  t.equal(up.status, 200)
  const uploaded = await up.json()
  t.match(uploaded, { message: 'success', session_id: /^sbx_/, files: [{ filename: 'data.csv' }] })
  t.equal(uploaded.storage_session_id, uploaded.session_id)
  const { fileId } = uploaded.files[0]

  const list = await (await fetch(`${base}/files/${uploaded.session_id}?detail=full`, { headers: { 'x-api-key': KEYS.alice } })).json()
  t.match(list, [{ id: fileId, name: 'data.csv', size: 15, storage_session_id: uploaded.session_id, contentType: 'text/csv' }])
  t.same(await (await fetch(`${base}/files/${uploaded.session_id}`, { headers: { 'x-api-key': KEYS.alice } })).json(), [`${uploaded.session_id}/${fileId}`])
  const probe = await fetch(`${base}/sessions/${uploaded.session_id}/objects/${fileId}`, { headers: { 'x-api-key': KEYS.alice } })
  t.match(await probe.json(), { size: 15, lastModified: /^\d{4}-/ })

  const used = await execute({ lang: 'py', code: "print(open('/mnt/data/data.csv').read().split()[1])" }, { files: [{ id: fileId, session_id: uploaded.session_id, name: 'data.csv' }] })
  t.match(used.content, /^stdout:\n1,2(\n|$)/, 'an uploaded file (old ref shape) is used by exec')

  t.equal((await fetch(`${base}/exec`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"lang":"py","code":"1"}' })).status, 401)
  for (const url of [`/download/${uploaded.session_id}/${fileId}`, `/files/${uploaded.session_id}`, `/sessions/${uploaded.session_id}/objects/${fileId}`]) {
    const res = await fetch(`${base}${url}`, { headers: { 'x-api-key': KEYS.bob } })
    t.equal(res.status, 404, `bob: ${url}`)
  }
  await t.rejects(execute({ lang: 'py', code: '1' }, { key: KEYS.bob, session_id: uploaded.session_id }), "bob cannot run in alice's session")
  const stolen = await fetch(`${base}/exec`, { method: 'POST', headers: { 'x-api-key': KEYS.bob, 'content-type': 'application/json' }, body: JSON.stringify({ lang: 'py', code: '1', files: [{ id: fileId, session_id: uploaded.session_id, name: 'x.csv' }] }) })
  t.equal(stolen.status, 404, "nor copy alice's files into his own")

  const del = await fetch(`${base}/files/${uploaded.session_id}/${fileId}`, { method: 'DELETE', headers: { 'x-api-key': KEYS.alice } })
  t.equal(del.status, 200)
  t.equal((await download(uploaded.session_id, fileId)).status, 404, 'a deleted file is gone')
})

t.test('stateful_code_sessions: bash and Python of one conversation share a warm workspace across calls; another conversation does not', async (t) => {
  const { createBashExecutionTool } = agents as unknown as { createBashExecutionTool: (params: Record<string, unknown>) => { invoke: (call: object) => Promise<unknown> } }
  /** LibreChat's tools as it builds them for an agent with stateful code sessions on, for one conversation. */
  const tools = (conversation: string) => {
    const params = { baseUrl: base, authHeaders: { 'X-API-Key': KEYS.alice }, statefulSessions: true, executionProfile: 'stateful', runtimeSessionHint: conversation }
    return { bash: createBashExecutionTool(params), code: createCodeExecutionTool(params) }
  }
  const one = tools('conversation-1')
  const wrote = await one.bash.invoke({ id: 'call_b1', name: 'bash', type: 'tool_call', args: { command: 'echo "from bash" > /mnt/data/shared.txt; echo done' } }) as ToolResult & { artifact: { runtime_session_id?: string, runtime_status?: string } }
  t.match(wrote.content, /stdout:\ndone/)
  t.match(wrote.artifact, { runtime_session_id: /^rt_/, runtime_status: 'new' }, 'the first call makes the warm workspace')
  const read = await one.code.invoke({ id: 'call_c1', name: 'execute_code', type: 'tool_call', args: { lang: 'py', code: 'print(open("/mnt/data/shared.txt").read().strip())\nx = 5' } }) as ToolResult & { artifact: { runtime_session_id?: string, runtime_status?: string } }
  t.match(read.content, /stdout:\nfrom bash/, 'Python of the same conversation reads what bash wrote, with no session id passed')
  t.match(read.artifact, { runtime_session_id: wrote.artifact.runtime_session_id, runtime_status: 'reused' })
  const fresh = await one.code.invoke({ id: 'call_c2', name: 'execute_code', type: 'tool_call', args: { lang: 'py', code: 'print("x" in dir())' } }) as ToolResult
  t.match(fresh.content, /stdout:\nFalse/, 'each execution is a fresh process: files persist, variables do not')
  const two = tools('conversation-2')
  const other = await two.bash.invoke({ id: 'call_b2', name: 'bash', type: 'tool_call', args: { command: 'ls /mnt/data/shared.txt 2>&1 || true' } }) as ToolResult & { artifact: { runtime_session_id?: string } }
  t.match(other.content, /No such file/, 'another conversation has a workspace of its own')
  t.not(other.artifact.runtime_session_id, wrote.artifact.runtime_session_id)
  const bob = await app.inject({ method: 'POST', url: '/librechat/v1/exec', headers: { 'x-api-key': KEYS.bob }, payload: { lang: 'bash', code: 'ls /mnt/data', runtime_session_hint: 'conversation-1' } })
  t.equal(bob.statusCode, 200)
  t.notMatch(bob.json().stdout, /shared\.txt/, 'the same hint from another key is another workspace')
  t.equal((await app.inject({ method: 'POST', url: '/librechat/v1/exec', headers: { 'x-api-key': KEYS.alice }, payload: { lang: 'bash', code: 'true', runtime_session_hint: 'x'.repeat(300) } })).statusCode, 400)
})

t.test('attached workspaces: LibreChat\'s bash tool with X-LibreChat-Code-Workspace-ID keeps a project root across conversations; profiles are checked', async (t) => {
  const { createBashExecutionTool } = agents as unknown as { createBashExecutionTool: (params: Record<string, unknown>) => { invoke: (call: object, config?: object) => Promise<unknown> } }
  const bash = (workspaceId: string, extra: Record<string, unknown> = {}) => createBashExecutionTool({ baseUrl: base, authHeaders: { 'X-API-Key': KEYS.alice }, workspaceId, ...extra })
  const project = bash('project-1')
  const wrote = await project.invoke({ id: 'call_w1', name: 'bash', type: 'tool_call', args: { command: 'mkdir -p src && echo "print(6 * 7)" > src/main.py && pwd' } }) as ToolResult
  t.match(wrote.content, /stdout:\n\/mnt\/data\n/, 'commands start in the workspace root (here /mnt/data is the project root too)')
  const ran = await bash('project-1').invoke({ id: 'call_w2', name: 'bash', type: 'tool_call', args: { command: 'python3 src/main.py' } }) as ToolResult
  t.match(ran.content, /stdout:\n42/, 'a later call (another conversation\'s tool, same workspace) finds the project')
  const other = await bash('project-2').invoke({ id: 'call_w3', name: 'bash', type: 'tool_call', args: { command: 'ls src 2>&1 || true' } }) as ToolResult
  t.match(other.content, /No such file/, 'another workspace is another root')
  const pinned = await bash('project-1', { workspaceInstanceId: 'a'.repeat(64) }).invoke({ id: 'call_w4', name: 'bash', type: 'tool_call', args: { command: 'ls src 2>&1 || true' } }) as ToolResult
  t.match(pinned.content, /No such file/, 'another instance of the workspace is another root')
  const bobs = await app.inject({ method: 'POST', url: '/librechat/v1/exec/programmatic', headers: { 'x-api-key': KEYS.bob, 'x-librechat-code-workspace-id': 'project-1' }, payload: { lang: 'bash', code: 'ls src 2>&1 || true', tools: [] } })
  t.match(bobs.json(), { status: 'completed', stdout: /No such file/ }, 'the same workspace id from another key is another root')

  // A cancel (the tool's AbortSignal) reaches exec/programmatic/cancel and interrupts the run; the workspace goes on.
  const abort = new AbortController()
  const long = project.invoke({ id: 'call_w5', name: 'bash', type: 'tool_call', args: { command: 'sleep 60; echo late' } }, { signal: abort.signal })
  await new Promise(resolve => setTimeout(resolve, 1500))
  abort.abort()
  await long.catch(() => {})
  const after = await project.invoke({ id: 'call_w6', name: 'bash', type: 'tool_call', args: { command: 'echo free; ps -eo args | grep -c "^sleep 60" || true' } }) as ToolResult
  t.match(after.content, /stdout:\nfree\n0/, 'the cancelled command no longer runs')

  const withTools = await app.inject({ method: 'POST', url: '/librechat/v1/exec/programmatic', headers: { 'x-api-key': KEYS.alice }, payload: { lang: 'py', code: 'print(1)', tools: [{ name: 'web_search' }] } })
  t.equal(withTools.statusCode, 400)
  t.match(withTools.json(), { code: 'unsupported_capability' }, 'code that would call tools back is refused with the capability error LibreChat explains')
  t.equal((await app.inject({ method: 'POST', url: '/librechat/v1/exec/programmatic', headers: { 'x-api-key': KEYS.alice, 'x-librechat-code-workspace-id': '../etc' }, payload: { lang: 'bash', code: 'true' } })).statusCode, 400)

  // X-CodeAPI-Expected-Profile: default and stateful are served; another profile is the capability mismatch.
  const gpu = await createCodeExecutionTool({ baseUrl: base, authHeaders: { 'X-API-Key': KEYS.alice }, executionProfile: 'gpu' }).invoke({ id: 'call_p1', name: 'execute_code', type: 'tool_call', args: { lang: 'py', code: 'print(1)' } }).catch((err: Error) => err) as ToolResult | Error
  t.match(gpu instanceof Error ? gpu.message : gpu.content, /not supported by the selected environment.*execution profile/, 'an unknown profile: LibreChat\'s capability message')
  const stateful = await createCodeExecutionTool({ baseUrl: base, authHeaders: { 'X-API-Key': KEYS.alice }, executionProfile: 'default' }).invoke({ id: 'call_p2', name: 'execute_code', type: 'tool_call', args: { lang: 'py', code: 'print(1)' } }) as ToolResult
  t.match(stateful.content, /stdout:\n1/)
})
