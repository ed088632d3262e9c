import { EventEmitter } from 'node:events'
import Value from 'typebox/value'
import { Type, type Static } from 'typebox'
import type { Redis } from 'ioredis'
import { AppError, DependencyError } from './errors.js'
import type { Bus } from './bus.js'
import type { ModelRegistry } from './llm/registry.js'

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

  /** `initial`: the configuration's values, which a reset returns to. */
  constructor (readonly initial: Settings, private readonly maxExecutionTimeoutMs: number) {
    super()
    this.current = { ...initial }
  }

  get (): Settings { return { ...this.current } }

  /** Validates the whole patch first (a 400 naming the field), then applies it and emits `change`. */
  update (patch: Partial<Settings>): Settings {
    // Only the known fields: a stored or broadcast change from elsewhere cannot add others to the live settings.
    const known = Object.fromEntries(Object.entries(patch).filter(([k]) => k in SettingsSchema.properties))
    const next = { ...this.current, ...known } as Settings
    const [error] = Value.Errors(SettingsSchema, next)
    if (error) {
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

// One object with every field it takes, so that an unknown field is a 400 (never stored and broadcast).
export const SettingsChangeSchema = Type.Object({
  ...SettingsPatchSchema.properties,
  default_model: Type.Optional(Type.String({ maxLength: 128 })),
  reload_models: Type.Optional(Type.Boolean({ description: 're-read MODELS_FILE' })),
  reset: Type.Optional(Type.Boolean({ description: 'back to the configuration\'s values (applied before the rest of the change)' }))
}, { additionalProperties: false })
export type SettingsChange = Static<typeof SettingsChangeSchema>

/**
 * Changes to the settings, applied in this process and, with Redis, kept there (a hash of the changed fields,
 * so a restarted process starts with them) and announced on the bus, so every process applies them.
 */
export class SettingsChanges {
  private static readonly KEY = 'settings'

  constructor (
    private readonly live: LiveSettings,
    /** The registry (a function: it is made after the settings). */
    private readonly models: () => ModelRegistry,
    private readonly shared: { redis: Redis, bus: Bus } | null,
    private readonly log: { warn: (o: object, m: string) => void }
  ) {}

  /** Applies the stored changes and follows the other processes' changes from now on. */
  async start (): Promise<void> {
    if (!this.shared) return
    const { redis, bus } = this.shared
    bus.on('settings', (change: SettingsChange, from: string) => {
      if (from === bus.id) return
      try {
        this.apply(change)
      } catch (err) {
        this.log.warn({ err: (err as Error).message }, 'a settings change from another server process does not apply here')
      }
    })
    const stored = await redis.hgetall(SettingsChanges.KEY).catch((err: Error) => {
      this.log.warn({ err: err.message }, 'stored settings could not be read; using the configuration\'s')
      return {}
    })
    const change = Object.fromEntries(Object.entries(stored).map(([k, v]) => [k, JSON.parse(v)])) as SettingsChange
    try {
      if (Object.keys(change).length) this.apply(change)
    } catch (err) {
      this.log.warn({ err: (err as Error).message, stored: change }, 'stored settings do not apply; using the configuration\'s')
    }
  }

  /**
   * Validates and applies `change` here (a 400 naming what is wrong, with nothing changed), then shares it; when
   * Redis cannot keep it, the change is undone here too (a 503), so that no process differs from the others.
   */
  async change (change: SettingsChange): Promise<void> {
    const before = { settings: this.live.get(), model: this.models().defaultName }
    this.apply(change)
    if (!this.shared) return
    const { redis, bus } = this.shared
    const { reload_models: _reload, reset, ...kept } = change
    try {
      const tx = redis.multi()
      if (reset) tx.del(SettingsChanges.KEY)
      if (Object.keys(kept).length) tx.hset(SettingsChanges.KEY, Object.fromEntries(Object.entries(kept).map(([k, v]) => [k, JSON.stringify(v)])))
      await tx.exec()
    } catch (err) {
      this.live.update(before.settings)
      if (before.model) this.models().setDefault(before.model)
      throw new DependencyError('redis', `redis settings failed: ${(err as Error).message}`, { cause: err })
    }
    await bus.publish('settings', change)
  }

  private apply (change: SettingsChange): void {
    const { reload_models: reload, default_model: model, reset, ...patch } = change
    const models = this.models()
    if (reload) {
      try {
        models.load()
      } catch (err) {
        throw new AppError(400, 'invalid_models_file', (err as Error).message)
      }
    }
    if (model !== undefined) models.get(model) // a 400 listing the known models, before anything changes
    this.live.update(reset ? { ...this.live.initial, ...patch } : patch)
    if (reset) models.resetDefault()
    if (model !== undefined) models.setDefault(model)
  }
}
