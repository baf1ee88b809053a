// Drives an Ollama server (the stand-in) through ollama-js, the official JavaScript client,
// and prints one JSON object: what each case returned, or the error it raised.
// Usage: node driver.mjs URL CHAT_MODEL EMBED_MODEL CASE[,CASE...]
// Cases: chat, stream, tools, format, embed, tags, ps, show, missing. One node process runs
// them all, so the Python tests pay node's start-up once per stand-in.
import { Ollama } from 'ollama'

const [url, model, embedModel, caseList] = process.argv.slice(2)
const client = new Ollama({ host: url })
const user = (content) => [{ role: 'user', content }]

const weatherTool = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Current weather of a city',
    parameters: {
      type: 'object',
      required: ['city'],
      properties: { city: { type: 'string', description: 'the city' } },
    },
  },
}

const capitalSchema = {
  type: 'object',
  properties: { capital: { type: 'string' }, population: { type: 'integer' } },
  required: ['capital', 'population'],
}

const options = { temperature: 0, seed: 1, num_predict: 24 }

const cases = {
  chat: async () => client.chat({ model, messages: user('Say hello.'), options }),
  stream: async () => {
    const parts = []
    for await (const part of await client.chat({
      model,
      messages: user('Say hello.'),
      options,
      stream: true,
    })) {
      parts.push(part)
    }
    return parts
  },
  tools: async () =>
    client.chat({
      model,
      messages: user('What is the weather in Tokyo?'),
      tools: [weatherTool],
      options,
    }),
  format: async () =>
    client.chat({
      model,
      messages: user('What is the capital of France? Answer in JSON.'),
      format: capitalSchema,
      options: { temperature: 0, seed: 1 },
    }),
  embed: async () => client.embed({ model: embedModel, input: ['Cats purr.', 'Dogs bark.'] }),
  tags: async () => client.list(),
  ps: async () => client.ps(),
  show: async () => client.show({ model }),
  missing: async () => client.chat({ model: 'no-such-model', messages: user('hi') }),
}

const out = {}
for (const name of caseList.split(',')) {
  try {
    out[name] = { ok: true, value: await cases[name]() }
  } catch (err) {
    out[name] = { ok: false, name: err.name, error: err.error ?? String(err), status_code: err.status_code }
  }
}
process.stdout.write(JSON.stringify(out))
