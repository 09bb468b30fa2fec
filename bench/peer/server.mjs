// The peer OAuth server for Latchkey's load comparison: oidc-provider (pinned in
// package.json / package-lock.json; install with `npm ci --prefix bench/peer`) configured for
// the same token scenario Latchkey serves — client_credentials, client_secret_jwt (HS256
// assertion), JWT access tokens signed with PEER_ALG — on loopback, plain HTTP.
//
// One worker per core (node:cluster) so the peer may use the machine as Latchkey does.
// Prints `peer listening on http://127.0.0.1:PORT` once every worker listens.
//
// Environment: PEER_PORT (default: a free port), PEER_WORKERS (default: cores),
// PEER_ALG (ES256 | EdDSA | RS256, default ES256), PEER_CLIENT_ID, PEER_CLIENT_SECRET.
//
// Notes for reading results: oidc-provider's default in-memory adapter keeps its replay
// detection in a 1000-entry LRU per worker (weaker than Latchkey's, and cheaper); JWT access
// tokens are not stored. Neither makes the peer slower.
import cluster from 'node:cluster';
import crypto from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';

import Provider from 'oidc-provider';

const HOST = '127.0.0.1';
const RESOURCE = 'urn:latchkey:bench';
const ALG = process.env.PEER_ALG || 'ES256';
const CLIENT_ID = process.env.PEER_CLIENT_ID || 'bench-client';
const CLIENT_SECRET = process.env.PEER_CLIENT_SECRET
  || 'bench-secret-0123456789abcdefghijklmnopqrstuvwxyz';

function signingJwk(alg) {
  const [type, options] = {
    ES256: ['ec', { namedCurve: 'P-256' }],
    EdDSA: ['ed25519', {}],
    // 3072 bits, as Latchkey's generated RSA keys.
    RS256: ['rsa', { modulusLength: 3072 }],
  }[alg] ?? [];
  if (!type) throw new Error(`PEER_ALG must be ES256, EdDSA or RS256, not ${alg}`);
  const { privateKey } = crypto.generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), alg, use: 'sig', kid: `peer-${alg}` };
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, HOST, () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

if (cluster.isPrimary) {
  const port = Number(process.env.PEER_PORT) || await freePort();
  const workers = Number(process.env.PEER_WORKERS) || os.availableParallelism();
  // One signing key for every worker, so any worker's token verifies with the same JWKS.
  const jwk = JSON.stringify(signingJwk(ALG));
  let listening = 0;
  for (let i = 0; i < workers; i += 1) {
    const w = cluster.fork({ PEER_PORT: String(port), PEER_JWK: jwk });
    w.on('message', (m) => {
      if (m === 'listening' && ++listening === workers) {
        console.log(`peer listening on http://${HOST}:${port}`);
      }
    });
  }
  cluster.on('exit', (w, code, signal) => {
    if (signal !== 'SIGTERM' && signal !== 'SIGINT') {
      console.error(`peer worker ${w.process.pid} exited (${signal ?? code})`);
      process.exit(1);
    }
  });
  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.on(sig, () => {
      for (const w of Object.values(cluster.workers)) w.kill('SIGTERM');
      process.exit(0);
    });
  }
} else {
  const port = Number(process.env.PEER_PORT);
  const issuer = `http://${HOST}:${port}`;
  const provider = new Provider(issuer, {
    clients: [{
      client_id: CLIENT_ID,
      client_secret: CLIENT_SECRET,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_jwt',
      token_endpoint_auth_signing_alg: 'HS256',
      // The provider holds one key, of PEER_ALG; the default (RS256) would need another.
      id_token_signed_response_alg: ALG,
    }],
    clientAuthMethods: ['client_secret_jwt'],
    jwks: { keys: [JSON.parse(process.env.PEER_JWK)] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => RESOURCE,
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({
          scope: 'api',
          audience: RESOURCE,
          accessTokenTTL: 3600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: ALG } },
        }),
      },
    },
  });
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  http.createServer(provider.callback()).listen(port, HOST, () => process.send('listening'));
}
