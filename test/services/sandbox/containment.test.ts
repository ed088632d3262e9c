import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { sandboxConfig, sandboxCalls, auth, KEYS, waitFor } from '../../helper.js'
import { buildApp } from '../../../app.js'
import Docker from 'dockerode'

const alice = auth(KEYS.alice)
let app: FastifyInstance
/**
 * Under gVisor the host sees a sandbox as one process (the Sentry): memory exhaustion stops the whole sandbox, not one
 * kernel. The contract there is a 410 sandbox_lost that says "out of memory", nothing outside the sandbox harmed.
 */
const gvisor = process.env.TEST_SANDBOX_RUNTIME === 'runsc'

t.before(async () => {
  const config = await sandboxConfig({ POOL_SIZE: '2', KERNEL_KILL_GRACE_MS: '500', SANDBOX_WORKSPACE_MB: '32', SANDBOX_OUTPUT_LIMIT: '65536', SANDBOX_MEMORY_MB: '256' })
  app = await buildApp({ config, sandbox: { waitWarm: true } }, false)
  await app.ready()
})

const { newSandbox, run } = sandboxCalls(() => app)

/** After each attack: the same sandbox runs code, a fresh one does too, and the server is ready. */
async function stillHealthy (t: Test, id: string): Promise<void> {
  t.equal((await run(id, 'print(6 * 7)')).stdout, '42\n', 'the same sandbox still runs code')
  const fresh = await newSandbox()
  t.equal((await run(fresh, 'print("fresh")')).stdout, 'fresh\n', 'a fresh sandbox works')
  await app.inject({ method: 'DELETE', url: `/v1/sandboxes/${fresh}`, headers: alice })
  t.equal((await app.inject({ method: 'GET', url: '/v1/ready' })).statusCode, 200, 'the server is ready')
}

/** Runs code that may take its whole sandbox down under gVisor: the execution's JSON, or the 410 that says so. */
async function runOrLost (t: Test, id: string, code: string, extra: object = {}): Promise<any> {
  const res = await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/execute`, headers: alice, payload: { code, ...extra } })
  if (res.statusCode === 200) return res.json()
  t.ok(gvisor, `only under gVisor may the sandbox itself stop (got ${res.statusCode} ${res.body})`)
  t.equal(res.statusCode, 410)
  t.match(res.json().error, { code: 'sandbox_lost', message: /ran out of memory/ }, 'the client is told the sandbox ran out of memory')
  t.equal((await app.inject({ method: 'GET', url: `/v1/sandboxes/${id}`, headers: alice })).statusCode, 404, 'and the stopped sandbox is gone')
  return null
}

/** After an attack that may have stopped its sandbox under gVisor: as stillHealthy, without the lost sandbox. */
async function healthyAfter (t: Test, id: string, lost: boolean): Promise<void> {
  if (!lost) return await stillHealthy(t, id)
  const fresh = await newSandbox()
  t.equal((await run(fresh, 'print("fresh")')).stdout, 'fresh\n', 'a fresh sandbox works')
  await app.inject({ method: 'DELETE', url: `/v1/sandboxes/${fresh}`, headers: alice })
  t.equal((await app.inject({ method: 'GET', url: '/v1/ready' })).statusCode, 200, 'the server is ready')
}

t.test('a fork bomb is contained by the pids limit and cleared by the timeout', async (t) => {
  const id = await newSandbox()
  const res = await runOrLost(t, id, 'import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass', { timeout_ms: 2000 })
  if (res) t.equal(res.error?.code, 'execution_timeout')
  await healthyAfter(t, id, !res)
})

t.test('allocating 1 GiB gives a clear out-of-memory error', async (t) => {
  const id = await newSandbox()
  await run(id, 'before = 1')
  const res = await runOrLost(t, id, 'block = bytearray(1024 ** 3)')
  if (res) {
    t.ok(res.error, 'the allocation failed')
    t.match(`${res.error.name}: ${res.error.value}`, /MemoryError|out of memory/)
  }
  await healthyAfter(t, id, !res)
})

t.test('a sandbox killed by hand during a run: 410 sandbox_lost saying it stopped, not that it ran out of memory', async (t) => {
  const id = await newSandbox()
  const running = app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/execute`, headers: alice, payload: { code: 'import time\ntime.sleep(30)' } })
  await waitFor('the sandbox is busy with the run', async () => (await app.inject({ method: 'GET', url: `/v1/sandboxes/${id}`, headers: alice })).json().status === 'busy', { every: 25 })
  const record = await app.store.getSandbox(id)
  await new Docker().getContainer(record!.container_id).kill() // SIGKILL, exit 137: what gVisor's memory limit does too
  const res = await running
  t.equal(res.statusCode, 410)
  t.match(res.json().error, { code: 'sandbox_lost', message: /stopped during the execution/ })
  t.equal((await app.inject({ method: 'GET', url: `/v1/sandboxes/${id}`, headers: alice })).statusCode, 404, 'and the stopped sandbox is gone')
})

