// interpreter-server/ai-sdk: the AI SDK's own `generateText` (ai 7, with @ai-sdk/openai pointed at the fake LLM)
// runs a tool on our sandbox session; the session's files and processes; the harness provider's sessions, ports,
// resume, pause and removal. Real Docker, real Redis.
import t from 'tap'
import { WebSocket } from 'ws'
import { generateText, stepCountIs, tool } from 'ai'
import { createOpenAI } from '@ai-sdk/openai'
import { z } from 'zod'
import { FakeLlm } from '../fake-llm.js'
import { build, sandboxConfig, KEYS, REDIS_URL, flushPrefix, waitFor, wsEchoServer } from '../helper.js'
import { InterpreterClient } from '../../client/index.js'
import { InterpreterSandboxSession, createHarnessSandboxProvider, place } from '../../client/ai-sdk.js'

const fake = new FakeLlm()

const text = async (stream: ReadableStream<Uint8Array>) => {
  let out = ''
  for await (const chunk of stream as unknown as AsyncIterable<Uint8Array>) out += Buffer.from(chunk).toString()
  return out
}

t.test('paths: the workspace through the files API, the rest through commands', async (t) => {
  t.same(place('a/b.txt'), { rel: 'a/b.txt' })
  t.same(place('/home/user/a/../b.txt'), { rel: 'b.txt' })
  t.same(place('/home/user'), { rel: '' })
  t.same(place('../../etc/passwd'), { abs: '/etc/passwd' })
  t.same(place('/tmp/x'), { abs: '/tmp/x' })
  t.throws(() => place('a\0b'))
})

