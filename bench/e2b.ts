// E2B's SDKs against our server (issue 25), beside our own REST API in the same run:
// - create → first command: Sandbox.create() then commands.run('true'), against POST /v1/sandboxes then POST /commands;
// - commands.run('true') on a live sandbox, against POST /v1/sandboxes/:id/commands {cmd: 'true'};
// - runCode('1+1') (the code-interpreter SDK), against POST /v1/sandboxes/:id/execute {code: '1+1'}.
// A warm pool serves the creates (POOL_SIZE, refilled between rounds). Published for hosted peers (their own
// figures): Daytona 0.11 s and E2B 0.44 s median from create to a first command.
// Usage: npm run bench:e2b (after npm run setup). BENCH_ROUNDS sets the samples of the per-call rows (default 200).
import { Sandbox } from 'e2b'
import { Sandbox as CodeSandbox } from '@e2b/code-interpreter'
import { Server, KEY, headers, ms, pct, sleep } from './server.js'

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 200)
const CREATES = Number(process.env.BENCH_CREATES ?? 20)

async function call (server: Server, method: string, path: string, body?: unknown): Promise<any> {
  const res = await fetch(`${server.base}${path}`, { method, headers: body === undefined ? { authorization: headers.authorization } : headers, ...(body === undefined ? {} : { body: JSON.stringify(body) }) })
  const text = await res.text()
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`)
  return text ? JSON.parse(text) : null
}

const row = (what: string, xs: number[], baseline: string, base: number[]) =>
  `| ${what} | ${ms(pct(xs, 50))} / ${ms(pct(xs, 99))} | ${baseline} | ${ms(pct(base, 50))} / ${ms(pct(base, 99))} |`

/** Until the warm pool is full again (creates take from it), so that each create is measured against a warm one. */
async function warm (server: Server, size: number): Promise<void> {
  for (let i = 0; i < 600; i++) {
    const ready = await call(server, 'GET', '/v1/ready')
    if ((ready.pool?.warm ?? 0) >= size) return
    await sleep(100)
  }
}

async function main (): Promise<void> {
  const pool = 2
  const server = new Server('e2b', { POOL_SIZE: String(pool), POOL_MAX: String(pool), MAX_SANDBOXES_PER_KEY: '100' })
  await server.start()
  const opts = { apiKey: KEY, apiUrl: `${server.base}/e2b`, sandboxUrl: `${server.base}/e2b/sandbox` }
  try {
    const sdkCreate: number[] = []
    const restCreate: number[] = []
    for (let i = 0; i < CREATES; i++) {
      await warm(server, pool)
      let t0 = performance.now()
      const sandbox = await Sandbox.create(opts)
      await sandbox.commands.run('true')
      sdkCreate.push(performance.now() - t0)
      await sandbox.kill()
      await warm(server, pool)
      t0 = performance.now()
      const made = await call(server, 'POST', '/v1/sandboxes', {})
      await call(server, 'POST', `/v1/sandboxes/${made.id}/commands`, { cmd: 'true' })
      restCreate.push(performance.now() - t0)
      await call(server, 'DELETE', `/v1/sandboxes/${made.id}`)
    }

    const sandbox = await CodeSandbox.create(opts)
    const id = Buffer.from(sandbox.sandboxId, 'hex').toString()
    const sdkRun: number[] = []
    const restRun: number[] = []
    const sdkCode: number[] = []
    const restCode: number[] = []
    for (let i = 0; i < 20; i++) { await sandbox.commands.run('true'); await sandbox.runCode('1+1') }
    for (let i = 0; i < ROUNDS; i++) {
      let t0 = performance.now()
      await sandbox.commands.run('true')
      sdkRun.push(performance.now() - t0)
      t0 = performance.now()
      await call(server, 'POST', `/v1/sandboxes/${id}/commands`, { cmd: 'true' })
      restRun.push(performance.now() - t0)
      t0 = performance.now()
      const execution = await sandbox.runCode('1+1')
      sdkCode.push(performance.now() - t0)
      if (execution.text !== '2') throw new Error(`runCode answered ${JSON.stringify(execution)}`)
      t0 = performance.now()
      await call(server, 'POST', `/v1/sandboxes/${id}/execute`, { code: '1+1' })
      restCode.push(performance.now() - t0)
    }
    await sandbox.kill()
    process.stdout.write([
      `| E2B SDK (${CREATES} creates, ${ROUNDS} calls) | SDK p50 / p99 ms | our REST API | REST p50 / p99 ms |`,
      '|---|---|---|---|',
      row('create → first `commands.run(\'true\')` (warm pool)', sdkCreate, 'POST /v1/sandboxes → POST /commands', restCreate),
      row('`commands.run(\'true\')`', sdkRun, 'POST /commands `true`', restRun),
      row('`runCode(\'1+1\')`', sdkCode, 'POST /execute `1+1`', restCode)
    ].join('\n') + '\n')
  } finally {
    await server.clear().catch(() => {})
    await server.stop()
  }
}

main().catch((err) => { process.stderr.write(`${(err as Error).stack}\n`); process.exit(1) })
