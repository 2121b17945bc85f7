// A presence-aware chat on ssekify alone, with Node's standard library: the
// browser holds one EventSource to ssekify; this app joins users to rooms
// live (no reconnect), relays chat lines as room messages, and keeps an
// online list from ssekify's lifecycle events, announced into each room.
//
//   node examples/chat/server.mjs        # env: SSEKIFY_API (127.0.0.1:8081),
//                                        # SSEKIFY_PUBLIC (127.0.0.1:8080),
//                                        # SSEKIFY_API_KEY, PORT (3000),
//                                        # SSEKIFY_EVENTS (SSEKIFY_API)
//
// Several ssekify instances over Redis: joins, messages and presence through
// any one instance's api reach and count every instance; the lifecycle
// events stream is per instance, so SSEKIFY_EVENTS lists every instance's api
// (comma-separated) for the app to hear every disconnect.
//
// Routes (JSON in, JSON out):
//   GET  /config                     -> { sse }: where the browser subscribes (?userId=)
//   POST /rooms/:room/join  {user}   -> the user's open connections join the room now
//   POST /rooms/:room/leave {user}
//   POST /rooms/:room/say   {user, text} -> a `chat` message to the room
//   GET  /rooms/:room/online         -> { users: [...] } from ssekify's room presence
// Every join, leave and disconnect is followed by a `presence` message to the
// room with its current user list. (No auth here: a real app puts its own
// login in front and mints a JWT or signed URL, see examples/node/credentials.mjs.)

import http from 'node:http';

/** `host:port` or a full URL, as the other examples take them. */
const base = (value, fallback) => {
  const text = value || fallback;
  return /^https?:\/\//.test(text) ? text.replace(/\/$/, '') : `http://${text}`;
};
const API = base(process.env.SSEKIFY_API, '127.0.0.1:8081');
const PUBLIC = base(process.env.SSEKIFY_PUBLIC, '127.0.0.1:8080');
const KEY = process.env.SSEKIFY_API_KEY;
const EVENTS = (process.env.SSEKIFY_EVENTS || API).split(',').map((api) => base(api));
const PORT = Number(process.env.PORT || 3000);

/** One call to ssekify's api; resolves the JSON answer, rejects on anything but 200. */
async function ssekify(method, path, body) {
  const headers = { 'Content-Type': 'application/json' };
  if (KEY) headers.Authorization = `Bearer ${KEY}`;
  const res = await fetch(API + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const answer = await res.json();
  if (res.status !== 200) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(answer)}`);
  return answer;
}

const enc = encodeURIComponent;

/** Tells a room who is in it now (ssekify's room presence). */
async function announce(room) {
  const presence = await ssekify('GET', `/v1/rooms/${enc(room)}/presence?list=users`);
  await ssekify('POST', `/v1/rooms/${enc(room)}/events?event=presence`, { room, users: presence.userIds });
  return presence.userIds;
}

/** Rooms each user was joined to by this app, to announce their leaving. */
const roomsOf = new Map();

/**
 * Follows one instance's lifecycle events: a user whose last connection
 * closed (on any instance: presence counts them all) leaves the online lists
 * of the rooms this app put them in.
 */
async function followEvents(api) {
  const headers = KEY ? { Authorization: `Bearer ${KEY}` } : {};
  for (;;) {
    try {
      const res = await fetch(`${api}/v1/events?types=disconnect`, { headers });
      const decoder = new TextDecoder();
      let buffer = '';
      for await (const chunk of res.body) {
        buffer += decoder.decode(chunk, { stream: true });
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = frame.split('\n').find((line) => line.startsWith('data: '));
          if (data) await onDisconnect(JSON.parse(data.slice(6)));
        }
      }
    } catch (err) {
      console.error(`events stream: ${err.message}; reconnecting`);
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

async function onDisconnect(event) {
  if (!event.user || !roomsOf.has(event.user)) return;
  const online = await ssekify('GET', `/v1/users/${enc(event.user)}/presence`);
  if (online.online) return;
  for (const room of roomsOf.get(event.user)) await announce(room);
  roomsOf.delete(event.user);
}

async function readJson(req) {
  let text = '';
  for await (const chunk of req) text += chunk;
  return text ? JSON.parse(text) : {};
}

const server = http.createServer(async (req, res) => {
  const reply = (status, value) => {
    res.writeHead(status, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify(value));
  };
  try {
    const url = new URL(req.url, 'http://app');
    const route = url.pathname.match(/^\/rooms\/([^/]+)\/(join|leave|say|online)$/);
    if (req.method === 'GET' && url.pathname === '/config') return reply(200, { sse: `${PUBLIC}/sse` });
    if (!route) return reply(404, { error: 'not_found' });
    const [, roomPart, action] = route;
    const room = decodeURIComponent(roomPart);
    if (req.method === 'GET' && action === 'online') return reply(200, { users: await announce(room) });
    if (req.method !== 'POST') return reply(405, { error: 'method_not_allowed' });
    const { user, text } = await readJson(req);
    if (typeof user !== 'string' || !user) return reply(400, { error: 'user required' });
    if (action === 'join' || action === 'leave') {
      const answer = await ssekify(action === 'join' ? 'PUT' : 'DELETE', `/v1/users/${enc(user)}/rooms/${enc(room)}`);
      const rooms = roomsOf.get(user) || new Set();
      if (action === 'join') rooms.add(room); else rooms.delete(room);
      roomsOf.set(user, rooms);
      return reply(200, { ...answer, users: await announce(room) });
    }
    if (typeof text !== 'string' || !text) return reply(400, { error: 'text required' });
    const sent = await ssekify('POST', `/v1/rooms/${enc(room)}/events?event=chat`, { user, text });
    return reply(200, { delivered: sent.delivered });
  } catch (err) {
    return reply(502, { error: 'ssekify', message: err.message });
  }
});

server.listen(PORT, '127.0.0.1', () => {
  console.log(`chat listening on http://127.0.0.1:${server.address().port}`);
  for (const api of EVENTS) followEvents(api);
});
