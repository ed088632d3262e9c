import t from 'tap'
import { mkdirSync } from 'node:fs'
import { Writable } from 'node:stream'
import { chromium, type Browser, type Page } from 'playwright-core'
import type { FastifyInstance } from 'fastify'
import { FakeLlm } from '../fake-llm.js'
import { KEYS, REDIS_URL, flushPrefix, auth, fakeLlmConfig, fakeLlmApp } from '../helper.js'
import type { Config } from '../../services/config.js'

const SHOTS = 'test-output/ui'
const fake = new FakeLlm()
let app: FastifyInstance
let config: Config
let base: string
let browser: Browser

t.before(async () => {
  mkdirSync(SHOTS, { recursive: true })
  await fake.start()
  config = await fakeLlmConfig(fake.url, { POOL_SIZE: '1', LOG_LEVEL: 'info' })
  const quiet = new Writable({ write (_chunk, _encoding, done) { done() } })
  app = await fakeLlmApp(config, { logger: { stream: quiet } })
  base = await app.listen({ host: '127.0.0.1', port: 0 })
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']
  })
})

async function signedIn (key: string, viewport = { width: 1280, height: 860 }): Promise<Page> {
  const page = await browser.newPage({ viewport })
  await page.goto(`${base}/ui`)
  await page.fill('#key', key)
  await page.click('#signin-form button[type=submit]')
  await page.waitForSelector('#status:not([hidden]) [data-card="store"]')
  return page
}

t.test('sign in, and a wrong key shows a readable error', async (t) => {
  const page = await browser.newPage()
  await page.goto(`${base}/ui`)
  await page.fill('#key', 'not-a-key')
  await page.click('#signin-form button[type=submit]')
  await page.waitForSelector('#error:not([hidden])')
  t.equal(await page.textContent('#error'), 'Error: The API key is not valid')
  await page.screenshot({ path: `${SHOTS}/01-signin-error.png` })
  await page.close()
})

t.test('status: readiness, pool and rates from the server, updated live', async (t) => {
  const page = await signedIn(KEYS.admin)
  t.equal(await page.textContent('[data-card="store"] .value'), 'ok')
  t.equal(await page.textContent('[data-card="docker"] .value'), 'ok')
  t.match(await page.textContent('[data-card="pool"] .value'), /warm/)
  await page.waitForFunction(() => /\d/.test(document.querySelector('[data-card="requests / s"] .value')?.textContent ?? ''))
  t.match(await page.textContent('#whoami'), /admin/)
  await page.screenshot({ path: `${SHOTS}/02-status.png`, fullPage: true })
  await page.setViewportSize({ width: 390, height: 844 })
  await page.screenshot({ path: `${SHOTS}/03-status-phone.png`, fullPage: true })
  await page.close()
})

t.test('playground: a turn that draws a plot, with an approval, streams text, code, output and the image', async (t) => {
  fake.script('gpt-test',
    { text: 'Let me draw it.', code: { language: 'python', code: 'import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()\nprint("plotted")' } },
    { text: 'Here is the plot.' })
  const page = await signedIn(KEYS.alice)
  await page.click('[data-tab="playground"]')
  await page.waitForSelector('#pg-session:has-text("ses_")')
  await page.selectOption('#model', 'gpt')
  await page.uncheck('#autorun')
  await page.fill('#prompt', 'Draw a small line plot')
  await page.click('#send')
  await page.waitForSelector('.confirm button.approve')
  t.match(await page.textContent('#conversation pre.code'), /plt\.plot/)
  await page.screenshot({ path: `${SHOTS}/04-playground-confirm.png`, fullPage: true })
  await page.click('.confirm button.approve')
  await page.waitForSelector('#conversation img[src^="data:image/png;base64,"]')
  await page.waitForSelector('#conversation .msg.assistant:has-text("Here is the plot.")')
  t.match(await page.textContent('#conversation pre.output'), /plotted/)
  t.equal(await page.isDisabled('#send'), false, 'ready for the next message')
  await page.screenshot({ path: `${SHOTS}/05-playground-plot.png`, fullPage: true })
  await page.close()
})

