import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { build, sandboxConfig, sandboxCalls, auth, KEYS, REDIS_URL, flushPrefix } from '../../helper.js'
import { PROGRAMS } from './programs.js'

let app: FastifyInstance
t.before(async () => {
  const config = await sandboxConfig({ POOL_SIZE: '1', EXECUTION_TIMEOUT_MS: '60000' })
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  app = await build(t, config)
})
const { newSandbox, run } = sandboxCalls(() => app)

t.test('GET /v1/languages lists the 13 languages, which are stateful, and that this image has them all', async (t) => {
  const res = await app.inject({ method: 'GET', url: '/v1/languages', headers: auth(KEYS.alice) })
  const data = res.json().data as Array<{ id: string, stateful: boolean, available: boolean, aliases: string[] }>
  t.same(data.map(l => l.id).sort(), Object.keys(PROGRAMS).sort())
  t.same(data.filter(l => l.stateful).map(l => l.id), ['python', 'javascript', 'shell', 'r'])
  t.ok(data.every(l => l.available), 'the full image has every one')
  t.same(data.find(l => l.id === 'fortran')!.aliases, ['f90', 'f95'])
})

t.test('each language runs through the execute route and prints what it computed', async (t) => {
  const id = await newSandbox()
  for (const [language, code] of Object.entries(PROGRAMS)) {
    const started = Date.now()
    const res = await run(id, code, { language })
    t.equal(res.stdout.trim().replace(/\s+/g, ' '), `${language} 42`, `${language} (${Date.now() - started} ms)`)
    t.equal(res.language, language)
  }
})

t.test('a compile error is output and an exit code, not an HTTP error; a compile stays inside the timeout', async (t) => {
  const id = await newSandbox()
  const broken = await run(id, 'int main(void) { return missing; }', { language: 'c' })
  t.match(broken.stderr, /error: .missing. undeclared/)
  t.equal(broken.exit_code, 1)
  t.equal(broken.error, null)
  const slow = await run(id, 'fn main() { loop {} }', { language: 'rust', timeout_ms: 3000 })
  t.equal(slow.error?.code, 'execution_timeout', 'the compile and the run share the execution timeout')
  t.equal((await run(id, '(exit 5)', { language: 'shell' })).exit_code, 5, 'the shell kernel reports its exit code too')
  const file = await run(id, '#include <stdio.h>\nint main(void) { FILE *f = fopen("from_c.txt", "w"); fputs("kept", f); fclose(f); return 3; }', { language: 'c' })
  t.equal(file.exit_code, 3, 'the program\'s own exit code')
  t.equal((await run(id, 'print(open("from_c.txt").read())')).stdout, 'kept\n', 'fresh-process languages run in the workspace: their files stay')
})

t.test('R is stateful: variables persist, a plot comes back as a PNG, errors and timeouts are reported and the kernel lives on', async (t) => {
  const id = await newSandbox()
  const first = await run(id, 'x <- 20\ny <- c(1, 2)', { language: 'r' })
  t.same([first.stdout, first.stderr], ['', ''], 'nothing of the kernel\'s start-up leaks into the first run')
  const value = await run(id, 'x * 2 + 2', { language: 'r' })
  t.equal(value.stdout, '[1] 42\n', 'the value of the last expression is printed, as at the R prompt')
  const plot = await run(id, 'plot(1:10)\ncat("after the plot\\n")', { language: 'r' })
  t.equal(plot.stdout, 'after the plot\n')
  t.equal(Buffer.from(plot.results[0].data['image/png'], 'base64').subarray(1, 4).toString(), 'PNG', 'the plot as PNG data')
  const error = await run(id, 'stop("boom")', { language: 'r' })
  t.match(error.error, { name: 'Error', value: 'boom' })
  const slow = await run(id, 'Sys.sleep(30)', { language: 'r', timeout_ms: 500 })
  t.match(slow.error, { code: 'execution_timeout', state_lost: false })
  t.equal((await run(id, 'cat(x, length(y), "\\n")', { language: 'r' })).stdout, '20 2 \n', 'state kept through the error and the interrupt')
  const forged = await run(id, 'con <- file("/proc/self/fd/1"); cat("ok\\n")', { language: 'r' })
  t.equal(forged.stdout, 'ok\n')
  const png = await run(id, 'png("saved.png"); plot(1:3); invisible(dev.off()); cat(file.exists("saved.png"), "\\n")', { language: 'r' })
  t.equal(png.stdout, 'TRUE \n', 'a png() the code opens itself writes its file as usual')
})

t.test('the runner leaves the user\'s shell variables alone', async (t) => {
  const id = await newSandbox()
  await run(id, 'd=mine; s=also_mine', { language: 'shell' })
  await run(id, 'print("x")', { language: 'php' })
  t.equal((await run(id, 'echo "$d $s"', { language: 'shell' })).stdout, 'mine also_mine\n')
})

t.test('an unknown language is a 400 naming the known ones', async (t) => {
  const id = await newSandbox()
  const res = await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/execute`, headers: auth(KEYS.alice), payload: { code: 'x', language: 'cobol' } })
  t.equal(res.statusCode, 400)
  t.match(res.json().error.message, /language/)
})
