import t, { type Test } from 'tap'
import { spawn, execFileSync } from 'node:child_process'
import { writeFileSync, mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import { FakeLlm } from '../fake-llm.js'
import { KEYS, sleep, REDIS_URL, flushPrefix, fakeLlmConfig, fakeLlmApp, cliArgs } from '../helper.js'
import type { Config } from '../../services/config.js'

const fake = new FakeLlm()
// A tmux server of this test's own, kept up by a session that lives as long as the test: closing a pane's session must
// not end the server under the next pane's new-session (tmux: "server exited unexpectedly").
const SOCKET = `interpreter-test-${process.pid}`
const tmux = (...a: string[]) => execFileSync('tmux', ['-L', SOCKET, ...a], { encoding: 'utf8' })
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
  tmux('new-session', '-d', '-s', 'keeper', 'sleep 3600')
  t.teardown(() => { try { tmux('kill-server') } catch {} })
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

/** The chat client in a tmux pane: its screen, keys sent to it, and waiting for text to appear. */
function terminal (t: Test, name: string, ...args: string[]) {
  const pane = `interpreter-${name}-${process.pid}`
  const screen = () => tmux('capture-pane', '-p', '-t', pane, '-S', '-200')
  const command = [process.execPath, ...cliArgs('chat', ...args, '--url', base, '--api-key', KEYS.alice)].map(a => `'${a}'`).join(' ')
  // the pane stays after the client exits and shows its exit status
  tmux('new-session', '-d', '-s', pane, '-x', '160', '-y', '50', '-c', process.cwd(), `${command}; echo "exit status $?"; sleep 30`)
  t.teardown(() => { try { tmux('kill-session', '-t', pane) } catch {} })
  return {
    screen,
    keys: (...keys: string[]) => tmux('send-keys', '-t', pane, ...keys),
    async waitFor (text: string | RegExp): Promise<void> {
      for (let i = 0; i < 300; i++) {
        if (typeof text === 'string' ? screen().includes(text) : text.test(screen())) return
        await sleep(100)
      }
      throw new Error(`"${text}" never appeared; the screen:\n${screen()}`)
    }
  }
}

t.test('chat in a terminal: streams the answer, asks before running code, shows the output', async (t) => {
  fake.script('gpt-test',
    { text: 'I will run some code.', code: { language: 'python', code: 'print("hello from the sandbox")' } },
    { text: 'All done here.' })
  const term = terminal(t, 'confirm', '--no-auto-run')
  await term.waitFor(/^>$/m) // the prompt (tmux drops trailing spaces)
  t.match(term.screen(), /session ses_/)
  term.keys('please run it', 'Enter')
  await term.waitFor('Run this code? [y/N]')
  t.match(term.screen(), /I will run some code\.[\s\S]*── python ──[\s\S]*print\("hello from the sandbox"\)/)
  term.keys('y', 'Enter')
  term.keys('exit', 'Enter') // typed ahead, while the run streams: kept for the prompt that follows
  await term.waitFor('exit status 0')
  t.match(term.screen(), /hello from the sandbox\n[\s\S]*All done here\.[\s\S]*> exit\n[\s\S]*exit status 0/, 'the output, the answer, then the line typed ahead')
})

t.test('chat in a terminal: a plot is saved as a PNG file; Ctrl-C interrupts a run, and at the prompt exits', async (t) => {
  fake.script('gpt-test',
    { code: { language: 'python', code: 'import matplotlib.pyplot as plt\nplt.plot([1, 4, 9])\nplt.show()' } },
    { text: 'There is your plot.' })
  const term = terminal(t, 'interrupt')
  await term.waitFor(/^>$/m)
  term.keys('plot squares', 'Enter')
  await term.waitFor('There is your plot.')
  const saved = /\[image saved: (\S+\.png)\]/.exec(term.screen())
  t.ok(saved, 'the path is shown')
  t.same([...readFileSync(saved![1]).subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], 'a PNG file')

  fake.script('gpt-test', { code: { language: 'python', code: 'import time\nprint("sleeping", flush=True)\ntime.sleep(30)' } })
  term.keys('sleep', 'Enter')
  await term.waitFor(/^sleeping\s*$/m) // the run's output line, not the word inside the code shown before it
  term.keys('C-c')
  await term.waitFor('KeyboardInterrupt')
  t.match(term.screen(), /\^C interrupting \(again to exit\)/)
  await term.waitFor(/KeyboardInterrupt[\s\S]*^>$/m)
  t.pass('the prompt is back after the interrupted run')
  term.keys('C-c')
  await term.waitFor('exit status 130')
})

t.test('close', async () => {
  await app.close()
  await fake.stop()
  await flushPrefix(REDIS_URL, config.REDIS_PREFIX)
})
