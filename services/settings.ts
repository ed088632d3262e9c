import { EventEmitter } from 'node:events'
import Value from 'typebox/value'
import { Type, type Static } from 'typebox'
import { AppError } from './errors.js'

export const SettingsSchema = Type.Object({
  default_model: Type.Union([Type.String(), Type.Null()]),
  auto_run: Type.Boolean(),
  execution_timeout_ms: Type.Integer({ minimum: 100 }),
  pool_size: Type.Integer({ minimum: 0, maximum: 50 }),
  rate_limit_per_minute: Type.Integer({ minimum: 1 }),
  session_rate_limit_per_minute: Type.Integer({ minimum: 1 })
})
export type Settings = Static<typeof SettingsSchema>
export const SettingsPatchSchema = Type.Partial(Type.Omit(SettingsSchema, ['default_model']))

/** Server-wide defaults that an admin may change while the server runs; consumers read them or listen for `change`. */
export class LiveSettings extends EventEmitter {
  private current: Settings

  constructor (initial: Settings, private readonly maxExecutionTimeoutMs: number) {
    super()
    this.current = { ...initial }
  }

  get (): Settings { return { ...this.current } }

  /** Validates the whole patch first (a 400 naming the field), then applies it and emits `change`. */
  update (patch: Partial<Settings>): Settings {
    const next = { ...this.current, ...patch }
    for (const error of Value.Errors(SettingsSchema, next)) {
      throw new AppError(400, 'validation_error', `body/${error.instancePath.slice(1)} ${error.message}`)
    }
    if (next.execution_timeout_ms > this.maxExecutionTimeoutMs) {
      throw new AppError(400, 'validation_error', `body/execution_timeout_ms must be at most ${this.maxExecutionTimeoutMs} (MAX_EXECUTION_TIMEOUT_MS)`)
    }
    this.current = next
    this.emit('change', this.get())
    return this.get()
  }
}
