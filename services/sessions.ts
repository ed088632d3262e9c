import { randomBytes } from 'node:crypto'
import type { Store, PageRequest, Page } from './store/types.js'
import type { Principal } from './auth.js'
import { canAccess } from './auth.js'
import { AppError, SessionNotFound } from './errors.js'
import type { Message, Session, SessionPatch } from '../schemas/sessions.js'

export class SessionService {
  constructor (private readonly store: Store) {}

  async create (principal: Principal, input: { title?: string, settings?: Session['settings'], metadata?: Record<string, string> }): Promise<Session> {
    const now = new Date().toISOString()
    const session: Session = {
      id: `ses_${randomBytes(12).toString('base64url')}`,
      object: 'session',
      title: input.title ?? null,
      owner: principal.name,
      created_at: now,
      updated_at: now,
      settings: input.settings ?? {},
      metadata: input.metadata ?? {},
      message_count: 0,
      sandbox_id: null,
      usage: { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 }
    }
    await this.store.saveSession(session)
    return session
  }

  /** The session if it exists and the principal may see it; otherwise SessionNotFound (never another key's data). */
  async get (id: string, principal: Principal): Promise<Session> {
    const session = await this.store.getSession(id)
    if (!session || !canAccess(principal, session.owner)) throw SessionNotFound()
    return session
  }

  /** The session, whoever owns it, or null: for protocols that hold a session id they checked when it was made. */
  find (id: string): Promise<Session | null> {
    return this.store.getSession(id)
  }

  /** Merges `fields` into the session's metadata. */
  async setMetadata (session: Session, fields: Record<string, string>): Promise<void> {
    session.metadata = { ...session.metadata, ...fields }
    session.updated_at = new Date().toISOString()
    await this.store.saveSession(session)
  }

  /** This key's sessions; with `all`, every key's (admin keys only). */
  list (principal: Principal, page: PageRequest, all = false): Promise<Page<Session>> {
    if (all && principal.role !== 'admin') throw new AppError(403, 'admin_required', 'Listing every key\'s sessions needs an admin key')
    return this.store.listSessions(all ? null : principal.name, page)
  }

  async update (id: string, principal: Principal, patch: SessionPatch): Promise<Session> {
    const session = await this.get(id, principal)
    if (patch.title !== undefined) session.title = patch.title
    if (patch.settings) session.settings = { ...session.settings, ...patch.settings }
    if (patch.metadata) session.metadata = { ...session.metadata, ...patch.metadata }
    session.updated_at = new Date().toISOString()
    await this.store.saveSession(session)
    return session
  }

  async messages (id: string, principal: Principal, page: PageRequest): Promise<Page<Message>> {
    await this.get(id, principal)
    return this.store.listMessages(id, page)
  }

  /** Stores messages (stamped with created_at) and bumps the session's count. */
  async append (session: Session, messages: Message[]): Promise<void> {
    const now = new Date().toISOString()
    const stamped = messages.map(m => ({ ...m, created_at: m.created_at ?? now }))
    session.message_count = await this.store.appendMessages(session.id, stamped)
    session.updated_at = now
    await this.store.saveSession(session)
  }
}
