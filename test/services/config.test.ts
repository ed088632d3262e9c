import t from 'tap'
import { spawnSync } from 'node:child_process'
import { loadConfig, ConfigError } from '../../services/config.js'
import { cliArgs } from '../helper.js'

t.test('defaults come from DESIGN.md', async (t) => {
  const c = loadConfig({})
  t.match(c, { PORT: 8000, HOST: '127.0.0.1', RATE_LIMIT_PER_MINUTE: 60, SESSION_RATE_LIMIT_PER_MINUTE: 10, MAX_TOKENS: 4096, TEMPERATURE: 0.7, EXECUTION_TIMEOUT_MS: 30000, SANDBOX_PIDS: 100, MAX_SANDBOXES_PER_KEY: 10, MAX_CODE_SIZE: 1048576 })
  t.same(c.apiKeys, [])
})

t.test('API keys: several, with roles; a lone API_KEY is one admin key', async (t) => {
  const c = loadConfig({ API_KEYS: 'ops:admin:s3cret,app:user:t0ken1', API_KEY: 'lonely-key' })
  t.same(c.apiKeys.map(k => [k.name, k.role]), [['ops', 'admin'], ['app', 'user'], ['default', 'admin']])
})

t.test('a bad value names the variable', async (t) => {
  const cases: Array<[Record<string, string>, RegExp]> = [
    [{ PORT: 'eighty' }, /^PORT: must be integer/],
    [{ PORT: '70000' }, /^PORT: must be <= 65535/],
    [{ REDIS_URL: 'localhost:6379' }, /^REDIS_URL: must match pattern/],
    [{ LOG_LEVEL: 'loud' }, /^LOG_LEVEL:/],
    [{ TEMPERATURE: '3' }, /^TEMPERATURE: must be <= 2/],
    [{ API_KEYS: 'ops:root:s3cret' }, /^API_KEYS: key "ops" has role "root"/],
    [{ API_KEYS: 'ops:admin:abc' }, /^API_KEYS: key "ops" needs a secret of at least 6/],
    [{ EXECUTION_TIMEOUT_MS: '60000', MAX_EXECUTION_TIMEOUT_MS: '1000' }, /^MAX_EXECUTION_TIMEOUT_MS/]
  ]
  for (const [env, message] of cases) {
    t.throws(() => loadConfig(env), message)
    t.throws(() => loadConfig(env), ConfigError)
  }
})

t.test('the CLI stops with one line naming the variable', async (t) => {
  const run = spawnSync(process.execPath, cliArgs('serve'), { env: { ...process.env, PORT: 'abc' }, encoding: 'utf8', timeout: 30000 })
  t.equal(run.status, 1)
  t.equal(run.stderr.trim().split('\n').length, 1, 'one line')
  t.match(run.stderr, /^invalid configuration: PORT: must be integer \(got "abc"\)/)
  const open = spawnSync(process.execPath, cliArgs('serve', '--host', '0.0.0.0'), { env: { ...process.env, API_KEYS: '', API_KEY: '', REDIS_URL: '', SANDBOX_ENABLED: 'false' }, encoding: 'utf8', timeout: 30000 })
  t.equal(open.status, 1)
  t.match(open.stderr, /refusing to listen on 0\.0\.0\.0 with no API key configured/)
})
