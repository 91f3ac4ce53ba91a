// Test doubles for the primitives' injectable dependencies: a manual clock, a scriptable
// WebSocket and a recording REST API. No real time passes and no network is touched.

/** Timers that fire only when the test advances time. */
export class FakeClock {
  constructor(start = Date.UTC(2026, 4, 4, 12, 0, 0)) {
    this._now = start;
    this._timers = new Map();
    this._seq = 0;
    this.now = () => this._now;
    this.setTimeout = (fn, ms) => {
      const id = ++this._seq;
      this._timers.set(id, { at: this._now + Math.max(0, ms ?? 0), fn, seq: id });
      return id;
    };
    this.clearTimeout = (id) => { this._timers.delete(id); };
  }

  /** Runs every timer due within `ms`, in due order, moving the clock to each one. */
  advance(ms) {
    const end = this._now + ms;
    for (;;) {
      let next = null;
      for (const [id, t] of this._timers) {
        if (t.at <= end && (!next || t.at < next[1].at || (t.at === next[1].at && t.seq < next[1].seq))) next = [id, t];
      }
      if (!next) break;
      this._timers.delete(next[0]);
      this._now = next[1].at;
      next[1].fn();
    }
    this._now = end;
  }

  /** Delays (from now) of the pending timers, ascending. */
  pending() {
    return [...this._timers.values()].map((t) => t.at - this._now).sort((a, b) => a - b);
  }
}

/** Lets every already-resolved promise chain run to completion. */
export const flush = async (rounds = 3) => {
  for (let i = 0; i < rounds; i += 1) await new Promise((resolve) => setImmediate(resolve));
};

/** A WebSocket class whose instances the test drives from the "server" side. */
export function fakeWebSockets() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.closedWith = null;
      sockets.push(this);
    }

    send(text) {
      if (this.readyState !== 1) throw new Error('InvalidStateError: not open');
      this.sent.push(text);
    }

    close(code, reason) {
      if (this.readyState >= 2) return;
      this.closedWith = { code, reason };
      this.readyState = 2;
    }

    // --- server side
    open() {
      this.readyState = 1;
      this.onopen?.({ type: 'open' });
    }

    frame(value) {
      this.onmessage?.({ data: typeof value === 'string' ? value : JSON.stringify(value) });
    }

    answerId(id) {
      this.frame({ churchId: '', conversationId: '', action: 'socketId', data: id });
    }

    push(action, data, { churchId = 'C1', conversationId = '' } = {}) {
      this.frame({ churchId, conversationId, action, data });
    }

    drop(code = 1006) {
      this.readyState = 3;
      this.onclose?.({ code });
    }
  }
  return {
    FakeWebSocket,
    sockets,
    get last() { return sockets[sockets.length - 1]; },
  };
}

/** Opens the newest fake socket and completes its handshake with `id`. */
export function handshake(ws, id) {
  ws.open();
  if (!ws.sent.includes('getId')) throw new Error('client did not send getId on open');
  ws.answerId(id);
}

/** Starts `t.socket` (a SocketHelper over `t.ws`'s fakes) and completes its handshake. */
export async function connected(t, id = 'SOCKET00001') {
  const ready = t.socket.init();
  handshake(t.ws.last, id);
  await ready;
}

/**
 * Drops `t.socket`'s connection and completes the handshake of the next one with `id`, then
 * lets `rounds` of microtasks run (what follows a reconnect: the re-joins and their replies).
 */
export async function reconnect(t, id, rounds = 3) {
  t.ws.last.drop();
  t.clock.advance(t.socket.retryAt - t.clock.now());
  handshake(t.ws.last, id);
  await flush(rounds);
}

/**
 * A stand-in for MessagingApi that records every call in `calls` (in order) and answers
 * from overridable handlers.
 */
export function fakeApi(overrides = {}) {
  const calls = [];
  const record = (name, fallback) => (...args) => {
    calls.push({ name, args });
    const handler = overrides[name] ?? fallback;
    return Promise.resolve().then(() => handler(...args));
  };
  let rowSeq = 0;
  const api = {
    calls,
    callsOf: (name) => calls.filter((c) => c.name === name).map((c) => c.args),
    joinRooms: record('joinRooms', (items) => items.map((item) => ({
      id: `ROW${String(++rowSeq).padStart(8, '0')}`, personId: null, timeJoined: '2026-05-04T12:00:00.000Z', ipAddress: null, ...item,
    }))),
    leaveRoom: record('leaveRoom', () => ({ success: true })),
    setName: record('setName', () => []),
    catchup: record('catchup', () => []),
    sendMessages: record('sendMessages', () => []),
    saveMessages: record('saveMessages', () => []),
    react: record('react', (messageId, emoji) => ({ messageId, emoji, added: true })),
    deleteMessage: record('deleteMessage', () => ({ message: 'Message deleted successfully' })),
    unreadCount: record('unreadCount', () => ({ notificationCount: 0, pmCount: 0 })),
  };
  return api;
}

/** A message as the server stores it (§10.1). */
export function message(id, timeSent, extra = {}) {
  return {
    id, churchId: 'C1', conversationId: 'CONV0000001', personId: null, displayName: 'A',
    timeSent, timeUpdated: null, messageType: 'comment', content: `content of ${id}`, ...extra,
  };
}
