// The agent SDK adapters (issue 27) against our REST API and the naive baseline, in the same run:
// - AI SDK `session.run({ command: 'true' })` (interpreter-server/ai-sdk) and OpenAI Agents SDK `session.exec({ cmd: 'true' })`
//   (interpreter-server/openai-agents: a background process followed over SSE, as the SDK's yield semantics need),
//   against POST /v1/sandboxes/:id/commands `true` and `docker exec <container> true` (dockerode, as a server would);
// - persistWorkspace / hydrateWorkspace of a workspace of 200 files (5 MB), against `docker exec tar -c` of it.
// Usage: npm run bench:agents (after npm run setup). BENCH_ROUNDS sets the samples (default 100).
import Docker from 'dockerode'
import { Server, KEY, headers, ms, pct } from './server.js'
import { InterpreterSandboxSession } from '../client/ai-sdk.js'
import { InterpreterSandboxClient } from '../client/openai-agents.js'

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 100)
const row = (what: string, xs: number[]) => `| ${what} | ${ms(pct(xs, 50))} | ${ms(pct(xs, 99))} |`

async function timed (n: number, fn: () => Promise<unknown>): Promise<number[]> {
  const out: number[] = []
  for (let i = 0; i < n; i++) {
    const t0 = performance.now()
    await fn()
    out.push(performance.now() - t0)
  }
  return out
}

/** `docker exec` of a command as the sandbox user, to its end (the stream drained). */
async function dockerExec (container: Docker.Container, cmd: string[]): Promise<void> {
  const e = await container.exec({ Cmd: cmd, AttachStdout: true, AttachStderr: true, User: '1000' })
  const stream = await e.start({ hijack: true, stdin: false })
  await new Promise<void>((resolve) => { stream.on('end', () => resolve()); stream.resume() })
}

async function main (): Promise<void> {
  const server = new Server('agents', { POOL_SIZE: '2' })
  await server.start()
  try {
    const agents = new InterpreterSandboxClient({ url: server.base, apiKey: KEY })
    const session = await agents.create()
    const id = session.sandboxId
    const ai = new InterpreterSandboxSession({ client: { url: server.base, apiKey: KEY }, sandboxId: id })
    const rest = () => fetch(`${server.base}/v1/sandboxes/${id}/commands`, { method: 'POST', headers, body: JSON.stringify({ cmd: 'true' }) }).then(r => r.json())
    const hostname = (await ai.run({ command: 'hostname' })).stdout.trim()
    const container = new Docker().getContainer(hostname)
    await container.inspect() // the sandbox's hostname is its container's short id
    for (let i = 0; i < 10; i++) { await ai.run({ command: 'true' }); await session.exec({ cmd: 'true' }); await rest(); await dockerExec(container, ['true']) }

    const aiRun = await timed(ROUNDS, () => ai.run({ command: 'true' }))
    const agentsExec = await timed(ROUNDS, () => session.exec({ cmd: 'true', login: false }))
    const restRun = await timed(ROUNDS, rest)
    const baseline = await timed(ROUNDS, () => dockerExec(container, ['true']))

    await session.exec({ cmd: 'mkdir -p data && for i in $(seq 1 200); do head -c 25000 /dev/urandom > data/f$i.bin; done' })
    const persist: number[] = []
    const hydrate: number[] = []
    const target = await agents.create()
    let bytes = 0
    for (let i = 0; i < 10; i++) {
      let t0 = performance.now()
      const tar = await session.persistWorkspace()
      persist.push(performance.now() - t0)
      bytes = tar.byteLength
      t0 = performance.now()
      await target.hydrateWorkspace(tar)
      hydrate.push(performance.now() - t0)
    }
    const tarBaseline = await timed(10, () => dockerExec(container, ['tar', '-c', '-C', '/home/user', '-f', '/dev/null', '.']))
    await target.shutdown()
    await session.shutdown()
    process.stdout.write([
      `| agent SDK adapters (${ROUNDS} calls; workspace ${(bytes / 1e6).toFixed(1)} MB tar, 10 rounds) | p50 ms | p99 ms |`,
      '|---|---|---|',
      row('AI SDK `session.run({ command: \'true\' })`', aiRun),
      row('Agents SDK `session.exec({ cmd: \'true\' })` (spawn + SSE follow)', agentsExec),
      row('our REST: POST /commands `true`', restRun),
      row('baseline: `docker exec true` (dockerode)', baseline),
      row('Agents SDK `persistWorkspace()` (GET /archive)', persist),
      row('Agents SDK `hydrateWorkspace()` (PUT /archive) into another sandbox', hydrate),
      row('baseline: `docker exec tar -c` of the workspace to /dev/null', tarBaseline)
    ].join('\n') + '\n')
  } finally {
    await server.stop()
  }
}

main().catch((err) => { process.stderr.write(`${(err as Error).stack}\n`); process.exit(1) })
