import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'

/** One scripted answer: text and/or one tool call (`code`: execute; `tool`: any), or an HTTP error, or no answer at all. */
export interface Reply {
  text?: string
  code?: { language: string, code: string }
  /** A call of any other tool (Claude's bash or text editor, ...) by name, with its input. */
  tool?: { name: string, input: Record<string, unknown> }
  status?: number
  hang?: boolean
  /** Pause between streamed pieces, ms. */
  delayMs?: number
}
export type Script = Reply | ((request: Record<string, unknown>) => Reply)

const callOf = (reply: Reply) => reply.tool ?? (reply.code ? { name: 'execute', input: reply.code as Record<string, unknown> } : undefined)

export interface Received { api: 'openai' | 'anthropic', model: string, body: Record<string, unknown>, authorization?: string }

/**
 * A local stand-in for OpenAI's chat completions and Anthropic's messages APIs, streaming and not, with tool
 * calls, speaking their wire formats so that the official SDKs can call it. Answers are scripted per model.
 */
export class FakeLlm {
  private server: Server | null = null
  private readonly scripts = new Map<string, Script[]>()
  readonly received: Received[] = []
  url = ''

  script (model: string, ...replies: Script[]): this {
    this.scripts.set(model, [...(this.scripts.get(model) ?? []), ...replies])
    return this
  }

  /** Drops every reply still scripted (a test whose runs ended early leaves some). */
  reset (): this {
    this.scripts.clear()
    return this
  }

  async start (): Promise<this> {
    this.server = createServer((req, res) => { this.handle(req, res).catch(() => res.destroy()) })
    await new Promise<void>(resolve => this.server!.listen(0, '127.0.0.1', resolve))
    const address = this.server.address()
    this.url = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`
    return this
  }

  async stop (): Promise<void> {
    this.server?.closeAllConnections()
    await new Promise<void>(resolve => this.server ? this.server.close(() => resolve()) : resolve())
  }

  private async handle (req: IncomingMessage, res: ServerResponse): Promise<void> {
    let raw = ''
    for await (const piece of req) raw += piece
    const body = JSON.parse(raw || '{}') as Record<string, unknown>
    const api = req.url?.endsWith('/messages') ? 'anthropic' : 'openai'
    const model = String(body.model)
    this.received.push({ api, model, body, authorization: req.headers.authorization ?? (req.headers['x-api-key'] as string | undefined) })
    const queue = this.scripts.get(model) ?? []
    const next = queue.shift()
    const reply: Reply = typeof next === 'function' ? next(body) : next ?? { text: `(no script left for ${model})` }
    if (reply.hang) return // the client's timeout has to deal with it
    if (reply.status) {
      res.writeHead(reply.status, { 'content-type': 'application/json' })
      res.end(JSON.stringify(api === 'openai'
        ? { error: { message: `scripted ${reply.status}`, type: 'server_error', code: null } }
        : { type: 'error', error: { type: reply.status === 401 ? 'authentication_error' : 'api_error', message: `scripted ${reply.status}` } }))
      return
    }
    if (api === 'openai') await this.openai(body, reply, res)
    else await this.anthropic(body, reply, res)
  }

  private pieces (text: string): string[] {
    return text.match(/.{1,7}/gs) ?? []
  }

  private async openai (body: Record<string, unknown>, reply: Reply, res: ServerResponse): Promise<void> {
    const id = 'chatcmpl-fake'
    const base = { id, object: 'chat.completion.chunk', created: 1, model: body.model }
    const call = callOf(reply)
    const args = call ? JSON.stringify(call.input) : ''
    const usage = { prompt_tokens: 11, completion_tokens: 7, total_tokens: 18 }
    if (!body.stream) {
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify({
        id,
        object: 'chat.completion',
        created: 1,
        model: body.model,
        usage,
        choices: [{ index: 0, finish_reason: call ? 'tool_calls' : 'stop', message: { role: 'assistant', content: reply.text ?? null, ...(call ? { tool_calls: [{ id: `call_${Math.random().toString(36).slice(2, 10)}`, type: 'function', function: { name: call.name, arguments: args } }] } : {}) } }]
      }))
      return
    }
    res.writeHead(200, { 'content-type': 'text/event-stream' })
    const send = async (data: unknown) => {
      res.write(`data: ${JSON.stringify(data)}\n\n`)
      if (reply.delayMs) await new Promise(resolve => setTimeout(resolve, reply.delayMs))
    }
    await send({ ...base, choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }] })
    for (const piece of this.pieces(reply.text ?? '')) await send({ ...base, choices: [{ index: 0, delta: { content: piece }, finish_reason: null }] })
    if (call) {
      const callId = `call_${Math.random().toString(36).slice(2, 10)}`
      await send({ ...base, choices: [{ index: 0, delta: { tool_calls: [{ index: 0, id: callId, type: 'function', function: { name: call.name, arguments: '' } }] }, finish_reason: null }] })
      for (const piece of this.pieces(args)) await send({ ...base, choices: [{ index: 0, delta: { tool_calls: [{ index: 0, function: { arguments: piece } }] }, finish_reason: null }] })
    }
    await send({ ...base, choices: [{ index: 0, delta: {}, finish_reason: call ? 'tool_calls' : 'stop' }] })
    await send({ ...base, choices: [], usage })
    res.end('data: [DONE]\n\n')
  }

  private async anthropic (body: Record<string, unknown>, reply: Reply, res: ServerResponse): Promise<void> {
    const call = callOf(reply)
    const args = call ? JSON.stringify(call.input) : ''
    if (!body.stream) {
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify({
        id: 'msg_fake',
        type: 'message',
        role: 'assistant',
        model: body.model,
        stop_reason: call ? 'tool_use' : 'end_turn',
        stop_sequence: null,
        usage: { input_tokens: 13, output_tokens: 5 },
        content: [...(reply.text ? [{ type: 'text', text: reply.text }] : []), ...(call ? [{ type: 'tool_use', id: 'toolu_1', name: call.name, input: call.input }] : [])]
      }))
      return
    }
    res.writeHead(200, { 'content-type': 'text/event-stream' })
    const send = async (event: string, data: unknown) => {
      res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`)
      if (reply.delayMs) await new Promise(resolve => setTimeout(resolve, reply.delayMs))
    }
    await send('message_start', { type: 'message_start', message: { id: 'msg_fake', type: 'message', role: 'assistant', content: [], model: body.model, stop_reason: null, stop_sequence: null, usage: { input_tokens: 13, output_tokens: 1 } } })
    let index = 0
    if (reply.text) {
      await send('content_block_start', { type: 'content_block_start', index, content_block: { type: 'text', text: '' } })
      for (const piece of this.pieces(reply.text)) await send('content_block_delta', { type: 'content_block_delta', index, delta: { type: 'text_delta', text: piece } })
      await send('content_block_stop', { type: 'content_block_stop', index })
      index++
    }
    if (call) {
      await send('content_block_start', { type: 'content_block_start', index, content_block: { type: 'tool_use', id: `toolu_${Math.random().toString(36).slice(2, 10)}`, name: call.name, input: {} } })
      for (const piece of this.pieces(args)) await send('content_block_delta', { type: 'content_block_delta', index, delta: { type: 'input_json_delta', partial_json: piece } })
      await send('content_block_stop', { type: 'content_block_stop', index })
    }
    await send('message_delta', { type: 'message_delta', delta: { stop_reason: call ? 'tool_use' : 'end_turn', stop_sequence: null }, usage: { output_tokens: 5 } })
    await send('message_stop', { type: 'message_stop' })
    res.end()
  }
}