t.test('sessions: a user key sees its own transcript, never another key\'s session', async (t) => {
  const other = (await app.inject({ method: 'POST', url: '/v1/sessions', headers: auth(KEYS.bob), payload: { title: 'bob private' } })).json()
  const page = await signedIn(KEYS.alice)
  await page.click('[data-tab="sessions"]')
  await page.waitForSelector('#session-list li[data-id]')
  t.notOk(await page.$(`#session-list li[data-id="${other.id}"]`), "bob's session is not listed for alice")
  t.notMatch(await page.textContent('#session-list'), 'bob private')
  await page.click('#session-list li[data-id]')
  await page.waitForSelector('#transcript img')
  t.match(await page.textContent('#transcript pre.code'), /plt\.plot/)
  t.ok(await page.$('#transcript pre.code .tok-k'), 'code is highlighted')
  await page.screenshot({ path: `${SHOTS}/06-sessions-transcript.png`, fullPage: true })
  t.ok(await page.isHidden('[data-tab="logs"]') && await page.isHidden('[data-tab="settings"]'), 'no admin tabs for a user key')
  await page.close()

  const admin = await signedIn(KEYS.admin)
  await admin.click('[data-tab="sessions"]')
  await admin.waitForSelector(`#session-list li[data-id="${other.id}"]`)
  t.pass('an admin key sees every session')
  await admin.close()
})

t.test('sandboxes: the key\'s sandboxes with their live memory; sort, filter, files, pause and resume, delete from the page; the audit trail shows it all', async (t) => {
  const id = (await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: auth(KEYS.alice), payload: { on_timeout: 'pause' } })).json().id as string
  await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/execute`, headers: auth(KEYS.alice), payload: { code: 'data = bytearray(64 * 1024 * 1024)\nprint(len(data))' } })
  await app.inject({ method: 'PUT', url: `/v1/sandboxes/${id}/files/notes/hello.txt`, headers: { ...auth(KEYS.alice), 'content-type': 'application/octet-stream' }, payload: 'hello from the page test' })
  const bobs = (await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: auth(KEYS.bob), payload: {} })).json().id as string
  const page = await signedIn(KEYS.alice)
  await page.click('[data-tab="sandboxes"]')
  const row = `#sandbox-rows tr[data-id="${id}"]`
  await page.waitForSelector(row)
  t.same([...new Set(await page.locator('#sandbox-rows tr[data-id] td:nth-child(2)').allTextContents())], ['alice'], "alice sees her sandboxes only, not bob's")
  t.equal(await page.textContent(`${row} td.state`), 'ready')
  // The engine's readings come in (one poller per host, every 5 s): memory at once, CPU from the second reading.
  await page.waitForFunction((sel) => /MB \//.test(document.querySelector(`${sel} [data-cell="memory"]`)?.textContent ?? ''), row, { timeout: 30_000 })
  const memory = await page.textContent(`${row} [data-cell="memory"]`)
  t.match(memory, /^\d+(\.\d)? MB \/ \d+ (MB|GB)$/, `memory used of the limit (${memory})`)
  t.ok(parseFloat(memory!) >= 60, 'the 64 MB the code holds shows')
  await page.waitForFunction((sel) => /%/.test(document.querySelector(`${sel} [data-cell="cpu"]`)?.textContent ?? ''), row, { timeout: 30_000 })
  await page.screenshot({ path: `${SHOTS}/07-sandboxes.png`, fullPage: true })
  await page.fill('#sandbox-filter', 'no-such-thing')
  t.match(await page.textContent('#sandbox-rows'), /No sandbox matches/)
  await page.fill('#sandbox-filter', 'python')
  await page.waitForSelector(row)
  await page.click('#sandboxes th[data-sort="memory_bytes"]')
  t.ok(await page.locator('#sandboxes th.sorted[data-sort="memory_bytes"]').count(), 'sorted by memory')

  // Files: browse into a directory, download a file, upload one.
  await page.click(`${row} [data-action="files"]`)
  await page.waitForSelector('#files-list li[data-path="notes"]')
  await page.click('#files-list li[data-path="notes"] button')
  await page.waitForSelector('#files-list li[data-path="notes/hello.txt"]')
  const downloading = page.waitForEvent('download')
  await page.click('#files-list li[data-path="notes/hello.txt"] [data-action="download"]')
  const downloaded = await downloading
  t.equal(downloaded.suggestedFilename(), 'hello.txt')
  await page.setInputFiles('#files-upload', { name: 'up.csv', mimeType: 'text/csv', buffer: Buffer.from('a,b\n1,2\n') })
  await page.waitForSelector('#files-list li[data-path="notes/up.csv"]')
  t.equal((await app.inject({ method: 'GET', url: `/v1/sandboxes/${id}/files/notes/up.csv`, headers: auth(KEYS.alice) })).body, 'a,b\n1,2\n', 'the upload reached the sandbox')

  await page.click(`${row} [data-action="pause"]`)
  await page.waitForSelector(`${row} td.state.paused`)
  t.match(await page.textContent(`${row} td.state`), /^paused \((memory|files) kept\)$/)
  t.equal((await app.inject({ method: 'GET', url: `/v1/sandboxes/${id}`, headers: auth(KEYS.alice) })).json().status, 'paused', 'the server paused it')
  await page.click(`${row} [data-action="resume"]`)
  await page.waitForSelector(`${row} td.state.ready`)
  page.once('dialog', (dialog) => { void dialog.accept() })
  await page.click(`${row} [data-action="delete"]`)
  await page.waitForSelector(row, { state: 'detached' })
  t.equal((await app.inject({ method: 'GET', url: `/v1/sandboxes/${id}`, headers: auth(KEYS.alice) })).statusCode, 404)

  // The audit trail: create, execute, upload, delete of that sandbox, by the key's name; alice never sees bob's.
  await page.click('[data-tab="audit"]')
  await page.fill('#audit-target', id)
  await page.press('#audit-target', 'Enter')
  await page.waitForSelector('#audit-rows tr[data-action="sandbox.delete"]')
  const actions = await page.locator('#audit-rows tr[data-action]').evaluateAll(rows => rows.map(r => (r as HTMLElement).dataset.action))
  for (const action of ['sandbox.create', 'execute', 'file.upload', 'file.download', 'sandbox.delete']) t.ok(actions.includes(action), `${action} is in the trail`)
  t.same([...new Set(await page.locator('#audit-rows tr[data-action] td:nth-child(2)').allTextContents())], ['alice'], 'by the key\'s name')
  t.match(await page.textContent('#audit-rows tr[data-action="execute"]'), /language=python .*code=data = bytearray/, 'the execution with its language and a short prefix of its code')
  await page.screenshot({ path: `${SHOTS}/10-audit.png`, fullPage: true })
  await page.fill('#audit-target', bobs)
  await page.press('#audit-target', 'Enter')
  await page.waitForFunction(() => /Nothing recorded/.test(document.querySelector('#audit-rows')?.textContent ?? ''))
  t.pass('bob\'s sandbox is not in alice\'s trail')
  t.notOk(await page.isVisible('#audit-key'), 'a user key cannot ask for other keys')
  const exporting = page.waitForEvent('download')
  await page.fill('#audit-target', id)
  await page.click('#audit-export')
  const exported = await (await exporting).path()
  const lines = (await import('node:fs')).readFileSync(exported!, 'utf8').trim().split('\n').map(l => JSON.parse(l) as { action: string, key: string })
  t.ok(lines.length >= 4 && lines.every(l => l.key === 'alice'), 'the JSON lines export holds the same entries')
  await page.close()
})

