// A Node.js HTTPS client configured as an app would be, correctly or with one known mistake, for tlsgate's
// ground-truth matrix (tests/live/test_probe_matrix_stacks.py). Node's own modules only.
//
// Usage: node client.js CONFIG PROXY CA_PEM URL...
//
//   CONFIG  default        `ca:` the test CA, everything else as Node ships it
//           no-reject      `rejectUnauthorized: false` (and the test CA)
//           no-identity    `checkServerIdentity: () => undefined` (and the test CA): the chain is still verified
//   PROXY   http://host:port: a CONNECT tunnel through it (http.request({method: 'CONNECT'})), then TLS
//           over that socket (tls.connect({socket})), then https.request on the TLS socket, as proxy
//           agents do; - connects directly
//
// One line per URL, in order: "ACCEPTED <status> <x-tlsgate-check header>" when the client sent its
// request and read an answer, "REFUSED <error>" when it did not. Every URL gets a connection of its own.
'use strict';

const fs = require('fs');
const http = require('http');
const https = require('https');
const net = require('net');
const tls = require('tls');

function tlsOptions(config, ca) {
  switch (config) {
    case 'default':
      return { ca };
    case 'no-reject':
      return { ca, rejectUnauthorized: false };
    case 'no-identity':
      return { ca, checkServerIdentity: () => undefined };
    default:
      throw new Error(`unknown config ${config}`);
  }
}

function tunnel(proxy, host, port) {
  return new Promise((resolve, reject) => {
    const through = new URL(proxy);
    const request = http.request({
      host: through.hostname,
      port: through.port,
      method: 'CONNECT',
      path: `${host.includes(':') ? `[${host}]` : host}:${port}`,
      headers: { host: `${host}:${port}` },
      timeout: 15000,
    });
    request.on('connect', (response, socket) => {
      if (response.statusCode !== 200) {
        socket.destroy();
        reject(new Error(`proxy answered CONNECT with ${response.statusCode}`));
      } else {
        resolve(socket);
      }
    });
    request.on('timeout', () => request.destroy(new Error('proxy timed out')));
    request.on('error', reject);
    request.end();
  });
}

async function get(config, proxy, ca, target) {
  const url = new URL(target);
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const port = Number(url.port || 443);
  const options = tlsOptions(config, ca);
  // SNI is a host name only (RFC 6066): for an IP address, Node checks the address against the certificate.
  const servername = net.isIP(host) ? undefined : host;
  const socket = proxy === '-' ? undefined : await tunnel(proxy, host, port);
  return new Promise((resolve) => {
    let done = false;
    const finish = (line) => {
      if (!done) {
        done = true;
        resolve(line);
      }
    };
    const request = https.request({
      host,
      port,
      path: url.pathname + url.search,
      method: 'GET',
      headers: { 'user-agent': 'node-stack-test', connection: 'close' },
      timeout: 15000,
      // No agent: this connection only, and no TLS session cached for the next one (an agent resumes them).
      createConnection: () => tls.connect({ ...options, host, port, servername, socket }),
    });
    request.on('response', (response) => {
      response.resume();
      response.on('end', () => finish(`ACCEPTED ${response.statusCode} ${response.headers['x-tlsgate-check'] || '-'}`));
      response.on('error', (error) => finish(`ACCEPTED ${response.statusCode} ${response.headers['x-tlsgate-check'] || '-'}`));
    });
    request.on('timeout', () => request.destroy(new Error('timed out')));
    request.on('error', (error) => finish(`REFUSED ${(error.code ? `${error.code}: ` : '') + error.message}`.replace(/\s+/g, ' ')));
    request.end();
  });
}

async function main() {
  const [config, proxy, caFile, ...urls] = process.argv.slice(2);
  if (!urls.length) {
    process.stderr.write('usage: node client.js CONFIG PROXY CA_PEM URL...\n');
    process.exit(2);
  }
  const ca = fs.readFileSync(caFile);
  tlsOptions(config, ca);
  for (const target of urls) {
    let line;
    try {
      line = await get(config, proxy, ca, target);
    } catch (error) {
      line = `ERROR ${error.message}`.replace(/\s+/g, ' '); // the tunnel, not TLS: the test fails on it
    }
    process.stdout.write(`${line}\n`);
  }
}

main();
