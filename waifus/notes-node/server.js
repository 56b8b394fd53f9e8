// notes-node: a plain Node.js app, standard library only, with no waifus
// code in it. `waifu-run` makes it a waifu:
//
//   waifu-run --health /healthz -- node server.js
//
// It listens on PORT, answers GET /healthz with 200 once it can serve, and
// keeps its notes in NOTES_FILE (one line per note: its key and its length),
// a file every instance on the machine shares. It does nothing on SIGTERM:
// waifu-run sends that only once the orchestrator has nothing in flight to it.
//
//   GET  /        "{WAIFU_VERSION} notes from node"
//   POST /notes   stores a note; its key is the Idempotency-Key or x-key
//                 header if there is one, else a random one; answers the key
//   GET  /notes   every stored key, one per line
//   GET  /slow?ms=N  answers after N ms (at most 10 s), like a slow report

'use strict';

const fs = require('node:fs');
const http = require('node:http');
const crypto = require('node:crypto');

const port = Number(process.env.PORT || 8080);
const version = process.env.WAIFU_VERSION || 'dev';
const file = process.env.NOTES_FILE || 'notes.log';

const server = http.createServer((req, res) => {
  const answer = (status, body) => {
    res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8' });
    res.end(body);
  };
  const path = req.url.split('?')[0];
  if (req.method === 'GET' && path === '/healthz') {
    return answer(200, 'ok\n');
  }
  if (req.method === 'GET' && path === '/') {
    return answer(200, `${version} notes from node\n`);
  }
  if (req.method === 'GET' && path === '/slow') {
    const ms = Math.min(Number(new URL(req.url, 'http://x').searchParams.get('ms')) || 1000, 10000);
    setTimeout(() => answer(200, `slept ${ms}\n`), ms);
    return undefined;
  }
  if (req.method === 'GET' && path === '/notes') {
    let text = '';
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (e) {
      if (e.code !== 'ENOENT') return answer(500, `cannot read notes: ${e.message}\n`);
    }
    return answer(200, text.split('\n').filter(Boolean).map((l) => l.split('\t')[0]).join('\n') + '\n');
  }
  if (req.method === 'POST' && path === '/notes') {
    let length = 0;
    req.on('data', (chunk) => { length += chunk.length; });
    req.on('end', () => {
      const key = req.headers['idempotency-key'] || req.headers['x-key'] || crypto.randomUUID();
      // One write with O_APPEND: a line never interleaves with another's.
      fs.appendFile(file, `${String(key).replace(/\s/g, '_')}\t${length}\n`, (e) => {
        if (e) return answer(500, `cannot store the note: ${e.message}\n`);
        answer(200, `${key}\n`);
      });
    });
    return undefined;
  }
  return answer(404, 'not found\n');
});

server.keepAliveTimeout = 65000;
server.listen(port, () => console.log(`notes-node ${version} listening on ${port}`));
