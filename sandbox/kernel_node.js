// Persistent JavaScript kernel: code requests on KERNEL_CTRL_FD, events on KERNEL_EVENT_FD, output on fds 1 and 2.
'use strict'
const fs = require('node:fs')
const vm = require('node:vm')
const util = require('node:util')
const readline = require('node:readline')

const EVENTS = Number(process.env.KERNEL_EVENT_FD)
const CTRL = Number(process.env.KERNEL_CTRL_FD)
delete process.env.KERNEL_EVENT_FD
delete process.env.KERNEL_CTRL_FD
try { fs.writeFileSync('/proc/self/oom_score_adj', '1000') } catch {}

const emit = (event) => fs.writeSync(EVENTS, JSON.stringify(event) + '\n')
globalThis.require = require
let abortWait = null
process.on('SIGINT', () => { if (abortWait) abortWait(new Error('Interrupted')) })

function report (err) {
  const e = err instanceof Error ? err : new Error(String(err))
  const name = e.message === 'Interrupted' || /interrupted by `SIGINT`/.test(e.message) ? 'Interrupted' : e.name
  const stack = String(e.stack || '').split('\n').filter(l => !l.includes('kernel_node.js') && !l.includes('node:'))
  emit({ type: 'error', name, value: e.message, traceback: stack.map(l => l + '\n') })
}

async function run (code) {
  let value
  try {
    value = vm.runInThisContext(code, { filename: 'cell.js', breakOnSigint: true })
  } catch (err) {
    if (!(err instanceof SyntaxError) || !/\bawait\b/.test(code)) throw err
    // top-level await: run the cell as an async function (its let/const stay local to the cell)
    value = vm.runInThisContext(`(async () => {\n${code}\n})()`, { filename: 'cell.js', breakOnSigint: true })
  }
  if (value && typeof value.then === 'function') {
    value = await new Promise((resolve, reject) => { abortWait = reject; value.then(resolve, reject) })
      .finally(() => { abortWait = null })
  }
  if (value !== undefined) {
    globalThis._ = value
    emit({ type: 'result', data: { 'text/plain': util.inspect(value, { depth: 4 }) } })
  }
}

const lines = readline.createInterface({ input: fs.createReadStream(null, { fd: CTRL }) })
const queue = []
let busy = false
async function pump () {
  if (busy) return
  busy = true
  while (queue.length) {
    const request = JSON.parse(queue.shift())
    let status = 'ok'
    try { await run(request.code) } catch (err) { status = 'error'; report(err) }
    emit({ type: 'end', status })
  }
  busy = false
}
lines.on('line', (line) => { queue.push(line); pump() })
lines.on('close', () => process.exit(0))
process.on('uncaughtException', (err) => { process.stderr.write(`Uncaught ${err && err.stack ? err.stack : err}\n`) })
process.on('unhandledRejection', (err) => { process.stderr.write(`Unhandled rejection: ${err && err.stack ? err.stack : err}\n`) })
