import t from 'tap'
import { execFileSync, spawn } from 'node:child_process'
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync, existsSync, statSync } from 'node:fs'
import { createServer } from 'node:http'
import { randomBytes } from 'node:crypto'
import Docker from 'dockerode'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { freePort, waitFor, REDIS_URL, flushPrefix } from '../helper.js'

// What a stranger gets from `npm pack`: install the tarball elsewhere, import the client from plain Node and from
// TypeScript with its types, and start the server with the package's own command (compiled, no tsx). The server's
// image below is in the same file so that the two builds (both write dist/) never run at once.
const root = resolve(import.meta.dirname, '..', '..')
const work = mkdtempSync(join(tmpdir(), 'pack-'))
const npm = (args: string[], cwd: string) => execFileSync('npm', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, npm_config_loglevel: 'error' } })

t.test('the packed package installs, its client imports with types, and its command serves', async (t) => {
  npm(['pack', '--pack-destination', work], root) // prepack compiles to dist/
  const tarball = readdirSync(work).find(f => f.endsWith('.tgz'))!
  const listing = execFileSync('tar', ['-tzf', join(work, tarball)], { encoding: 'utf8' }).split('\n')
  for (const file of ['package/dist/cli.js', 'package/dist/client/index.js', 'package/dist/client/index.d.ts', 'package/dist/client/ai-sdk.js', 'package/dist/client/ai-sdk.d.ts', 'package/dist/client/openai-agents.js', 'package/dist/client/openai-agents.d.ts', 'package/sandbox/agent.py', 'package/sandbox/Dockerfile', 'package/ui/index.html', 'package/bin/interpreter-server.js']) {
    t.ok(listing.includes(file), `the tarball has ${file}`)
  }
  t.notOk(listing.some(f => f.startsWith('package/test/') || (f.endsWith('.ts') && !f.endsWith('.d.ts'))), 'no tests and no TypeScript sources')

  const app = join(work, 'app')
  execFileSync('mkdir', ['-p', app])
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'stranger', version: '1.0.0', type: 'module', private: true }))
  npm(['install', '--prefer-offline', '--no-audit', '--no-fund', join(work, tarball)], app)

  // A stranger's Node, not under this run's coverage: the package's dist files map back to our sources, and a child
  // that recorded them (only their loading) would make tap's merge lose those sources' coverage. Tap's process
  // tracker puts its options back into every child's environment, so `env -u` takes them out just before node starts.
  const plain = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(NODE_OPTIONS|NODE_V8_COVERAGE|_TAPJS|TAP)/.test(k)))
  const untracked = ['-u', 'NODE_OPTIONS', '-u', 'NODE_V8_COVERAGE', process.execPath]
  const imported = execFileSync('env', [...untracked, '--input-type=module', '-e', "import { InterpreterClient } from 'interpreter-server/client'; const c = new InterpreterClient({ url: 'http://127.0.0.1:1', apiKey: 'k' }); console.log(typeof InterpreterClient, typeof c.models)"], { cwd: app, encoding: 'utf8', env: plain })
  t.equal(imported, 'function function\n', 'plain Node ESM imports the client')
  const aiSdk = execFileSync('env', [...untracked, '--input-type=module', '-e', "import { createHarnessSandboxProvider, InterpreterSandboxSession } from 'interpreter-server/ai-sdk'; console.log(createHarnessSandboxProvider({ url: 'http://127.0.0.1:1', apiKey: 'k' }).specificationVersion, typeof InterpreterSandboxSession)"], { cwd: app, encoding: 'utf8', env: plain })
  t.equal(aiSdk, 'harness-sandbox-v1 function\n', 'the AI SDK adapter needs nothing at run time beyond the package')
  npm(['install', '--prefer-offline', '--no-audit', '--no-fund', '@openai/agents-core@0.20.0'], app)
  const agents = execFileSync('env', [...untracked, '--input-type=module', '-e', "import { InterpreterSandboxClient } from 'interpreter-server/openai-agents'; console.log(new InterpreterSandboxClient({ url: 'http://127.0.0.1:1', apiKey: 'k' }).backendId)"], { cwd: app, encoding: 'utf8', env: plain })
  t.equal(agents, 'interpreter-server\n', 'the Agents SDK adapter imports with the SDK it plugs into')

  writeFileSync(join(app, 'use.ts'), "import { InterpreterClient } from 'interpreter-server/client'\nconst c: InterpreterClient = new InterpreterClient({ url: 'http://x', apiKey: 'k' })\nconst n: number = c.models\nexport { n }\n")
  writeFileSync(join(app, 'tsconfig.json'), JSON.stringify({ compilerOptions: { module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, noEmit: true, skipLibCheck: true, types: [] }, files: ['use.ts'] }))
  let typeErrors = ''
  try {
    execFileSync(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', app], { cwd: app, encoding: 'utf8' })
  } catch (err) {
    typeErrors = String((err as { stdout?: string }).stdout)
  }
  t.match(typeErrors, /use\.ts.*error TS2322: Type '.*' is not assignable to type 'number'/, 'the client has types: a wrong use is a type error')
  t.notMatch(typeErrors, /Cannot find module|TS7016/, 'and the module and its declarations are found')

  const port = await freePort()
  const bin = join(app, 'node_modules', '.bin', 'interpreter-server')
  t.ok(existsSync(bin))
  const child = spawn(bin, ['serve'], { cwd: app, env: { ...plain, API_KEYS: 'k:admin:stranger-secret-key', PORT: String(port), HOST: '127.0.0.1', SANDBOX_ENABLED: 'false', REDIS_URL: '', LOG_LEVEL: 'warn', NODE_OPTIONS: '' }, stdio: 'ignore' })
  t.teardown(() => { child.kill('SIGTERM') })
  const health = await waitFor('the packaged server answers', () => fetch(`http://127.0.0.1:${port}/v1/health`).then(r => r.json() as Promise<{ status?: string, version?: string }>, () => null), { every: 100 })
  t.match(health, { status: 'ok', version: '0.1.0' }, 'npx interpreter-server serve answers')
  t.equal((await fetch(`http://127.0.0.1:${port}/ui/`)).status, 200, 'with its web monitor')
  const languages = await fetch(`http://127.0.0.1:${port}/v1/languages`, { headers: { authorization: 'Bearer stranger-secret-key' } })
  t.equal(languages.status, 200)
})