t.test('status: charts of the last hour move under a small load; capacity and hosts always shown; readable on a phone', async (t) => {
  const id = (await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: auth(KEYS.admin), payload: {} })).json().id as string
  const load = async () => {
    for (let i = 0; i < 5; i++) await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/execute`, headers: auth(KEYS.admin), payload: { code: `print(${i})` } })
    await app.timeseries.sample()
  }
  await load()
  await load()
  const page = await signedIn(KEYS.admin)
  await page.waitForSelector('#charts:not([hidden]) [data-chart="executions"] canvas')
  t.match(await page.textContent('[data-card="capacity"] .value'), /^\d+ \/ \d+ live/, 'capacity: live of the maximum')
  t.match(await page.textContent('[data-card="memory budget"] .value'), /(MB|GB) \/ .*(MB|GB)/)
  t.ok(await page.locator('[data-card^="host "]').count(), 'a card for the Docker host even when there is one')
  const before = Number(await page.getAttribute('#charts', 'data-samples'))
  await load()
  await page.evaluate(() => { (document.querySelector('[data-tab="status"]') as HTMLElement).click() })
  await page.waitForFunction((n) => Number(document.querySelector('#charts')?.getAttribute('data-samples')) > n, before, { timeout: 20_000 })
  t.pass('a new sample reached the charts')
  t.ok(await page.locator('[data-chart="executions"] .u-legend').textContent().then(x => /rest/.test(x ?? '')), 'executions by protocol (rest)')
  await page.screenshot({ path: `${SHOTS}/11-status-charts.png`, fullPage: true })
  await page.setViewportSize({ width: 390, height: 844 })
  await page.waitForTimeout(300)
  const width = await page.evaluate(() => document.querySelector('[data-chart="requests"] canvas')!.getBoundingClientRect().width)
  t.ok(width <= 390, `a chart fits a phone's width (${width} px)`)
  await page.screenshot({ path: `${SHOTS}/12-status-charts-phone.png`, fullPage: true })
  await page.close()
  const user = await signedIn(KEYS.alice)
  t.ok(await user.isHidden('#charts'), 'a user key sees no deployment charts')
  t.equal((await app.inject({ method: 'GET', url: '/v1/admin/timeseries', headers: auth(KEYS.alice) })).statusCode, 403)
  await user.close()
  await app.inject({ method: 'DELETE', url: `/v1/sandboxes/${id}`, headers: auth(KEYS.admin) })
})

