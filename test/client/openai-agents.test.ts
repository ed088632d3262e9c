// interpreter-server/openai-agents: the OpenAI Agents SDK's own SandboxAgent and Runner (with its chat-completions
// model pointed at the fake LLM) run exec_command and apply_patch on our sandboxes; the session's processes, files,
// workspace archives, serialized state (resumed from another process) and port URLs. Real Docker, real Redis.
import t from 'tap'
import { execFile } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import OpenAI from 'openai'
import { Runner, setTracingDisabled } from '@openai/agents'
import { OpenAIChatCompletionsModel } from '@openai/agents-openai'
import { Manifest, SandboxAgent } from '@openai/agents-core/sandbox'
import { FakeLlm } from '../fake-llm.js'
import { build, sandboxConfig, KEYS, REDIS_URL, flushPrefix, waitFor } from '../helper.js'
import { InterpreterSandboxClient, truncate, type InterpreterAgentsSession } from '../../client/openai-agents.js'

setTracingDisabled(true)
const fake = new FakeLlm()
const run = promisify(execFile)

t.test('output truncation keeps the head and the tail, as the SDK counts tokens', async (t) => {
  t.same(truncate('short', 10), { text: 'short' })
  const cut = truncate('a'.repeat(100) + 'b'.repeat(100), 10)
  t.match(cut.text, /^a{20}\.\.\.40 tokens truncated\.\.\.b{20}$/)
  t.equal(cut.originalTokenCount, 50)
})

