/**
 * Reads a string field out of JSON that is still arriving: `{"language": "python", "code": "print(` gives
 * code = 'print(' so far. `complete` says whether the closing quote has arrived.
 */
export function partialStringField (json: string, field: string): { value: string, complete: boolean } | null {
  const key = new RegExp(`"${field}"\\s*:\\s*"`).exec(json)
  if (!key) return null
  let value = ''
  let i = key.index + key[0].length
  const escapes: Record<string, string> = { n: '\n', t: '\t', r: '\r', b: '\b', f: '\f', '"': '"', '\\': '\\', '/': '/' }
  while (i < json.length) {
    const c = json[i]
    if (c === '"') return { value, complete: true }
    if (c !== '\\') { value += c; i++; continue }
    if (i + 1 >= json.length) break
    const e = json[i + 1]
    if (e === 'u') {
      if (i + 6 > json.length) break
      value += String.fromCharCode(parseInt(json.slice(i + 2, i + 6), 16))
      i += 6
    } else {
      value += escapes[e] ?? e
      i += 2
    }
  }
  return { value, complete: false }
}