t.test('the AI SDK against a sandbox of ours', async (t) => {
  await fake.start()
  t.teardown(() => fake.stop())
  const config = await sandboxConfig({ POOL_SIZE: '1', SANDBOX_EGRESS_ALLOWED: 'example.org,*.example.org' })
  const app = await build(t, config)
  t.teardown(async () => { await flushPrefix(REDIS_URL, config.REDIS_PREFIX) })
  const url = await app.listen({ port: 0, host: '127.0.0.1' })
  const client = new InterpreterClient({ url, apiKey: KEYS.alice })
  const sandbox = await client.sandboxes.create()
  t.teardown(async () => { await client.sandboxes.delete(sandbox.id).catch(() => {}) })
  const session = new InterpreterSandboxSession({ client: { url, apiKey: KEYS.alice }, sandboxId: sandbox.id })

  await t.test('generateText: the model calls a bash tool that runs on the session, and reads its output', async (t) => {
    let toolMessage: unknown
    fake.script('gpt-test',
      { tool: { name: 'bash', input: { command: 'echo from-the-sandbox; whoami; pwd' } } },
      (body) => { const messages = body.messages as unknown[]; toolMessage = messages[messages.length - 1]; return { text: 'It ran as user.' } })
    const openai = createOpenAI({ baseURL: `${fake.url}/v1`, apiKey: 'sk-fake' })
    const result = await generateText({
      model: openai.chat('gpt-test'),
      prompt: 'who runs in the sandbox?',
      experimental_sandbox: session,
      stopWhen: stepCountIs(3),
      tools: {
        bash: tool({
          description: 'Run a bash command in the sandbox',
          inputSchema: z.object({ command: z.string() }),
          execute: async ({ command }, { experimental_sandbox: box }) => await box!.run({ command })
        })
      }
    })
    t.equal(result.text, 'It ran as user.')
    t.match(toolMessage, { role: 'tool' })
    t.same(JSON.parse((toolMessage as { content: string }).content), { exitCode: 0, stdout: 'from-the-sandbox\nuser\n/home/user\n', stderr: '' }, 'the command ran in the sandbox, and its output went back to the model')
  })

  await t.test('files: written through the session, read back by a command and by the session', async (t) => {
    await session.writeTextFile({ path: 'notes/a.txt', content: 'one\ntwo\nthree\nfour\n' })
    t.same(await session.run({ command: 'cat notes/a.txt | wc -l' }), { exitCode: 0, stdout: '4\n', stderr: '' }, 'a run sees the file')
    t.equal(await session.readTextFile({ path: '/home/user/notes/a.txt', startLine: 2, endLine: 3 }), 'two\nthree', 'a line range')
    t.equal(await session.readTextFile({ path: 'notes/a.txt', startLine: 4, endLine: 99 }), 'four\n', 'an end past the file reads to its end')
    const binary = Buffer.from([0, 1, 2, 250, 255, 10, 13])
    await session.writeBinaryFile({ path: '/tmp/elsewhere/bin.dat', content: binary })
    t.same(Buffer.from((await session.readBinaryFile({ path: '/tmp/elsewhere/bin.dat' }))!), binary, 'bytes outside the workspace, through commands')
    t.equal((await session.run({ command: 'od -An -tu1 /tmp/elsewhere/bin.dat' })).stdout.trim().split(/\s+/).join(','), '0,1,2,250,255,10,13')
    await session.writeFile({ path: 'streamed.txt', content: new ReadableStream({ start (c) { c.enqueue(Buffer.from('stream')); c.enqueue(Buffer.from('ed')); c.close() } }) })
    t.equal(await text((await session.readFile({ path: 'streamed.txt' }))!), 'streamed')
    t.equal(await session.readFile({ path: 'missing.txt' }), null, 'a missing file is null')
    t.equal(await session.readTextFile({ path: '/nope/missing' }), null, 'outside the workspace too')
    t.same(await session.stat({ path: 'notes/a.txt' }), { type: 'file', size: 19 })
    t.match(await session.stat({ path: '/tmp/elsewhere' }), { type: 'directory', size: Number })
    t.equal(await session.stat({ path: 'nope' }), null)
    t.same(await session.listDirectory({ path: 'notes' }), [{ name: 'a.txt', type: 'file' }])
    t.same(await session.listDirectory({ path: '/tmp/elsewhere' }), [{ name: 'bin.dat', type: 'file' }])
    t.equal(await session.listDirectory({ path: 'nope' }), null)
    t.equal(await session.deleteFile({ path: 'notes/a.txt' }), true)
    t.equal(await session.deleteFile({ path: 'notes/a.txt' }), false, 'deleting what is gone says so')
    t.equal(await session.deleteFile({ path: '/tmp/elsewhere/bin.dat' }), true)
    t.equal(await session.deleteFile({ path: '/tmp/elsewhere/bin.dat' }), false)
    await t.rejects(session.writeTextFile({ path: '/etc/passwd', content: 'x' }), /could not write \/etc\/passwd/, 'the sandbox user cannot write system files')
  })

  await t.test('spawn: output streams while it runs; stdin; kill; an aborted run', async (t) => {
    const proc = await session.spawn({ command: 'for i in 1 2 3; do echo line$i; sleep 0.3; done; echo done >&2', env: { X: '1' } })
    t.ok(proc.pid! > 0)
    const reader = proc.stdout.getReader()
    const first = await reader.read()
    t.equal(Buffer.from(first.value!).toString(), 'line1\n', 'the first line arrives before the process ends')
    let rest = ''
    for (let r = await reader.read(); !r.done; r = await reader.read()) rest += Buffer.from(r.value).toString()
    t.equal(rest, 'line2\nline3\n')
    t.equal(await text(proc.stderr), 'done\n')
    t.same(await proc.wait(), { exitCode: 0 })

    const cat = await session.spawn({ command: 'tr a-z A-Z', stdin: true })
    const writer = cat.stdin.getWriter()
    await writer.write(Buffer.from('hello '))
    await writer.write(Buffer.from('stdin\n'))
    await writer.close()
    t.equal(await text(cat.stdout), 'HELLO STDIN\n', 'stdin written, then closed')
    t.same(await cat.wait(), { exitCode: 0 })

    const sleeper = await session.spawn({ command: 'sleep 60' })
    await sleeper.kill()
    t.not((await sleeper.wait()).exitCode, 0, 'killed')
    await sleeper.kill() // idempotent

    const abort = new AbortController()
    setTimeout(() => abort.abort(new Error('enough')), 500)
    await t.rejects(session.run({ command: 'sleep 60', abortSignal: abort.signal }), /enough/, 'an aborted run rejects with the reason, and the process is killed')
    const listed = await client.request<{ data: Array<{ cmd: string[], running: boolean }> }>('GET', `/v1/sandboxes/${sandbox.id}/processes`)
    t.notOk(listed.data.some(p => p.running && p.cmd.join(' ').includes('sleep 60')), 'no sleep is left running')
  })

  await t.test('the harness provider: sessions, a WebSocket port, resume, identity snapshots, stop and destroy', async (t) => {
    const provider = createHarnessSandboxProvider({ url, apiKey: KEYS.alice, ports: [8765] })
    t.equal(provider.specificationVersion, 'harness-sandbox-v1')
    const harness = await provider.createSession({ sessionId: 'chat-1' })
    t.teardown(async () => { await harness.destroy() })
    t.equal(harness.defaultWorkingDirectory, '/home/user')
    t.same(harness.ports, [8765])
    await harness.writeTextFile({ path: 'echo_ws.py', content: wsEchoServer(8765) })
    await harness.spawn({ command: 'python3 echo_ws.py' })
    const endpoint = await harness.getPortEndpoint({ port: 8765, protocol: 'ws' })
    t.match(endpoint.url, /^ws:\/\/127\.0\.0\.1:\d+\/v1\/ports\/[^/]+\/$/, 'a plain ws:// URL, dialable as it is')
    const reply = await waitFor('the echo through the port URL', async () => {
      const ws = new WebSocket(`${endpoint.url}?agent_bridge_token=abc`)
      return await new Promise<string | null>((resolve) => {
        ws.on('open', () => ws.send('bridge'))
        ws.on('message', (data: Buffer) => { resolve(data.toString()); ws.close() })
        ws.on('error', () => resolve(null))
        ws.on('close', () => resolve(null))
      })
    })
    t.equal(reply, 'echo: bridge', 'a WebSocket server the session started, reached with no key')
    t.match(await harness.getPortUrl({ port: 8765 }), /^http:\/\//)

    await harness.setNetworkPolicy!({ mode: 'custom', allowedHosts: ['example.org', '*.example.org'] })
    t.same((await client.sandboxes.get(harness.id)).network, { allow: ['example.org', '*.example.org'] }, 'a custom policy is the sandbox\'s allow list, live')
    t.equal((await harness.run({ command: 'echo $HTTP_PROXY' })).stdout, 'http://127.0.0.1:3128\n', 'commands started now use the egress proxy')
    await harness.setNetworkPolicy!({ mode: 'deny-all' })
    t.equal((await client.sandboxes.get(harness.id)).network, 'none')
    await t.rejects(Promise.resolve(harness.setNetworkPolicy!({ mode: 'allow-all' })), /does not open a sandbox to every host/)
    await t.rejects(Promise.resolve(harness.setNetworkPolicy!({ mode: 'custom', allowedCIDRs: ['10.0.0.0/8'] })), /not by CIDR/)
    await t.rejects(Promise.resolve(harness.setNetworkPolicy!({ mode: 'custom', allowedHosts: ['evil.example.com'] })), /evil\.example\.com/, 'the operator\'s list holds')

    const restricted = harness.restricted()
    t.notOk('stop' in restricted || 'destroy' in restricted || 'getPortEndpoint' in restricted, 'the restricted view has no lifecycle and no ports')
    t.equal((await restricted.run({ command: 'ls echo_ws.py' })).exitCode, 0, 'but the same sandbox')

    const resumed = await provider.resumeSession!({ sessionId: 'chat-1' })
    t.equal(resumed.id, harness.id, 'resume finds the sandbox of the session id')
    t.equal(await resumed.readTextFile({ path: 'echo_ws.py', startLine: 1, endLine: 1 }), 'import asyncio, base64, hashlib', 'with its files')
    await t.rejects(Promise.resolve(provider.resumeSession!({ sessionId: 'never-made' })), /no sandbox/)

    await harness.stop()
    t.ok((await client.sandboxes.get(harness.id)).paused_at, 'stop pauses')
    await harness.stop() // idempotent
    t.equal((await harness.run({ command: 'cat echo_ws.py | head -1' })).stdout, 'import asyncio, base64, hashlib\n', 'the next use resumes it, files kept')

    let setups = 0
    const first = await provider.createSession({ identity: 'repo@abc', onFirstCreate: async (s) => { setups++; await s.writeTextFile({ path: 'setup.txt', content: 'installed' }) } })
    const second = await provider.createSession({ identity: 'repo@abc', onFirstCreate: async () => { setups++ } })
    t.equal(setups, 1, 'onFirstCreate runs once per identity')
    t.not(second.id, first.id)
    t.equal(await second.readTextFile({ path: 'setup.txt' }), 'installed', 'a later session of the identity starts from its snapshot')
    for (const s of [first, second]) await s.destroy()
    t.equal(await client.sandboxes.get(first.id).then(() => 200, (err: { status: number }) => err.status), 404, 'destroy removes the sandbox')
    await first.destroy() // idempotent
  })
})
