// The OpenAPI tool server as Open WebUI uses one: its document loaded and converted as Open WebUI's utils/tools.py
// does (one tool per operationId; path, query and flattened JSON body properties as the tool's parameters), then
// each tool called with all its arguments in the JSON body, with the key as Bearer and Open WebUI's user headers.
import t from 'tap'
import { build, sandboxConfig, KEYS, REDIS_URL, flushPrefix } from '../helper.js'

interface ToolSpec { name: string, description: string, parameters: { type: 'object', properties: Record<string, unknown>, required: string[] }, method: string, path: string }

/** Open WebUI's conversion of an OpenAPI document into function tools (the contract: operationId, description, flat parameters). */
function convert (doc: { paths: Record<string, Record<string, any>> }): ToolSpec[] {
  const tools: ToolSpec[] = []
  for (const [path, methods] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      if (!op.operationId) continue
      const tool: ToolSpec = { name: op.operationId, description: op.description ?? op.summary ?? 'No description available.', parameters: { type: 'object', properties: {}, required: [] }, method, path }
      for (const param of op.parameters ?? []) {
        tool.parameters.properties[param.name] = { type: param.schema?.type, description: param.description ?? '' }
        if (param.required) tool.parameters.required.push(param.name)
      }
      const schema = op.requestBody?.content?.['application/json']?.schema
      if (schema?.properties) {
        Object.assign(tool.parameters.properties, schema.properties)
        tool.parameters.required.push(...(schema.required ?? []))
      }
      tools.push(tool)
    }
  }
  return tools
}

t.test('the OpenAPI tool server, as Open WebUI loads and calls it', async (t) => {
  const config = await sandboxConfig({ POOL_SIZE: '2', TOOLS_CORS_ORIGINS: 'https://chat.example.org' })
  const app = await build(t, config)
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  const base = await app.listen({ port: 0, host: '127.0.0.1' })

  const docResponse = await fetch(`${base}/tools/openapi.json`)
  t.equal(docResponse.status, 200, 'the document needs no key (Open WebUI fetches it to list the tools)')
  const doc = await docResponse.json() as { servers: Array<{ url: string }>, paths: Record<string, Record<string, any>> }
  const tools = convert(doc)
  t.same(tools.map(x => x.name).sort(), ['list_files', 'read_file', 'run_code', 'run_command', 'write_file'], 'only the model-facing operations, one tool each')
  const runCode = tools.find(x => x.name === 'run_code')!
  t.match(runCode.parameters, { properties: { code: { type: 'string' }, language: { type: 'string' } }, required: ['code'] }, 'flat parameters from the JSON body')
  t.ok(runCode.description.length > 40, 'a description for the model')

  /** Calls a tool the way Open WebUI's execute_tool_server does: every argument in the JSON body, at the document's server. */
  const call = async (name: string, params: Record<string, unknown>, headers: Record<string, string> = {}) => {
    const tool = tools.find(x => x.name === name)!
    const res = await fetch(`${doc.servers[0]!.url}${tool.path}`, {
      method: tool.method.toUpperCase(),
      headers: { authorization: `Bearer ${KEYS.alice}`, 'content-type': 'application/json', 'x-openwebui-user-id': 'u-1', 'x-openwebui-chat-id': 'chat-a', ...headers },
      body: JSON.stringify(params)
    })
    t.match(res.headers.get('content-type'), /application\/json/, `${name} answers JSON`)
    return { status: res.status, body: await res.json() as any }
  }

  const first = await call('run_code', { code: 'x = 41\nprint("set")', language: 'python', __extra__: 'Open WebUI may add more' })
  t.equal(first.status, 200, JSON.stringify(first.body))
  t.match(first.body, { stdout: 'set\n', stderr: '', error: null, images: [] })
  t.match((await call('run_code', { code: 'x + 1' })).body, { result: '42' }, 'the next call of the chat keeps the variables')
  const plot = await call('run_code', { code: 'import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()' })
  t.match(plot.body.images[0], /^data:image\/png;base64,iVBOR/, 'a plot as a data URL')
  t.match((await call('run_code', { code: '1/0' })).body, { error: /ZeroDivisionError/ })
  t.match((await call('run_code', { code: 'x', language: 'cobol' })).body, { error: { code: String } }, 'an unknown language: a JSON error')

  t.match((await call('write_file', { path: 'notes/a.txt', content: 'hello' })).body, { path: 'notes/a.txt', size: 5 })
  t.match((await call('read_file', { path: '/home/user/notes/a.txt' })).body, { encoding: 'utf8', content: 'hello' })
  t.match((await call('list_files', { path: 'notes' })).body, { entries: [{ name: 'a.txt', type: 'file', size: 5 }] })
  t.match((await call('run_command', { command: 'cat notes/a.txt; echo; pwd; exit 3' })).body, { exit_code: 3, stdout: 'hello\n/home/user\n' })
  t.match((await call('write_file', { path: 'bin.dat', content: Buffer.from([0, 255, 1]).toString('base64'), encoding: 'base64' })).body, { size: 3 })
  t.match((await call('read_file', { path: 'bin.dat' })).body, { encoding: 'base64', content: 'AP8B' })

  const other = await call('read_file', { path: 'notes/a.txt' }, { 'x-openwebui-chat-id': 'chat-b' })
  t.equal(other.status, 404, 'another chat has a workspace of its own')
  t.match((await call('run_code', { code: 'print("x" in dir())' }, { 'x-openwebui-chat-id': 'chat-b' })).body, { stdout: 'False\n' })
  const bob = await fetch(`${base}/tools/read_file`, { method: 'POST', headers: { authorization: `Bearer ${KEYS.bob}`, 'content-type': 'application/json', 'x-openwebui-chat-id': 'chat-a' }, body: JSON.stringify({ path: 'notes/a.txt' }) })
  t.equal(bob.status, 404, 'another key naming the same chat never reaches it')

  t.equal((await call('read_file', { path: '../../etc/passwd' })).status, 400)
  t.equal((await call('read_file', { path: 'notes' })).status, 400, 'a directory where a file is expected')
  t.equal((await call('run_command', {})).status, 400, 'a missing argument')
  t.equal((await fetch(`${base}/tools/run_code`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"code":"1"}' })).status, 401, 'calls need the key')

  const preflight = await fetch(`${base}/tools/run_code`, { method: 'OPTIONS', headers: { origin: 'https://chat.example.org', 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization,content-type' } })
  t.equal(preflight.status, 204, 'a browser of an allowed origin may call it')
  t.equal(preflight.headers.get('access-control-allow-origin'), 'https://chat.example.org')
  t.match(preflight.headers.get('access-control-allow-headers'), /authorization/)
  const cross = await fetch(`${base}/tools/list_files`, { method: 'POST', headers: { origin: 'https://chat.example.org', authorization: `Bearer ${KEYS.alice}`, 'content-type': 'application/json' }, body: '{}' })
  t.equal(cross.headers.get('access-control-allow-origin'), 'https://chat.example.org')
  const elsewhere = await fetch(`${base}/tools/run_code`, { method: 'OPTIONS', headers: { origin: 'https://evil.example.com', 'access-control-request-method': 'POST' } })
  t.equal(elsewhere.status, 404)
  t.equal(elsewhere.headers.get('access-control-allow-origin'), null, 'other origins get no CORS headers')
})
