import fp from 'fastify-plugin'
import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'

/** OpenAPI from the routes' TypeBox schemas; Swagger UI at /docs, the document at /docs/json. */
export default fp(async (app) => {
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: { title: 'Interpreter Server', version: app.config.version, description: 'Self-hosted code interpreter: LLMs that run code in hardened, stateful Docker sandboxes.' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
      tags: [
        { name: 'health', description: 'Liveness and readiness' },
        { name: 'sessions', description: 'Conversations and their history' },
        { name: 'sandboxes', description: 'Direct code execution in stateful sandboxes' },
        { name: 'files', description: 'Files in a sandbox workspace' },
        { name: 'chat', description: 'The interpreter: chat turns that run code, their events, approvals' },
        { name: 'openai', description: 'OpenAI-compatible API' },
        { name: 'admin', description: 'Operations' }
      ]
    }
  })
  await app.register(swaggerUi, { routePrefix: '/docs' })
}, { name: 'swagger', dependencies: ['config'] })
