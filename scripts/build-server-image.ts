// Builds the server's container image without a registry: the compiled server, its production dependencies and
// this host's Node binary on the sandboxes' Debian base (slim); and a Redis image on the same base (docker-compose,
// Kubernetes). Usage: npm run image:server [-- <server tag> [<redis tag>]]
import { execFileSync } from 'node:child_process'
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ensureBaseImage } from '../services/sandbox/image.js'
import { PACKAGE_ROOT } from '../services/paths.js'

const tag = process.argv[2] ?? 'interpreter-server:latest'
const redisTag = process.argv[3] ?? 'interpreter-server-redis:latest'
const log = (m: string) => process.stderr.write(`[server-image] ${m}\n`)
const run = (cmd: string, args: string[], cwd = PACKAGE_ROOT) => execFileSync(cmd, args, { cwd, stdio: ['ignore', 'ignore', 'inherit'] })

const context = mkdtempSync(join(tmpdir(), 'server-image-'))
try {
  log('npm run build')
  run('npm', ['run', 'build', '--silent'])
  const app = join(context, 'app')
  mkdirSync(app)
  for (const item of ['package.json', 'package-lock.json', 'dist', 'bin', 'sandbox', 'ui', 'README.md']) cpSync(join(PACKAGE_ROOT, item), join(app, item), { recursive: true })
  writeFileSync(join(app, 'models.yaml'), 'models: []\n')
  log('npm ci --omit=dev (from the lockfile, offline when the cache has it)')
  run('npm', ['ci', '--omit=dev', '--ignore-scripts', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error'], app)
  cpSync(process.execPath, join(context, 'node'))
  const base = await ensureBaseImage('docker', 'slim', log)
  log(`docker build ${tag} from ${base}`)
  run('docker', ['build', '-q', '-f', join(PACKAGE_ROOT, 'deploy', 'server', 'Dockerfile'), '--build-arg', `BASE=${base}`, '-t', tag, context])
  log(`docker build ${redisTag} from ${base}`)
  run('docker', ['build', '-q', '--build-arg', `BASE=${base}`, '-t', redisTag, join(PACKAGE_ROOT, 'deploy', 'redis')])
  process.stdout.write(`${tag}\n${redisTag}\n`)
} finally {
  rmSync(context, { recursive: true, force: true })
}
