// Reads one resource with the official TypeScript client 2.x pinned to MCP 2026-07-28, as an
// application would: `node read_resource.mjs <url> <api key> <uri>`; prints the result as JSON.
import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';

const [url, key, uri] = process.argv.slice(2);
const client = new Client(
  { name: 'waygate-tests', version: '1.0.0' },
  { versionNegotiation: { mode: { pin: '2026-07-28' } } }
);
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { 'X-API-Key': key } }
});
await client.connect(transport);
const result = await client.readResource({ uri });
console.log(JSON.stringify({ protocolVersion: transport.protocolVersion ?? null, result }));
await client.close();