t.test('filling the disk fails with ENOSPC; the read-only root cannot be written', async (t) => {
  const id = await newSandbox()
  const full = await run(id, 'with open("big.bin", "wb") as f:\n    while True:\n        f.write(b"x" * 1048576)')
  t.match(full.error, { name: 'OSError', value: /No space left|File too large/ })
  const root = await run(id, 'open("/usr/evil", "w")')
  t.match(root.error?.value, /Read-only file system|Permission denied/)
  await run(id, 'import os\nos.remove("big.bin")')
  await stillHealthy(t, id)
})

t.test('endless output is cut at the cap with a marker', async (t) => {
  const id = await newSandbox()
  const res = await run(id, 'while True:\n    print("x" * 1000)', { timeout_ms: 1500 })
  t.ok(res.stdout.length <= 65536 + 1000, `stdout was capped (${res.stdout.length} chars)`)
  t.match(res.stderr, /\[output truncated: more than 65536 bytes\]/)
  t.equal(res.error?.code, 'execution_timeout')
  await stillHealthy(t, id)
})

t.test('no network: only the loopback interface exists and nothing routes out', async (t) => {
  const id = await newSandbox()
  const res = await run(id, 'import socket\nprint([name for _, name in socket.if_nameindex()])\nprint(open("/proc/net/route").read().count("\\n"))')
  t.equal(res.stdout, "['lo']\n1\n", 'interfaces: lo only; routing table: header only')
  await stillHealthy(t, id)
})

t.test('user code signalling every process it can see kills only its own kernels', async (t) => {
  const id = await newSandbox()
  const py = await run(id, 'import os, signal\nfor pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:\n    try:\n        os.kill(pid, 0)\n    except PermissionError:\n        print("denied", pid)')
  t.match(py.stdout, /denied 1\n/, 'init cannot be signalled')
  const agentPid = (await run(id, 'import os\nprint([p for p in os.listdir("/proc") if p.isdigit() and b"agent.py" in open(f"/proc/{p}/cmdline", "rb").read()][0])')).stdout.trim()
  t.match(py.stdout, new RegExp(`denied ${agentPid}\\n`), 'the agent cannot be signalled')
  await run(id, 'marker = "set before"')
  const shell = await run(id, 'kill -9 -1; echo "shell survives"', { language: 'shell' })
  t.equal(shell.stdout, 'shell survives\n', 'kill -1 spares the caller')
  // The kill may land just before or just after the next request: either that run is told the kernel
  // had stopped (and runs), or it fails as kernel_died; both say the state was lost, and then it works.
  let python = await run(id, 'print("marker" in dir())')
  t.equal(python.state_lost, true, 'the next python run is told its state was lost')
  if (python.error?.code === 'kernel_died') python = await run(id, 'print("marker" in dir())')
  else t.match(python.stderr, /the python kernel had stopped since the last run/)
  t.equal(python.stdout, 'False\n', 'the python kernel was killed and restarted empty')
  await stillHealthy(t, id)
})