t.test('terminal: a shell in a sandbox typed into with xterm.js; reattached after leaving the tab', async (t) => {
  const id = (await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: auth(KEYS.alice), payload: {} })).json().id as string
  const page = await signedIn(KEYS.alice)
  const local: string[] = []
  page.on('request', (request) => { if (!request.url().startsWith(base) && !request.url().startsWith('ws://127.0.0.1') && !request.url().startsWith('data:')) local.push(request.url()) })
  await page.click('[data-tab="sandboxes"]')
  await page.click(`#sandbox-rows tr[data-id="${id}"] [data-action="terminal"]`)
  await page.waitForSelector('#term-screen .xterm-rows')
  await page.waitForFunction(() => /^shell \d+$/.test(document.querySelector('#term-status')?.textContent ?? ''))
  const rows = async () => await page.locator('#term-screen .xterm-rows > div').allTextContents()
  await page.click('#term-screen')
  await page.keyboard.type('echo hi')
  await page.keyboard.press('Enter')
  await page.waitForFunction(() => [...document.querySelectorAll('#term-screen .xterm-rows > div')].some(row => row.textContent?.trim() === 'hi'))
  t.ok((await rows()).some(row => row.trim() === 'hi'), 'typing `echo hi` shows hi')
  await page.screenshot({ path: `${SHOTS}/08-terminal.png`, fullPage: true })
  const pid = (await page.textContent('#term-status'))!
  await page.click('[data-tab="status"]')
  await page.click('[data-tab="terminal"]')
  await page.waitForFunction(() => [...document.querySelectorAll('#term-screen .xterm-rows > div')].some(row => row.textContent?.trim() === 'hi'))
  t.equal(await page.textContent('#term-status'), pid, 'the same shell, its screen replayed')
  await page.keyboard.type('exit')
  await page.keyboard.press('Enter')
  await page.waitForSelector('#term-status:has-text("the shell ended")')
  t.same(local, [], 'nothing is fetched from another origin (xterm.js is served locally)')
  await page.close()
  await app.inject({ method: 'DELETE', url: `/v1/sandboxes/${id}`, headers: auth(KEYS.alice) })
})

t.test('ports: a page served inside a sandbox opened in the browser by its signed URL, refused once expired', async (t) => {
  const headers = auth(KEYS.alice)
  const id = (await app.inject({ method: 'POST', url: '/v1/sandboxes', headers, payload: {} })).json().id as string
  await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/commands`, headers, payload: { cmd: 'mkdir -p www && echo "<title>inside</title><h1 id=hello>hello from the sandbox</h1>" > www/index.html' } })
  const server = await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/commands`, headers, payload: { cmd: ['python3', '-m', 'http.server', '8080'], cwd: 'www', background: true } })
  t.equal(server.statusCode, 201)
  const signed = (await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/ports/8080/url`, headers, payload: { expires_in: 4 } })).json()
  const page = await browser.newPage()
  let shown = ''
  for (let i = 0; i < 40 && shown !== 'hello from the sandbox'; i++) { // the server inside takes a moment to listen
    const res = await page.goto(`${base}${signed.path}`)
    shown = res?.status() === 200 ? (await page.textContent('#hello').catch(() => '')) ?? '' : ''
    if (shown !== 'hello from the sandbox') await new Promise(resolve => setTimeout(resolve, 100))
  }
  t.equal(shown, 'hello from the sandbox', 'the page, no API key in the browser')
  await page.screenshot({ path: `${SHOTS}/09-port-signed-url.png` })
  const expired = await new Promise<number>((resolve) => {
    const check = async () => {
      const res = await page.goto(`${base}${signed.path}`)
      if (res?.status() === 401) return resolve(401)
      setTimeout(() => { void check() }, 250)
    }
    void check()
  })
  t.equal(expired, 401, 'refused once it expires')
  t.match(await page.textContent('body'), /expired/)
  await page.close()
  await app.inject({ method: 'DELETE', url: `/v1/sandboxes/${id}`, headers })
})

t.test('sessions: an open transcript follows a running turn live, approval included', async (t) => {
  const session = (await app.inject({ method: 'POST', url: '/v1/sessions', headers: auth(KEYS.alice), payload: { title: 'watched live' } })).json()
  const page = await signedIn(KEYS.alice)
  await page.click('[data-tab="sessions"]')
  await page.click(`#session-list li[data-id="${session.id}"]`)
  await page.waitForSelector('#transcript:has-text("watched live")')
  fake.script('gpt-test', { text: 'Counting for you now.', code: { language: 'python', code: 'print("counted", 6 * 7)' } }, { text: 'The count is in.' })
  const turn = app.inject({ method: 'POST', url: '/v1/chat', headers: auth(KEYS.alice), payload: { session_id: session.id, auto_run: false, messages: [{ role: 'user', content: 'count, please' }] } })
  await page.waitForSelector('#transcript .confirm button.approve')
  t.match(await page.textContent('#transcript'), /count, please[\s\S]*Counting for you now\.[\s\S]*print\("counted", 6 \* 7\)/, 'the user\'s message, then the streamed text and code, without a reload')
  await page.screenshot({ path: `${SHOTS}/09-transcript-live.png`, fullPage: true })
  await page.click('#transcript .confirm button.approve')
  t.equal((await turn).statusCode, 200, 'approved from the transcript, the turn finished')
  await page.waitForSelector('#transcript:has-text("The count is in.")')
  t.match(await page.textContent('#transcript pre.output'), /counted 42/, 'its output')
  t.equal(await page.$$eval('#transcript .msg.assistant', nodes => nodes.filter(n => n.textContent === 'The count is in.').length), 1, 'shown once, as stored')
  await page.close()
})

