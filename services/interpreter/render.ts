import type { Chunk } from '../../schemas/chat.js'

/** Renders LMC chunks as markdown text for OpenAI-style clients: code and its output as fenced blocks, images as data URIs. */
export class MarkdownRenderer {
  private consoleOpen = false
  private last = ''

  render (chunk: Chunk): string {
    const out = this.piece(chunk)
    if (out) this.last = out[out.length - 1]
    return out
  }

  private close (): string {
    return this.last === '\n' ? '```\n' : '\n```\n'
  }

  private piece (chunk: Chunk): string {
    const content = typeof chunk.content === 'string' ? chunk.content : ''
    if (chunk.type === 'message' && chunk.role === 'assistant') return content
    if (chunk.type === 'code') {
      if (chunk.start) return `\n\n\`\`\`${chunk.format ?? ''}\n`
      return chunk.end ? this.close() : content
    }
    if (chunk.type === 'console') {
      if (chunk.end) {
        const closing = this.consoleOpen ? this.close() : ''
        this.consoleOpen = false
        return closing
      }
      if (chunk.start || !content) return ''
      const open = this.consoleOpen ? '' : '\n```text\n'
      this.consoleOpen = true
      return open + content
    }
    if (chunk.type === 'image' && chunk.format === 'base64.png') return `\n![image](data:image/png;base64,${content})\n`
    return ''
  }
}
