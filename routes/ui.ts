import { join } from 'node:path'
import { PACKAGE_ROOT } from '../services/paths.js'
import type { FastifyPluginAsync } from 'fastify'
import { readFileSync } from 'node:fs'

const FILES: Record<string, string> = { 'index.html': 'text/html; charset=utf-8', 'app.js': 'text/javascript; charset=utf-8', 'style.css': 'text/css; charset=utf-8' }

/** The web monitor: static files from ui/, read once at start-up; nothing is fetched from elsewhere. */
const routes: FastifyPluginAsync = async (app) => {
  const files = Object.fromEntries(Object.keys(FILES).map(name => [name, readFileSync(join(PACKAGE_ROOT, 'ui', name))]))
  const options = { config: { public: true, rateLimit: false }, schema: { hide: true } } as const
  app.get('/ui', options, async (_request, reply) => reply.redirect('/ui/'))
  app.get('/ui/', options, async (_request, reply) => reply.type(FILES['index.html']).send(files['index.html']))
  for (const name of ['app.js', 'style.css']) {
    app.get(`/ui/${name}`, options, async (_request, reply) => reply.type(FILES[name]).header('cache-control', 'no-cache').send(files[name]))
  }
}

export default routes
