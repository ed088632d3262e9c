// pino-roll ships no types: its factory, as services/log-files.ts uses it.
declare module 'pino-roll' {
  const roll: (opts: Record<string, unknown>) => Promise<NodeJS.WritableStream>
  export default roll
}