// The server's container image, built here without a registry, started as an operator would: Docker socket mounted,
// the socket's group added, Redis at REDIS_URL, and the agent directories shared with the engine at the same path
// (group 0 added: the server is not root). It must become ready, reach its sandboxes' agents over their sockets and
// give a sandbox a network. Then the README's compose quick start with both images (server and Redis).
const tag = 'interpreter-server:latest'
const agentDirs = `/run/is-server-image-${process.pid}/agents`
const name = `is-server-image-${process.pid}`
const namespace = `server-image-${process.pid}`
const prefix = `test:server-image:${randomBytes(4).toString('hex')}:`
const docker = new Docker()
const project = `is${process.pid}`
const composePort = String(20000 + (process.pid % 20000))
const composeEnv = { ...process.env, API_KEYS: 'ops:admin:compose-test-key-0123', SERVER_PORT: composePort, SANDBOX_NAMESPACE: `${namespace}-compose`, SANDBOX_AGENT_SOCKET_DIR: agentDirs, DOCKER_GID: String(statSync('/var/run/docker.sock').gid) }

t.teardown(async () => {
  execFileSync('docker', ['rm', '-f', name], { stdio: 'ignore' })
  execFileSync('docker-compose', ['-p', project, 'down', '-v'], { stdio: 'ignore', env: composeEnv })
  // Each deployment has a namespace of its own: sharing one, the first server's orphan sweep removed the compose
  // server's sandboxes (its instance is not live in the first server's Redis).
  for (const ns of [namespace, `${namespace}-compose`]) {
    for (const c of await docker.listContainers({ all: true, filters: { label: [`dev.interpreter-server.namespace=${ns}`] } })) {
      await docker.getContainer(c.Id).remove({ force: true }).catch(() => {})
    }
  }
  await flushPrefix(REDIS_URL, prefix)
  rmSync(dirname(agentDirs), { recursive: true, force: true })
})

