import t from 'tap'
import { execFileSync, spawn } from 'node:child_process'
import { mkdtempSync, readdirSync, writeFileSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { freePort, sleep } from '../helper.js'

// What a stranger gets from `npm pack`: install the tarball elsewhere, import the client from plain Node and from
// TypeScript with its types, and start the server with the package's own command (compiled, no tsx).
const root = resolve(import.meta.dirname, '..', '..')
const work = mkdtempSync(join(tmpdir(), 'pack-'))
const npm = (args: string[], cwd: string) => execFileSync('npm', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, npm_config_loglevel: 'error' } })

t.test('the packed package installs, its client imports with types, and its command serves', async (t) => {
  npm(['pack', '--pack-destination', work], root) // prepack compiles to dist/
  const tarball = readdirSync(work).find(f => f.endsWith('.tgz'))!
  const listing = execFileSync('tar', ['-tzf', join(work, tarball)], { encoding: 'utf8' }).split('\n')
  for (const file of ['package/dist/cli.js', 'package/dist/client/index.js', 'package/dist/client/index.d.ts', 'package/sandbox/agent.py', 'package/sandbox/Dockerfile', 'package/ui/index.html', 'package/bin/interpreter-server.js']) {
    t.ok(listing.includes(file), `the tarball has ${file}`)
  }
  t.notOk(listing.some(f => f.startsWith('package/test/') || (f.endsWith('.ts') && !f.endsWith('.d.ts'))), 'no tests and no TypeScript sources')

  const app = join(work, 'app')
  execFileSync('mkdir', ['-p', app])
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'stranger', version: '1.0.0', type: 'module', private: true }))
  npm(['install', '--prefer-offline', '--no-audit', '--no-fund', join(work, tarball)], app)

  const imported = execFileSync(process.execPath, ['--input-type=module', '-e', "import { InterpreterClient } from 'interpreter-server/client'; const c = new InterpreterClient({ url: 'http://127.0.0.1:1', apiKey: 'k' }); console.log(typeof InterpreterClient, typeof c.models)"], { cwd: app, encoding: 'utf8' })
  t.equal(imported, 'function function\n', 'plain Node ESM imports the client')

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
  const child = spawn(bin, ['serve'], { cwd: app, env: { ...process.env, API_KEYS: 'k:admin:stranger-secret-key', PORT: String(port), HOST: '127.0.0.1', SANDBOX_ENABLED: 'false', REDIS_URL: '', LOG_LEVEL: 'warn', NODE_OPTIONS: '' }, stdio: 'ignore' })
  t.teardown(() => { child.kill('SIGTERM') })
  let health: { status?: string, version?: string } = {}
  for (let i = 0; i < 100 && health.status !== 'ok'; i++) {
    await sleep(100)
    health = await fetch(`http://127.0.0.1:${port}/v1/health`).then(r => r.json() as Promise<typeof health>, () => ({}))
  }
  t.match(health, { status: 'ok', version: '0.1.0' }, 'npx interpreter-server serve answers')
  t.equal((await fetch(`http://127.0.0.1:${port}/ui/`)).status, 200, 'with its web monitor')
  const languages = await fetch(`http://127.0.0.1:${port}/v1/languages`, { headers: { authorization: 'Bearer stranger-secret-key' } })
  t.equal(languages.status, 200)
})
