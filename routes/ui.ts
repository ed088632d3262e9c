import { dirname, join } from 'node:path'
import { createRequire } from 'node:module'
import { PACKAGE_ROOT } from '../services/paths.js'
import type { FastifyPluginAsync } from 'fastify'
import { readFileSync } from 'node:fs'

const JS = 'text/javascript; charset=utf-8'
const CSS = 'text/css; charset=utf-8'

/** xterm.js for the terminal tab, from the installed npm package (served here: the monitor fetches nothing from a CDN). */
function xtermFile (name: string): string {
  const main = createRequire(import.meta.url).resolve('@xterm/xterm') // <package>/lib/xterm.js
  return join(dirname(dirname(main)), name)
}

/** uPlot for the status page's charts, from the installed npm package. */
function uplotFile (name: string): string {
  const main = createRequire(import.meta.url).resolve('uplot') // <package>/dist/uPlot.cjs.js
  return join(dirname(main), name)
}

/** The web monitor: static files from ui/ and its vendored libraries, read once at start-up. */
const routes: FastifyPluginAsync = async (app) => {
  const files: Record<string, { type: string, body: Buffer }> = {
    'index.html': { type: 'text/html; charset=utf-8', body: readFileSync(join(PACKAGE_ROOT, 'ui', 'index.html')) },
    'app.js': { type: JS, body: readFileSync(join(PACKAGE_ROOT, 'ui', 'app.js')) },
    'style.css': { type: CSS, body: readFileSync(join(PACKAGE_ROOT, 'ui', 'style.css')) },
    'vendor/xterm.mjs': { type: JS, body: readFileSync(xtermFile('lib/xterm.mjs')) },
    'vendor/xterm.css': { type: CSS, body: readFileSync(xtermFile('css/xterm.css')) },
    'vendor/uPlot.esm.js': { type: JS, body: readFileSync(uplotFile('uPlot.esm.js')) },
    'vendor/uPlot.min.css': { type: CSS, body: readFileSync(uplotFile('uPlot.min.css')) }
  }
  const options = { config: { public: true, rateLimit: false }, schema: { hide: true } } as const
  app.get('/ui', options, async (_request, reply) => reply.redirect('/ui/'))
  app.get('/ui/', options, async (_request, reply) => reply.type(files['index.html']!.type).send(files['index.html']!.body))
  for (const [name, file] of Object.entries(files)) {
    if (name === 'index.html') continue
    app.get(`/ui/${name}`, options, async (_request, reply) => reply.type(file.type).header('cache-control', 'no-cache').send(file.body))
  }
}

export default routes
