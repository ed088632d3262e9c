import { createHash, timingSafeEqual } from 'node:crypto'
import type { ApiKeyConfig, Role } from '../schemas/config.js'

export interface Principal { name: string, role: Role }

const digest = (secret: string) => createHash('sha256').update(secret).digest()

/** Holds only SHA-256 digests of the configured keys; several keys may share a name, which is how a key is rotated. */
export class ApiKeyring {
  private readonly entries: Array<{ digest: Buffer, principal: Principal }>

  constructor (keys: ApiKeyConfig[]) {
    this.entries = keys.map(k => ({ digest: digest(k.secret), principal: { name: k.name, role: k.role } }))
  }

  get size (): number { return this.entries.length }

  /** Checks a bearer token against every key (no early exit), comparing digests in constant time. */
  authenticate (token: string | undefined): Principal | null {
    if (!token) return null
    const presented = digest(token)
    let found: Principal | null = null
    for (const entry of this.entries) {
      if (timingSafeEqual(entry.digest, presented)) found = entry.principal
    }
    return found
  }
}

export function bearerToken (header: string | undefined): string | undefined {
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '')
  return match?.[1]
}

/** Owners see their own resources; admins see every key's. */
export function canAccess (principal: Principal, owner: string): boolean {
  return principal.role === 'admin' || principal.name === owner
}
