// Secrets a key keeps for its sandboxes' egress (issue 26): the values are encrypted at rest (AES-256-GCM under the
// server's SECRETS_KEY), never returned by a route, never logged; only the egress proxy reads them, at the moment it
// injects one into a request leaving a sandbox, so a rotation takes effect on the next request.
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto'
import type { Principal } from './auth.js'
import { AppError } from './errors.js'
import type { Store } from './store/types.js'

const KIND = 'secret'
export const SECRET_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/
/** `{{secret:NAME}}` in a header template or in a header the code sent. */
export const PLACEHOLDER = /\{\{secret:([A-Za-z_][A-Za-z0-9_]{0,63})\}\}/g

export interface SecretRecord {
  owner: string
  name: string
  version: number
  created_at: string
  updated_at: string
  description: string
  /** Which server key sealed it (the first 8 hex of its digest), so a rotation of SECRETS_KEY can find what to reseal. */
  key_id: string
  iv: string
  tag: string
  data: string
}

export interface SecretView { object: 'secret', name: string, version: number, description: string, created_at: string, updated_at: string }

interface Key { id: string, key: Buffer }

const keyOf = (text: string): Key => {
  const key = createHash('sha256').update(text).digest()
  return { id: createHash('sha256').update(key).digest('hex').slice(0, 8), key }
}

export class Secrets {
  private readonly current: Key | null
  private readonly previous: Key | null

  /** `key`: SECRETS_KEY (absent: secrets are off); `previousKey`: the one before a rotation, still read. */
  constructor (private readonly store: Store, key: string | undefined, previousKey: string | undefined, private readonly maxPerKey: number) {
    this.current = key ? keyOf(key) : null
    this.previous = previousKey ? keyOf(previousKey) : null
  }

  get enabled (): boolean { return this.current !== null }

  private key (): Key {
    if (!this.current) throw new AppError(503, 'secrets_disabled', 'This server keeps no secrets: its operator has not set SECRETS_KEY (npm run setup makes one)', 'server_error')
    return this.current
  }

  private seal (value: string): Pick<SecretRecord, 'key_id' | 'iv' | 'tag' | 'data'> {
    const { id, key } = this.key()
    const iv = randomBytes(12)
    const cipher = createCipheriv('aes-256-gcm', key, iv)
    const data = Buffer.concat([cipher.update(value, 'utf8'), cipher.final()])
    return { key_id: id, iv: iv.toString('base64'), tag: cipher.getAuthTag().toString('base64'), data: data.toString('base64') }
  }

  private open (record: SecretRecord): string {
    const key = [this.current, this.previous].find(k => k?.id === record.key_id)
    if (!key) throw new AppError(500, 'secret_unreadable', `Secret ${record.name} was sealed with a server key this server no longer has`, 'server_error')
    const decipher = createDecipheriv('aes-256-gcm', key.key, Buffer.from(record.iv, 'base64'))
    decipher.setAuthTag(Buffer.from(record.tag, 'base64'))
    return Buffer.concat([decipher.update(Buffer.from(record.data, 'base64')), decipher.final()]).toString('utf8')
  }

  static view (r: SecretRecord): SecretView {
    return { object: 'secret', name: r.name, version: r.version, description: r.description, created_at: r.created_at, updated_at: r.updated_at }
  }

  async create (principal: Principal, name: string, value: string, description = ''): Promise<SecretRecord> {
    this.key()
    if (await this.store.getNamed<SecretRecord>(KIND, principal.name, name)) throw new AppError(409, 'secret_exists', `This key has a secret named ${name} already (rotate it with PUT)`)
    if ((await this.store.listNamed<SecretRecord>(KIND, principal.name)).length >= this.maxPerKey) {
      throw new AppError(429, 'secret_limit_reached', `A key may keep ${this.maxPerKey} secrets (SECRETS_MAX_PER_KEY)`, 'rate_limit_error')
    }
    const now = new Date().toISOString()
    const record: SecretRecord = { owner: principal.name, name, version: 1, created_at: now, updated_at: now, description, ...this.seal(value) }
    await this.store.saveNamed(KIND, record)
    return record
  }

  /** A new value (and the current server key); the next request that injects it sends the new one. */
  async rotate (principal: Principal, name: string, value: string, description?: string): Promise<SecretRecord> {
    const record = await this.get(principal, name)
    const next: SecretRecord = { ...record, ...this.seal(value), version: record.version + 1, updated_at: new Date().toISOString(), ...(description !== undefined ? { description } : {}) }
    await this.store.saveNamed(KIND, next)
    return next
  }

  async get (principal: Principal, name: string): Promise<SecretRecord> {
    const record = await this.store.getNamed<SecretRecord>(KIND, principal.name, name)
    if (!record) throw new AppError(404, 'secret_not_found', `This key has no secret named ${name}`)
    return record
  }

  async list (principal: Principal): Promise<SecretRecord[]> {
    return (await this.store.listNamed<SecretRecord>(KIND, principal.name)).sort((a, b) => a.name.localeCompare(b.name))
  }

  async delete (principal: Principal, name: string): Promise<void> {
    if (!await this.store.deleteNamed(KIND, principal.name, name)) throw new AppError(404, 'secret_not_found', `This key has no secret named ${name}`)
  }

  /** The names a template uses, each checked to exist for the owner (400 naming one that does not). */
  async check (owner: string, templates: string[], field: string): Promise<void> {
    for (const template of templates) {
      for (const [, name] of template.matchAll(PLACEHOLDER)) {
        if (!await this.store.getNamed<SecretRecord>(KIND, owner, name!)) throw new AppError(400, 'unknown_secret', `${field}: this key has no secret named ${name} (POST /v1/secrets)`)
      }
    }
  }

  /**
   * Templates with their secrets filled in, each secret read once, now (the egress proxy's only way to a value);
   * `missing` names one that is gone.
   */
  async fill (owner: string, templates: string[]): Promise<{ texts: string[], missing: string | null }> {
    let missing: string | null = null
    const names = new Set(templates.flatMap(t => [...t.matchAll(PLACEHOLDER)].map(m => m[1]!)))
    const values = new Map<string, string>()
    await Promise.all([...names].map(async (name) => {
      const record = await this.store.getNamed<SecretRecord>(KIND, owner, name)
      if (record) values.set(name, this.open(record))
      else missing ??= name
    }))
    return { texts: templates.map(t => t.replace(PLACEHOLDER, (whole, name: string) => values.get(name) ?? whole)), missing }
  }
}