t.test('the server image builds, runs as its own user, becomes ready and runs code', async (t) => {
  // With this test's own loaders (as cliArgs does): tap records every Node child's coverage whatever its environment
  // (it wraps child_process), and the script's must be mapped like the rest (through tsx it counted as one statement).
  const loaders = process.execArgv.filter(a => a.startsWith('--import='))
  const built = execFileSync(process.execPath, [...(loaders.length ? loaders : ['--import', 'tsx']), 'scripts/build-server-image.ts', tag], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] })
  t.equal(built.trim(), `${tag}\ninterpreter-server-redis:latest`)
  const port = await freePort()
  const key = 'image-test-key-0123456789'
  mkdirSync(agentDirs, { recursive: true, mode: 0o770 }) // root's, group 0: what an operator makes once (docs/operations.md)
  chmodSync(agentDirs, 0o770)
  execFileSync('docker', ['run', '-d', '--name', name, '--network', 'host',
    '-v', '/var/run/docker.sock:/var/run/docker.sock', '--group-add', String(statSync('/var/run/docker.sock').gid),
    '-v', `${agentDirs}:${agentDirs}`, '--group-add', '0',
    '-e', 'SANDBOX_AGENT_CHANNEL=socket', '-e', `SANDBOX_AGENT_SOCKET_DIR=${agentDirs}`, '-e', 'SANDBOX_AGENT_DIR_GROUP=0',
    '-e', `PORT=${port}`, '-e', 'HOST=127.0.0.1', '-e', `REDIS_URL=${REDIS_URL}`, '-e', `REDIS_PREFIX=${prefix}`,
    '-e', `API_KEYS=ops:admin:${key}`, '-e', `SANDBOX_NAMESPACE=${namespace}`, '-e', 'SANDBOX_KEEP_ON_CLOSE=false', '-e', 'POOL_SIZE=1',
    tag], { stdio: 'ignore' })
  await waitFor('the containerized server is ready', () => fetch(`http://127.0.0.1:${port}/v1/ready`).then(r => r.status === 200, () => false), { ms: 90_000, every: 200 })
  t.pass('/v1/ready answers 200 (Redis, Docker and the sandbox image reachable from the container)')
  t.equal(execFileSync('docker', ['exec', name, 'id', '-u'], { encoding: 'utf8' }).trim(), '10001', 'the server runs as its own user, not root')
  const headers = { authorization: `Bearer ${key}`, 'content-type': 'application/json' }
  const created = await fetch(`http://127.0.0.1:${port}/v1/sandboxes`, { method: 'POST', headers, body: '{}' })
  t.equal(created.status, 201)
  const { id } = await created.json() as { id: string }
  const ran = await fetch(`http://127.0.0.1:${port}/v1/sandboxes/${id}/execute`, { method: 'POST', headers, body: JSON.stringify({ code: 'print(6 * 7)' }) })
  t.match(await ran.json(), { stdout: '42\n' }, 'code runs in a sandbox the containerized server started')
  const stats = await fetch(`http://127.0.0.1:${port}/v1/stats`, { headers }).then(r => r.json()) as { pool: { agent_channel: string } }
  t.equal(stats.pool.agent_channel, 'socket', 'over the agents\' sockets, not docker attach')

  // A network policy: the server's egress proxy (in its container, on the host's network) lets this one server through.
  const web = createServer((_req, res) => res.end('through the proxy'))
  await new Promise<void>(resolve => web.listen(0, '127.0.0.1', resolve))
  t.teardown(() => web.close())
  const webPort = (web.address() as { port: number }).port
  const open = await fetch(`http://127.0.0.1:${port}/v1/sandboxes`, { method: 'POST', headers, body: JSON.stringify({ network: { allow: [`127.0.0.1:${webPort}`] } }) })
  const opened = await open.json() as { id: string }
  t.equal(open.status, 201, `a sandbox with a network policy: ${JSON.stringify(opened)}`)
  const fetched = await fetch(`http://127.0.0.1:${port}/v1/sandboxes/${opened.id}/execute`, {
    method: 'POST', headers, body: JSON.stringify({ code: `import urllib.request\nprint(urllib.request.urlopen("http://127.0.0.1:${webPort}/", timeout=10).read().decode())` })
  })
  t.match(await fetched.json(), { stdout: 'through the proxy\n' }, 'the allowed server is reached through the egress proxy')
})

t.test('docker-compose up: Redis and the server from the images, ready, running code', async (t) => {
  mkdirSync(agentDirs, { recursive: true, mode: 0o770 })
  execFileSync('docker-compose', ['-p', project, 'up', '-d'], { stdio: 'ignore', env: composeEnv })
  const base = `http://127.0.0.1:${composePort}`
  const ready = await waitFor('the compose deployment is ready', () => fetch(`${base}/v1/ready`).then(r => r.json() as Promise<{ status?: string }>, () => ({ status: 'down' })).then(r => r.status === 'ready' && r), { ms: 90_000, every: 200 })
  t.match(ready, { status: 'ready' }, 'ready through compose, with its Redis')
  const headers = { authorization: 'Bearer compose-test-key-0123', 'content-type': 'application/json' }
  const session = await fetch(`${base}/v1/sessions`, { method: 'POST', headers, body: '{}' }).then(r => r.json()) as { id: string }
  const stored = await fetch(`${base}/v1/sessions/${session.id}`, { headers })
  t.equal(stored.status, 200, 'sessions live in the compose Redis')
  const created = await fetch(`${base}/v1/sandboxes`, { method: 'POST', headers, body: '{}' })
  const { id } = await created.json() as { id: string }
  const ran = await fetch(`${base}/v1/sandboxes/${id}/execute`, { method: 'POST', headers, body: JSON.stringify({ code: 'print(6 * 7)' }) })
  const answer = await ran.json()
  t.match(answer, { stdout: '42\n' }, JSON.stringify(answer))
  const stats = await fetch(`${base}/v1/stats`, { headers }).then(r => r.json()) as { pool: { agent_channel: string } }
  t.equal(stats.pool.agent_channel, 'socket', 'compose shares the agent directories: the server reaches agents over their sockets')
  // A network policy works here too: the sandbox's relay reaches the server's egress proxy, which refuses what the
  // policy does not allow (in its own words, so the request did get through to it).
  const open = await fetch(`${base}/v1/sandboxes`, { method: 'POST', headers, body: JSON.stringify({ network: { allow: ['example.org'] } }) })
  t.equal(open.status, 201, 'a sandbox with a network policy')
  const refused = await fetch(`${base}/v1/sandboxes/${(await open.json() as { id: string }).id}/execute`, {
    method: 'POST', headers, body: JSON.stringify({ code: 'import urllib.request, urllib.error\ntry:\n    urllib.request.urlopen("http://not-allowed.example.net/", timeout=10)\nexcept urllib.error.HTTPError as e:\n    print("HTTP", e.code)' })
  })
  t.match(await refused.json(), { stdout: 'HTTP 403\n' }, 'the egress proxy answered for the sandbox')
})