t.test('live logs: a new log line arrives', async (t) => {
  const page = await signedIn(KEYS.admin)
  await page.click('[data-tab="logs"]')
  await page.waitForSelector('#log-lines li')
  await app.inject({ method: 'GET', url: '/v1/sessions/ses_marker_for_the_log', headers: auth(KEYS.alice) })
  await page.waitForSelector('#log-lines li:has-text("ses_marker_for_the_log")')
  t.pass('the request just made shows up')
  t.notMatch(await page.textContent('#log-lines'), KEYS.alice, 'no key in the log view')
  await page.screenshot({ path: `${SHOTS}/07-logs.png`, fullPage: true })
  await page.close()
})

t.test('settings: validated with a clear message, applied without a restart, visible in GET /v1/settings', async (t) => {
  const page = await signedIn(KEYS.admin)
  await page.click('[data-tab="settings"]')
  await page.waitForFunction(() => (document.querySelector('[name=execution_timeout_ms]') as HTMLInputElement)?.value !== '')
  await page.fill('[name=execution_timeout_ms]', '99999999')
  await page.click('#settings-form button[type=submit]')
  await page.waitForSelector('#error:not([hidden])')
  t.match(await page.textContent('#error'), /execution_timeout_ms must be at most/)
  await page.fill('[name=execution_timeout_ms]', '4321')
  await page.fill('[name=rate_limit_per_minute]', '777')
  await page.click('#settings-form button[type=submit]')
  await page.waitForSelector('#settings-status:has-text("Saved")')
  await page.screenshot({ path: `${SHOTS}/08-settings.png`, fullPage: true })
  const settings = (await app.inject({ method: 'GET', url: '/v1/settings', headers: auth(KEYS.admin) })).json()
  t.match(settings, { execution_timeout_ms: 4321, rate_limit_per_minute: 777 })
  const res = await app.inject({ method: 'GET', url: '/v1/sessions', headers: auth(KEYS.bob) })
  t.equal(res.headers['x-ratelimit-limit'], '777', 'the new rate limit is in force')
  const sandbox = (await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: auth(KEYS.bob), payload: {} })).json()
  const slow = await app.inject({ method: 'POST', url: `/v1/sandboxes/${sandbox.id}/execute`, headers: auth(KEYS.bob), payload: { code: 'import time\ntime.sleep(10)' } })
  t.match(slow.json().error, { code: 'execution_timeout', value: /4321 ms/ }, 'the new execution timeout is in force')
  await page.click('#reset-settings')
  await page.waitForSelector('#settings-status:has-text("Back to the configuration")')
  t.equal(await page.inputValue('[name=rate_limit_per_minute]'), String(config.RATE_LIMIT_PER_MINUTE), 'the form shows the configuration\'s value again')
  t.equal((await app.inject({ method: 'GET', url: '/v1/sessions', headers: auth(KEYS.bob) })).headers['x-ratelimit-limit'], String(config.RATE_LIMIT_PER_MINUTE), 'and it is in force')
  await page.close()
})

t.test('close', async () => {
  await browser.close()
  await app.close()
  await fake.stop()
  await flushPrefix(REDIS_URL, config.REDIS_PREFIX)
})
