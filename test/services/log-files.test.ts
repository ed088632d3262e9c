import t from 'tap'
import { mkdtempSync, readFileSync, readdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { buildApp } from '../../app.js'
import { LogHub } from '../../services/log-hub.js'
import { logFiles } from '../../services/log-files.js'
import { testConfig, auth, KEYS } from '../helper.js'

t.test('LOG_FILE: every line in the combined file, errors also in the error file, files rolled by size', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'logs-'))
  let stdout = ''
  const out = new Writable({ write (chunk, _e, done) { stdout += String(chunk); done() } })
  const stream = await logFiles({ file: join(dir, 'server.log'), size: '2k', frequency: '', keep: 3 }, out)
  const app = await buildApp({ config: testConfig({ LOG_LEVEL: 'info' }), logs: new LogHub(stream) }, { level: 'info' })
  await app.ready()
  for (let i = 0; i < 60; i++) {
    await app.inject({ method: 'GET', url: '/v1/sessions/ses_missing', headers: auth(KEYS.alice) })
    await new Promise(resolve => setImmediate(resolve)) // let the file stream write (and roll) as a server would
  }
  app.log.error({ probe: true }, 'an error line for the error file')
  await app.close()
  await new Promise<void>(resolve => stream.end(resolve))

  const files = readdirSync(dir).sort()
  const combined = files.filter(f => f.startsWith('server.'))
  t.ok(combined.length >= 2, `rolled by size: ${combined.join(', ')}`)
  t.ok(combined.length <= 4, 'at most LOG_FILE_KEEP rolled files are kept besides the current one')
  const all = combined.map(f => readFileSync(join(dir, f), 'utf8')).join('')
  t.match(all, /"msg":"request completed"/, 'access lines in the combined log')
  t.match(all, /an error line for the error file/)
  const errors = readFileSync(join(dir, files.find(f => f.startsWith('error.'))!), 'utf8').trim().split('\n').map(l => JSON.parse(l))
  t.same(errors.map(e => [e.level, e.msg]), [[50, 'an error line for the error file']], 'the error file has the error lines only')
  t.match(stdout, /"msg":"request completed"/, 'stdout still gets every line')
})