t.test('the OpenAI Agents SDK against sandboxes of ours', async (t) => {
  await fake.start()
  t.teardown(() => fake.stop())
  const config = await sandboxConfig({ POOL_SIZE: '2' })
  const app = await build(t, config)
  t.teardown(async () => { await flushPrefix(REDIS_URL, config.REDIS_PREFIX) })
  const url = await app.listen({ port: 0, host: '127.0.0.1' })
  const client = new InterpreterSandboxClient({ url, apiKey: KEYS.alice })
  const openai = new OpenAI({ baseURL: `${fake.url}/v1`, apiKey: 'sk-fake' })
  const model = new OpenAIChatCompletionsModel(openai as unknown as ConstructorParameters<typeof OpenAIChatCompletionsModel>[0], 'gpt-test')
  const made: InterpreterAgentsSession[] = []
  t.teardown(async () => { for (const s of made) await s.shutdown().catch(() => {}) })
  const create = async (...args: Parameters<InterpreterSandboxClient['create']>) => {
    const session = await client.create(...args)
    made.push(session)
    return session
  }

  await t.test('a SandboxAgent runs exec_command and edits a file with apply_patch in our sandbox', async (t) => {
    const session = await create({ manifest: new Manifest({ entries: { 'README.md': { type: 'file', content: '# project\n' }, src: { type: 'dir', children: { 'app.py': { type: 'file', content: 'print("hi")\n' } } } } }) })
    t.equal(session.state.manifest.root, '/home/user', 'the workspace root is the sandbox home')
    const outputs: string[] = []
    const lastTool = (body: Record<string, unknown>) => {
      const messages = body.messages as Array<{ role: string, content: unknown }>
      outputs.push(String(messages[messages.length - 1]!.content))
    }
    fake.script('gpt-test',
      { tool: { name: 'exec_command', input: { cmd: 'cat README.md src/app.py; whoami' } } },
      (body) => { lastTool(body); return { tool: { name: 'apply_patch', input: { type: 'update_file', path: 'src/app.py', diff: '@@\n-print("hi")\n+print("hello from the patch")\n' } } } },
      (body) => { lastTool(body); return { tool: { name: 'exec_command', input: { cmd: 'python3 src/app.py' } } } },
      (body) => { lastTool(body); return { text: 'Patched and ran it.' } })
    const agent = new SandboxAgent({ name: 'coder', instructions: 'Work in the sandbox.', model })
    const result = await new Runner().run(agent, 'patch the app', { sandbox: { session } })
    t.equal(result.finalOutput, 'Patched and ran it.')
    t.match(outputs[0], /Process exited with code 0\nOutput:\n# project\nprint\("hi"\)\nuser\n/, 'the manifest was materialized and the command ran as the sandbox user')
    t.match(outputs[1], /Updated src\/app\.py/)
    t.match(outputs[2], /hello from the patch/, 'the edit is in the sandbox')
    const tools = (fake.received.at(-1)!.body.tools as Array<{ function: { name: string } }>).map(x => x.function.name)
    t.ok(tools.includes('exec_command') && tools.includes('write_stdin') && tools.includes('apply_patch'), `the agent was given ${tools.join(', ')}`)
  })

  await t.test('a Runner with our client creates the sandbox itself, and removes it after the run', async (t) => {
    const before = (await client.client.sandboxes.list()).length
    let seenId = ''
    fake.script('gpt-test',
      { tool: { name: 'exec_command', input: { cmd: 'hostname' } } },
      (body) => { const m = body.messages as Array<{ content: unknown }>; seenId = String(m[m.length - 1]!.content); return { text: 'ok' } })
    const agent = new SandboxAgent({ name: 'owner', instructions: 'x', model })
    const result = await new Runner().run(agent, 'go', { sandbox: { client } })
    t.equal(result.finalOutput, 'ok')
    t.match(seenId, /Process exited with code 0/)
    t.equal((await client.client.sandboxes.list()).length, before, 'the sandbox the run created is gone')
  })

  await t.test('exec sessions: a process outlives its yield; write_stdin feeds it, polls it, and Ctrl-C stops it', async (t) => {
    const session = await create()
    const started = await session.exec({ cmd: 'echo ready; read line; echo "got $line"', yieldTimeMs: 300 })
    t.equal(started.exitCode, undefined)
    t.equal(started.output, 'ready\n', 'what it printed before the yield')
    t.type(started.sessionId, 'number')
    const fed = await session.writeStdin({ sessionId: started.sessionId!, chars: 'abc\n', yieldTimeMs: 5000 })
    t.match(fed, /Process exited with code 0\nOutput:\ngot abc\n$/)
    t.match(await session.writeStdin({ sessionId: started.sessionId!, chars: '' }), /session not found/, 'an ended session is gone')
    const sleeper = await session.exec({ cmd: 'sleep 60', yieldTimeMs: 100 })
    const stopped = await session.writeStdin({ sessionId: sleeper.sessionId!, chars: '\u0003', yieldTimeMs: 5000 })
    t.match(stopped, /Process exited with code 130/, 'Ctrl-C is SIGINT')
    const tty = await session.exec({ cmd: 'tty; read x; echo "x=$x"', tty: true, yieldTimeMs: 500 })
    t.match(tty.output, /\/dev\/pts\/\d+/, 'tty: true runs on a terminal of ours')
    t.match(await session.writeStdin({ sessionId: tty.sessionId!, chars: 'typed\r', yieldTimeMs: 5000 }), /x=typed/)
    const ttySleeper = await session.exec({ cmd: 'sleep 60', tty: true, yieldTimeMs: 300 })
    t.match(await session.writeStdin({ sessionId: ttySleeper.sessionId!, chars: '\u0003', yieldTimeMs: 5000 }), /Process exited with code 130/, 'Ctrl-C typed on the terminal interrupts')
    const quiet = await session.exec({ cmd: 'seq 1 20000', maxOutputTokens: 50 })
    t.match(quiet.output, /tokens truncated/)
    t.equal(quiet.exitCode, 0)
    const env = await client.create({ manifest: new Manifest({ environment: { GREETING: 'hi there' } }) })
    made.push(env)
    t.equal((await env.exec({ cmd: 'echo $GREETING' })).output, 'hi there\n', 'the manifest environment reaches commands')
    t.same((await session.listDir({ path: '.' })).filter(e => !e.name.startsWith('.')), [], 'a fresh workspace has no files but its dot files')
    t.equal(await session.pathExists('nope'), false)
    await session.materializeEntry({ path: 'plot.png', entry: { type: 'file', content: new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 1, 2, 3]) } })
    t.match(await session.viewImage({ path: 'plot.png' }), { type: 'image', image: { mediaType: 'image/png' } }, 'view_image reads an image')
    await t.rejects(session.viewImage({ path: 'nope.png' }), /not found/)
    t.equal(await session.directoryExists('.'), true)
  })

  await t.test('persistWorkspace from one sandbox, hydrateWorkspace into another: the same tree', async (t) => {
    const one = await create({ manifest: new Manifest({ entries: { 'a.txt': { type: 'file', content: 'alpha' }, deep: { type: 'dir', children: { nested: { type: 'dir', children: { 'b.bin': { type: 'file', content: new Uint8Array([0, 1, 2, 255]) } } } } } } }) })
    await one.exec({ cmd: 'ln -s a.txt link && mkdir -p empty && chmod 700 deep' })
    const tree = 'find . -not -name ".*" | sort | while read f; do stat -c "%n %F %a" "$f"; [ -f "$f" ] && [ ! -L "$f" ] && md5sum "$f"; done'
    const original = (await one.exec({ cmd: tree })).output
    const archive = await one.persistWorkspace()
    t.ok(archive.byteLength > 1024, `a tar of ${archive.byteLength} bytes`)
    const two = await create()
    await two.hydrateWorkspace(archive)
    t.equal((await two.exec({ cmd: tree })).output, original, 'files, directories, modes and symlinks alike')
    await t.rejects(two.hydrateWorkspace(archive, { archiveLimits: { maxInputBytes: 100 } }), /over the limit/)
  })

  await t.test('serialized session state resumes the same sandbox from another process', async (t) => {
    const session = await create()
    await session.exec({ cmd: 'echo kept > state.txt' })
    const serialized = await client.serializeSessionState(session.state)
    t.match(serialized, { sandboxId: session.sandboxId, server: url, root: '/home/user' })
    t.notOk(JSON.stringify(serialized).includes(KEYS.alice), 'the key is never in the state')
    const dir = mkdtempSync(join(tmpdir(), 'agents-resume-'))
    const script = join(dir, 'resume.mts')
    writeFileSync(script, [
      `import { InterpreterSandboxClient } from ${JSON.stringify(fileURLToPath(new URL('../../client/openai-agents.ts', import.meta.url)))}`,
      'const client = new InterpreterSandboxClient({ url: process.env.URL!, apiKey: process.env.KEY! })',
      'const state = await client.deserializeSessionState(JSON.parse(process.env.STATE!))',
      'const session = await client.resume(state)',
      'process.stdout.write((await session.exec({ cmd: "cat state.txt" })).output)'
    ].join('\n'))
    // A process of its own, outside tap's coverage (which would record it without source maps): tap's process tracker
    // puts its options back into every child's environment, so `env -u` takes them out again just before node starts.
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(NODE_OPTIONS|NODE_V8_COVERAGE|_TAPJS|TAP)/.test(k)))
    const child = await run('env', ['-u', 'NODE_OPTIONS', '-u', 'NODE_V8_COVERAGE', process.execPath, '--import', 'tsx', script], { env: { ...env, URL: url, KEY: KEYS.alice, STATE: JSON.stringify(serialized) } })
    t.equal(child.stdout, 'kept\n', 'a new process reached the same sandbox from the state alone')
    const other = new InterpreterSandboxClient({ url, apiKey: KEYS.bob })
    await t.rejects(other.resume(await other.deserializeSessionState(serialized)), /not found/i, 'another key cannot resume it')
    await t.rejects(new InterpreterSandboxClient({ url: 'http://127.0.0.1:9', apiKey: KEYS.alice }).resume(await client.deserializeSessionState(serialized)), /lives on/, 'nor another server')
  })

  await t.test('resolveExposedPort gives a URL that serves the sandbox\'s HTTP server', async (t) => {
    const session = await create({ manifest: new Manifest({ entries: { 'index.html': { type: 'file', content: '<p>served</p>' } } }) })
    const server = await session.exec({ cmd: 'python3 -m http.server 8080 --bind 127.0.0.1', yieldTimeMs: 200 })
    t.type(server.sessionId, 'number', 'the server keeps running as an exec session')
    const endpoint = await session.resolveExposedPort(8080)
    t.match(endpoint, { host: '127.0.0.1', tls: false, url: /\/v1\/ports\/[^/]+\/$/ })
    const body = await waitFor('the server', async () => {
      const res = await fetch(`${endpoint.url as string}index.html`).catch(() => null)
      return res?.status === 200 ? await res.text() : null
    })
    t.equal(body, '<p>served</p>', 'no key needed')
    t.same(session.state.exposedPorts?.['8080'], endpoint, 'recorded in the state')
    await t.rejects(session.resolveExposedPort(70000), /not a port/)
  })

  await t.test('unsupported manifest entries are refused with a clear error, and the half-made sandbox removed', async (t) => {
    const before = (await client.client.sandboxes.list()).length
    await t.rejects(client.create({ manifest: new Manifest({ entries: { repo: { type: 'git_repo', repo: 'openai/openai-agents-js' } } }) }), /git_repo entries are not supported/)
    t.equal((await client.client.sandboxes.list()).length, before)
    await t.rejects(client.create({ manifest: new Manifest({ root: '/srv' }) }), /cannot be used/)
  })
})
