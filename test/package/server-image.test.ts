import t from 'tap'
import { execFileSync } from 'node:child_process'
import { statSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import Docker from 'dockerode'
import { freePort, sleep, REDIS_URL, flushPrefix } from '../helper.js'

// The server's container image, built here without a registry, started as an operator would: Docker socket mounted,
// the socket's group added, Redis at REDIS_URL. It must become ready and run code in a sandbox. Then the README's
// compose quick start with both images (server and Redis).
const tag = 'interpreter-server:latest'
const name = `is-server-image-${process.pid}`
const namespace = `server-image-${process.pid}`
const prefix = `test:server-image:${randomBytes(4).toString('hex')}:`
const docker = new Docker()
const project = `is${process.pid}`
const composePort = String(20000 + (process.pid % 20000))
const composeEnv = { ...process.env, API_KEYS: 'ops:admin:compose-test-key-0123', SERVER_PORT: composePort, SANDBOX_NAMESPACE: namespace, DOCKER_GID: String(statSync('/var/run/docker.sock').gid) }

t.teardown(async () => {
  execFileSync('docker', ['rm', '-f', name], { stdio: 'ignore' })
  execFileSync('docker-compose', ['-p', project, 'down', '-v'], { stdio: 'ignore', env: composeEnv })
  for (const c of await docker.listContainers({ all: true, filters: { label: [`dev.interpreter-server.namespace=${namespace}`] } })) {
    await docker.getContainer(c.Id).remove({ force: true }).catch(() => {})
  }
  await flushPrefix(REDIS_URL, prefix)
})

t.test('the server image builds, runs as its own user, becomes ready and runs code', async (t) => {
  // With this test's own loaders (as cliArgs does), so the script's coverage is mapped like the rest.
  const loaders = process.execArgv.filter(a => a.startsWith('--import='))
  const built = execFileSync(process.execPath, [...(loaders.length ? loaders : ['--import', 'tsx']), 'scripts/build-server-image.ts', tag], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] })
  t.equal(built.trim(), `${tag}\ninterpreter-server-redis:latest`)
  const port = await freePort()
  const key = 'image-test-key-0123456789'
  execFileSync('docker', ['run', '-d', '--name', name, '--network', 'host',
    '-v', '/var/run/docker.sock:/var/run/docker.sock', '--group-add', String(statSync('/var/run/docker.sock').gid),
    '-e', `PORT=${port}`, '-e', 'HOST=127.0.0.1', '-e', `REDIS_URL=${REDIS_URL}`, '-e', `REDIS_PREFIX=${prefix}`,
    '-e', `API_KEYS=ops:admin:${key}`, '-e', `SANDBOX_NAMESPACE=${namespace}`, '-e', 'SANDBOX_KEEP_ON_CLOSE=false', '-e', 'POOL_SIZE=1',
    tag], { stdio: 'ignore' })
  let status = 0
  for (let i = 0; i < 300 && status !== 200; i++) {
    await sleep(200)
    status = await fetch(`http://127.0.0.1:${port}/v1/ready`).then(r => r.status, () => 0)
  }
  t.equal(status, 200, '/v1/ready answers 200 (Redis, Docker and the sandbox image reachable from the container)')
  t.equal(execFileSync('docker', ['exec', name, 'id', '-u'], { encoding: 'utf8' }).trim(), '10001', 'the server runs as its own user, not root')
  const headers = { authorization: `Bearer ${key}`, 'content-type': 'application/json' }
  const created = await fetch(`http://127.0.0.1:${port}/v1/sandboxes`, { method: 'POST', headers, body: '{}' })
  t.equal(created.status, 201)
  const { id } = await created.json() as { id: string }
  const ran = await fetch(`http://127.0.0.1:${port}/v1/sandboxes/${id}/execute`, { method: 'POST', headers, body: JSON.stringify({ code: 'print(6 * 7)' }) })
  t.match(await ran.json(), { stdout: '42\n' }, 'code runs in a sandbox the containerized server started')
})

t.test('docker-compose up: Redis and the server from the images, ready, running code', async (t) => {
  execFileSync('docker-compose', ['-p', project, 'up', '-d'], { stdio: 'ignore', env: composeEnv })
  const base = `http://127.0.0.1:${composePort}`
  let ready: { status?: string, redis?: string } = {}
  for (let i = 0; i < 300 && ready.status !== 'ready'; i++) {
    await sleep(200)
    ready = await fetch(`${base}/v1/ready`).then(r => r.json() as Promise<typeof ready>, () => ({}))
  }
  t.match(ready, { status: 'ready' }, 'ready through compose, with its Redis')
  const headers = { authorization: 'Bearer compose-test-key-0123', 'content-type': 'application/json' }
  const session = await fetch(`${base}/v1/sessions`, { method: 'POST', headers, body: '{}' }).then(r => r.json()) as { id: string }
  const stored = await fetch(`${base}/v1/sessions/${session.id}`, { headers })
  t.equal(stored.status, 200, 'sessions live in the compose Redis')
  const created = await fetch(`${base}/v1/sandboxes`, { method: 'POST', headers, body: '{}' })
  const { id } = await created.json() as { id: string }
  const ran = await fetch(`${base}/v1/sandboxes/${id}/execute`, { method: 'POST', headers, body: JSON.stringify({ code: 'print(6 * 7)' }) })
  t.match(await ran.json(), { stdout: '42\n' })
})
