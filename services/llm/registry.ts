import { readFileSync, existsSync } from 'node:fs'
import { parse as parseYaml } from 'yaml'
import Value from 'typebox/value'
import { ModelsFileSchema, type ModelEntry, type ModelsFile } from '../../schemas/models.js'
import { ConfigError } from '../config.js'
import { AppError } from '../errors.js'
import { OpenAIProvider } from './openai.js'
import { AnthropicProvider } from './anthropic.js'
import { LlmError, type LlmEvent, type LlmProvider, type StreamRequest } from './types.js'

export type RegistryEvent = LlmEvent | { type: 'fallback', from: string, to: string, reason: string }

function substitute (value: unknown, env: Record<string, string | undefined>, where: string): unknown {
  if (typeof value === 'string') {
    return value.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (_, name: string) => {
      const found = env[name]
      if (found === undefined || found === '') throw new ConfigError(`${where}: \${${name}} is not set in the environment`)
      return found
    })
  }
  if (Array.isArray(value)) return value.map((v, i) => substitute(v, env, where || `[${i}]`))
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, substitute(v, env, where)]))
  }
  return value
}

/** Reads and validates a models file; every error names the file and the entry. */
export function parseModelsFile (text: string, file: string, env: Record<string, string | undefined>): ModelsFile {
  let raw: { models?: unknown[] } & Record<string, unknown>
  try {
    raw = (parseYaml(text) ?? {}) as typeof raw
  } catch (err) {
    throw new ConfigError(`${file}: not valid YAML: ${(err as Error).message.split('\n')[0]}`)
  }
  const entries = Array.isArray(raw.models) ? raw.models : []
  const named = (i: number) => `${file}: models[${i}]${(entries[i] as { name?: string })?.name ? ` (${(entries[i] as { name: string }).name})` : ''}`
  const resolved = { ...raw, models: entries.map((e, i) => substitute(e, env, named(i))) }
  const [error] = Value.Errors(ModelsFileSchema, resolved)
  if (error) {
    const m = /^\/models\/(\d+)(?:\/(.*))?$/.exec(error.instancePath)
    const where = m ? `${named(Number(m[1]))}${m[2] ? ` ${m[2]}` : ''}` : `${file}${error.instancePath ? ` ${error.instancePath.slice(1)}` : ''}`
    const detail = error.keyword === 'enum' ? 'must be one of openai, anthropic' : error.message
    throw new ConfigError(`${where}: ${detail}`)
  }
  const models = resolved as ModelsFile
  const names = new Set<string>()
  models.models.forEach((entry, i) => {
    if (names.has(entry.name)) throw new ConfigError(`${named(i)}: the name is used twice`)
    names.add(entry.name)
    if (!entry.api_key && (entry.provider === 'anthropic' || !entry.base_url)) {
      throw new ConfigError(`${named(i)}: api_key is missing (a ${entry.provider} model without base_url needs one)`)
    }
  })
  models.models.forEach((entry, i) => {
    for (const next of entry.fallback ?? []) if (!names.has(next)) throw new ConfigError(`${named(i)}: fallback "${next}" is not a configured model`)
  })
  if (models.default && !names.has(models.default)) throw new ConfigError(`${file}: default "${models.default}" is not a configured model`)
  return models
}

/** The configured models, their providers, and the fallback chain; reloadable without a restart. */
export class ModelRegistry {
  private models: ModelEntry[] = []
  private providers = new Map<string, LlmProvider>()
  private fileDefault: string | undefined
  private envDefault: string | undefined

  constructor (private readonly file: string, private readonly env: Record<string, string | undefined>, private readonly configDefault?: string) {
    this.envDefault = configDefault
  }

  /** Loads the file (a missing file means no models); throws ConfigError and keeps the old models on a bad one. */
  load (): number {
    const parsed = existsSync(this.file) ? parseModelsFile(readFileSync(this.file, 'utf8'), this.file, this.env) : { models: [] }
    if (this.envDefault && !parsed.models.some(m => m.name === this.envDefault)) {
      if (parsed.models.length) throw new ConfigError(`DEFAULT_MODEL: "${this.envDefault}" is not in ${this.file}`)
    }
    this.models = parsed.models
    this.fileDefault = parsed.default
    this.providers = new Map(parsed.models.map(m => [m.name, m.provider === 'anthropic' ? new AnthropicProvider(m) : new OpenAIProvider(m)]))
    return this.models.length
  }

  list (): ModelEntry[] { return this.models }

  /** Makes another configured model the default (a 400 listing the known ones otherwise). */
  setDefault (name: string): void {
    this.envDefault = this.get(name).name
  }

  /** Back to DEFAULT_MODEL, or the file's default. */
  resetDefault (): void {
    this.envDefault = this.configDefault
  }

  get defaultName (): string | null {
    return this.envDefault ?? this.fileDefault ?? this.models[0]?.name ?? null
  }

  /** The named model (or the default); unknown names are a 400 that lists the known ones. */
  get (name?: string): ModelEntry {
    const wanted = name ?? this.defaultName
    const entry = this.models.find(m => m.name === wanted)
    if (entry) return entry
    const known = this.models.map(m => m.name)
    if (!known.length) throw new AppError(400, 'no_models_configured', `No models are configured: add them to ${this.file}`)
    throw new AppError(400, 'model_not_found', `Unknown model "${wanted}"; known models: ${known.join(', ')}`)
  }

  /**
   * Streams from the model; when it fails with a retryable error before producing anything, tries its
   * fallbacks in order, reporting each switch as a `fallback` event.
   */
  async * stream (name: string, request: Omit<StreamRequest, 'model'>): AsyncIterable<RegistryEvent> {
    const tried = new Set<string>()
    let current = this.get(name)
    for (;;) {
      tried.add(current.name)
      let produced = false
      try {
        for await (const event of this.providers.get(current.name)!.stream({ ...request, model: current })) {
          produced = true
          yield event
        }
        return
      } catch (err) {
        const e = err as LlmError
        const next = (current.fallback ?? []).find(n => !tried.has(n))
        if (produced || !(e instanceof LlmError) || !e.retryable || !next || request.signal.aborted) throw err
        yield { type: 'fallback', from: current.name, to: next, reason: e.message }
        current = this.get(next)
      }
    }
  }
}
