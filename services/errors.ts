/** Errors that reach clients: each carries its HTTP status and the documented `type` and `code`. */
export class AppError extends Error {
  constructor (
    readonly statusCode: number,
    readonly code: string,
    message: string,
    readonly type: string = typeForStatus(statusCode),
    readonly extra: Record<string, unknown> = {}
  ) {
    super(message)
    this.name = 'AppError'
  }
}

function typeForStatus (status: number): string {
  if (status === 400 || status === 413) return 'invalid_request_error'
  if (status === 401) return 'auth_error'
  if (status === 403) return 'permission_error'
  if (status === 404) return 'not_found_error'
  if (status === 409) return 'conflict_error'
  if (status === 429) return 'rate_limit_error'
  if (status === 503) return 'unavailable_error'
  return 'server_error'
}

export const SessionNotFound = () => new AppError(404, 'session_not_found', 'Session not found', 'session_error')
/** SANDBOX_ENABLED=false: whichever protocol asks for a sandbox gets this, from the one place that makes sandboxes. */
export const SandboxesDisabled = () => new AppError(503, 'sandboxes_disabled', 'Sandboxes are disabled on this server (SANDBOX_ENABLED=false)')
export const SandboxNotFound = () => new AppError(404, 'sandbox_not_found', 'Sandbox not found', 'sandbox_error')
/** Overload or a host-wide limit: a documented 503 whose Retry-After says when to come back. */
export const CapacityExhausted = (message: string, retryAfterS: number) =>
  new AppError(503, 'capacity_exhausted', message, 'unavailable_error', { retry_after: Math.max(1, Math.ceil(retryAfterS)) })

export const ServiceUnavailable = (what: string, detail?: string) =>
  new AppError(503, `${what}_unavailable`, `${what[0].toUpperCase()}${what.slice(1)} is unavailable${detail ? `: ${detail}` : ''}`)

/** A dependency outage (Redis, Docker) as opposed to a bug: these become 503s whose message names the dependency. */
export class DependencyError extends Error {
  constructor (readonly dependency: 'redis' | 'docker', message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'DependencyError'
  }

  /** The documented 503: it names what is down (and, for Docker, what to do), never internals. */
  toAppError (): AppError {
    return this.dependency === 'redis'
      ? new AppError(503, 'redis_unavailable', 'The session store (Redis) is unavailable; try again shortly')
      : new AppError(503, 'docker_unavailable', `Sandboxes are unavailable: ${this.message.replace(/^docker \w+ failed: /, '')}`)
  }
}
