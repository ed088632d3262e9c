import t from 'tap'
import { spawn, execFileSync } from 'node:child_process'
import { writeFileSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import { FakeLlm } from '../fake-llm.js'
import { KEYS, sleep, REDIS_URL, flushPrefix, fakeLlmConfig, fakeLlmApp, cliArgs } from '../helper.js'
import type { Config } from '../../services/config.js'

const fake = new FakeLlm()
let app: FastifyInstance
let config: Config
let base: string
/** Runs the CLI as a child process (asynchronously: the server answering it lives in this process). */
const cli = (args: string[], input?: string) => new Promise<{ status: number | null, stdout: string, stderr: string }>((resolve) => {
  const child = spawn(process.execPath, cliArgs(...args, '--url', base, '--api-key', KEYS.alice))
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d) => { stdout += d })
  child.stderr.on('data', (d) => { stderr += d })
  child.on('close', (status) => resolve({ status, stdout, stderr }))
  child.stdin.end(input ?? '')
})

t.before(async () => {
  await fake.start()
  config = await fakeLlmConfig(fake.url, { POOL_SIZE: '1' })
  app = await fakeLlmApp(config)
  base = await app.listen({ host: '127.0.0.1', port: 0 })
})

t.test('exec runs a file or stdin in a fresh sandbox and exits non-zero when the code fails', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'exec-'))
  writeFileSync(join(dir, 'fails.py'), 'print("before the error")\n1 / 0\n')
  const failed = await cli(['exec', join(dir, 'fails.py')])
  t.equal(failed.status, 1)
  t.equal(failed.stdout, 'before the error\n')
  t.match(failed.stderr, /ZeroDivisionError: division by zero/)
  const ok = await cli(['exec', '-', '--language', 'shell'], 'echo "from stdin"; echo $((6 * 7))')
  t.equal(ok.status, 0, ok.stderr)
  t.equal(ok.stdout, 'from stdin\n42\n')
  t.same((await app.sandboxes.list({ name: 'alice', role: 'user' })), [], 'its sandboxes were removed')
})

t.test('chat in a terminal: streams the answer, asks before running code, shows the output', async (t) => {
  const pane = `interpreter-test-${process.pid}`
  const tmux = (...args: string[]) => execFileSync('tmux', args, { encoding: 'utf8' })
  const screen = () => tmux('capture-pane', '-p', '-t', pane, '-S', '-200')
  const waitFor = async (text: string | RegExp) => {
    for (let i = 0; i < 300; i++) {
      if (typeof text === 'string' ? screen().includes(text) : text.test(screen())) return
      await sleep(100)
    }
    throw new Error(`"${text}" never appeared; the screen:\n${screen()}`)
  }
  fake.script('gpt-test',
    { text: 'I will run some code.', code: { language: 'python', code: 'print("hello from the sandbox")' } },
    { text: 'All done here.' })
  const command = [process.execPath, ...cliArgs('chat', '--no-auto-run', '--url', base, '--api-key', KEYS.alice)].map(a => `'${a}'`).join(' ')
  tmux('new-session', '-d', '-s', pane, '-x', '160', '-y', '50', '-c', process.cwd(), command)
  t.teardown(() => { try { tmux('kill-session', '-t', pane) } catch {} })
  await waitFor(/^>$/m) // the prompt (tmux drops trailing spaces)
  t.match(screen(), /session ses_/)
  tmux('send-keys', '-t', pane, 'please run it', 'Enter')
  await waitFor('Run this code? [y/N]')
  t.match(screen(), /I will run some code\.[\s\S]*── python ──[\s\S]*print\("hello from the sandbox"\)/)
  tmux('send-keys', '-t', pane, 'y', 'Enter')
  await waitFor('All done here.')
  t.match(screen(), /hello from the sandbox\n[\s\S]*All done here\./, 'the output, then the answer')
  tmux('send-keys', '-t', pane, 'exit', 'Enter')
  for (let i = 0; i < 50; i++) {
    try { tmux('has-session', '-t', pane) } catch { break }
    await sleep(100)
  }
  t.throws(() => tmux('has-session', '-t', pane), 'the client exited')
})

t.test('close', async () => {
  await app.close()
  await fake.stop()
  await flushPrefix(REDIS_URL, config.REDIS_PREFIX)
})