t.test("user code can read neither the agent's environment nor gain capabilities", async (t) => {
  const id = await newSandbox()
  const res = await run(id, [
    'import os',
    'agent = [p for p in os.listdir("/proc") if p.isdigit() and b"agent.py" in open(f"/proc/{p}/cmdline", "rb").read()][0]',
    'try:\n    open(f"/proc/{agent}/environ").read()\n    print("READ")\nexcept PermissionError:\n    print("denied")',
    'print("KERNEL_KILL_GRACE_MS" in os.environ)',
    'print([l for l in open("/proc/self/status") if l.startswith("CapEff")][0].split()[1])',
    'print(os.getuid())'
  ].join('\n'))
  // gVisor (Debian's 2022 runsc) lets any process read another's /proc/<pid>/environ; the agent's holds only the
  // container's settings (kill grace, preload list, socket directory), never a secret: the sandbox's env values
  // reach the agent over its channel, not its environment.
  t.equal(res.stdout, `${gvisor ? 'READ' : 'denied'}\nFalse\n0000000000000000\n1000\n`)
  await stillHealthy(t, id)
})

t.test("user code can neither enter the agent's socket directory nor connect to its socket", async (t) => {
  const id = await newSandbox()
  const res = await run(id, [
    'import os, socket',
    'for what in ("list", "connect"):',
    '    try:',
    '        if what == "list":',
    '            os.listdir("/run/agent")',
    '        else:',
    '            socket.socket(socket.AF_UNIX).connect("/run/agent/agent.sock")',
    '        print(what, "ALLOWED")',
    '    except PermissionError:',
    '        print(what, "denied")',
    '    except FileNotFoundError:',
    '        print(what, "absent")'
  ].join('\n'))
  const socketChannel = app.sandboxes.pool.stats.agent_channel === 'socket'
  t.equal(res.stdout, socketChannel ? 'list denied\nconnect denied\n' : 'list absent\nconnect absent\n')
  const record = await app.store.getSandbox(id)
  if (socketChannel) {
    const { statSync } = await import('node:fs')
    const dir = (await new Docker().getContainer(record!.container_id).inspect()).Config.Labels['dev.interpreter-server.agent-dir']
    const st = statSync(dir)
    t.equal(st.mode & 0o777, 0o700, 'the host directory is mode 0700')
    t.equal(st.uid, 0, 'owned by root (kernels run as uid 1000)')
  }
  await stillHealthy(t, id)
})

t.test('the files API refuses traversal, absolute paths and symlinks that lead out', async (t) => {
  const id = await newSandbox()
  await run(id, 'ln -s /etc/passwd pw && ln -s / rootlink && mkdir -p inside && ln -s inside ok', { language: 'shell' })
  const tries: Array<[string, string]> = [
    ['GET', `/v1/sandboxes/${id}/files/%2e%2e/%2e%2e/etc/passwd`],
    ['GET', `/v1/sandboxes/${id}/files/pw`],
    ['GET', `/v1/sandboxes/${id}/files/rootlink/etc/passwd`],
    ['GET', `/v1/sandboxes/${id}/files?path=/etc`],
    ['GET', `/v1/sandboxes/${id}/files?path=..`],
    ['GET', `/v1/sandboxes/${id}/files?path=rootlink`],
    ['PUT', `/v1/sandboxes/${id}/files/pw`],
    ['PUT', `/v1/sandboxes/${id}/files/rootlink/tmp/planted`],
    ['DELETE', `/v1/sandboxes/${id}/files/rootlink/etc/hostname`]
  ]
  for (const [method, url] of tries) {
    const res = await app.inject({ method: method as 'GET', url, headers: { ...alice, 'content-type': 'application/octet-stream' }, ...(method === 'PUT' ? { payload: 'x' } : {}) })
    if (url.includes('%2e')) {
      t.equal(res.statusCode, 404, `${url}: the router normalizes the dots away, so no file route matches`)
      continue
    }
    t.equal(res.statusCode, 400, `${method} ${url}`)
    t.match(res.json().error.code, /invalid_path|path_outside_workspace/)
  }
  const raw = await app.inject({ method: 'GET', url: `/v1/sandboxes/${id}/files/inside/../../../etc/passwd`, headers: alice })
  t.not(raw.statusCode, 200, 'a literal .. path is never served')
  const inside = await app.inject({ method: 'PUT', url: `/v1/sandboxes/${id}/files/ok/note.txt`, headers: alice, payload: 'fine' })
  t.equal(inside.statusCode, 201, 'a symlink that stays inside the workspace is fine')
  t.equal((await run(id, 'print(open("/etc/passwd").read().count("planted"), __import__("os").path.exists("/tmp/planted"))')).stdout, '0 False\n')
  await stillHealthy(t, id)
})

t.test('close', async () => { await app.close() })
