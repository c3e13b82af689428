// An ordinary application's use of Redis, through node-redis or ioredis.
//
// Run against a server; prints one JSON line per step (the step's name and
// what the client returned, made comparable). benches/client_compat.sh
// runs it against kv-server and a real redis-server and compares.
//
//     node app.js HOST PORT node-redis|ioredis [RESP 2|3]

const [host, portText, lib, respText] = process.argv.slice(2);
const port = Number(portText);
const resp = Number(respText || 2);

function show(v) {
  if (Buffer.isBuffer(v)) return v.toString();
  if (Array.isArray(v)) return v.map(show);
  if (v instanceof Error) return { error: 'ReplyError' };
  if (v === undefined) return null;
  return v;
}

// ioredis takes its batches' command names as method names.
const lower = (cmds) => cmds.map(([name, ...args]) => [name.toLowerCase(), ...args]);

async function connect() {
  if (lib === 'ioredis') {
    const Redis = require('ioredis');
    const r = new Redis({ host, port, lazyConnect: true, maxRetriesPerRequest: 1 });
    await r.connect();
    return {
      r,
      call: (...args) => r.call(...args),
      multi: (cmds) => r.multi(lower(cmds)).exec().then((rs) => rs.map(([err, v]) => (err ? { error: 'ReplyError' } : v))),
      pipeline: (cmds) => r.pipeline(lower(cmds)).exec().then((rs) => rs.map(([err, v]) => (err ? { error: 'ReplyError' } : v))),
      close: () => r.quit(),
    };
  }
  const { createClient } = require('redis');
  const r = createClient({ socket: { host, port, reconnectStrategy: false }, RESP: resp });
  r.on('error', () => {});
  await r.connect();
  return {
    r,
    call: (...args) => r.sendCommand(args.map(String)),
    multi: (cmds) => {
      const m = r.multi();
      for (const c of cmds) m.addCommand(c.map(String));
      return m.exec();
    },
    pipeline: (cmds) => {
      const m = r.multi();
      for (const c of cmds) m.addCommand(c.map(String));
      return m.execAsPipeline();
    },
    close: () => r.quit(),
  };
}

const STEPS = [
  ['flushdb', ['FLUSHDB']],
  ['ping', ['PING']],
  ['set', ['SET', 'app:user:1', 'ada']],
  ['get', ['GET', 'app:user:1']],
  ['get missing', ['GET', 'app:nope']],
  ['set nx existing', ['SET', 'app:user:1', 'x', 'NX']],
  ['set ex', ['SET', 'app:session', 'tok', 'EX', 100]],
  ['ttl', ['TTL', 'app:session'], (v) => v > 90],
  ['set get', ['SET', 'app:user:1', 'grace', 'GET']],
  ['expire', ['EXPIRE', 'app:user:1', 1000]],
  ['persist', ['PERSIST', 'app:user:1']],
  ['incr', ['INCR', 'app:hits']],
  ['incrby', ['INCRBY', 'app:hits', 10]],
  ['incrbyfloat', ['INCRBYFLOAT', 'app:ratio', '0.5']],
  ['incr not a number', ['INCR', 'app:user:1']],
  ['mset', ['MSET', 'app:a', '1', 'app:b', '2']],
  ['mget', ['MGET', 'app:a', 'app:b', 'app:nope']],
  ['exists', ['EXISTS', 'app:a', 'app:b', 'app:nope']],
  ['append', ['APPEND', 'app:a', '23']],
  ['getdel', ['GETDEL', 'app:b']],
  ['type', ['TYPE', 'app:a']],
  ['rename', ['RENAME', 'app:a', 'app:c']],
  ['keys', ['KEYS', 'app:*'], (v) => (Array.isArray(v) ? [...v].sort() : v)],
  ['dbsize', ['DBSIZE']],
  ['del', ['DEL', 'app:c', 'app:nope']],
  ['client setname', ['CLIENT', 'SETNAME', 'app-worker']],
  ['client getname', ['CLIENT', 'GETNAME']],
  ['unsupported type', ['LPUSH', 'app:list', 'x']],
];

async function main() {
  const c = await connect();
  const out = [];
  for (const [name, cmd, norm] of STEPS) {
    let v;
    try {
      v = show(await c.call(...cmd));
    } catch (e) {
      v = { error: 'ReplyError' };
    }
    out.push([name, norm && !(v && v.error) ? norm(v) : v]);
  }
  for (const [name, f] of [
    ['pipeline', () => c.pipeline([['SET', 'app:p1', '1'], ['INCR', 'app:p2'], ['GET', 'app:p1']])],
    ['transaction', () => c.multi([['SET', 'app:t1', '1'], ['INCR', 'app:t1'], ['GET', 'app:t1']])],
  ]) {
    let v;
    try {
      v = show(await f());
    } catch (e) {
      v = { error: 'ReplyError' };
    }
    out.push([name, v]);
  }
  await c.close();
  for (const [step, result] of out) console.log(JSON.stringify({ result, step }));
}

main().catch((e) => {
  console.error(`connect or run failed: ${e && e.message}`);
  process.exit(1);
});
