// Browser client of the messaging service (docs/PROTOCOL.md §2–§10), as a dependency-free
// ES module. Five primitives, each injectable for tests:
//
//   SocketHelper         the one WebSocket per tab: handshake, reconnect, liveness probes
//   SubscriptionManager  reference-counted room membership, re-joined after a reconnect
//   ConversationStore    messages per conversation, merged by id, caught up after a gap
//   PresenceStore        the latest attendance per room, viewers grouped by name
//   NotificationService  unread counters from the per-person `alerts` room
//
// Delivery over the socket is at-most-once (§5.2) unless the socket opts into positions
// (§5.6, `positions=1`, on by default): then every room frame carries a `seq`, a re-join after
// a reconnect names the last one held (`since`) and the server replays what was missed or
// sends one `gap`. Everything below is built so that REST closes any gap that remains
// (re-join first, then catch up), never the other way round.

/** WebSocket.OPEN; not read from the constructor so test doubles need not define it. */
const WS_OPEN = 1;

/** Re-join attempts after a transient REST failure (1 s, 2 s, 4 s apart). */
const REJOIN_RETRIES = 3;

/** Counter for handler ids, so several instances can share one SocketHelper. */
let instanceSeq = 0;
const nextInstanceId = (prefix) => `${prefix}:${++instanceSeq}`;

function defaultClock() {
  return {
    setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
    clearTimeout: (handle) => globalThis.clearTimeout(handle),
    now: () => Date.now(),
  };
}

/** Reports an error without throwing it into the caller: the browser's `reportError` shows it
 *  in the console and fires `window.onerror`; elsewhere it is dropped unless `onError` is set. */
function defaultOnError(error) {
  if (typeof globalThis.reportError === 'function') globalThis.reportError(error);
}

function pageOrigin() {
  return typeof location !== 'undefined' && location.origin && location.origin !== 'null' ? location.origin : null;
}

/** `https://host:port/messaging` for the page that loaded this module. */
export function defaultRestBase() {
  const origin = pageOrigin();
  if (!origin) throw new TypeError('restBase is required outside a browser page');
  return `${origin}/messaging`;
}

/** `ws(s)://host:port/`: the HTTP port upgrades WebSockets on any path (§1, shared mode). */
export function defaultSocketUrl() {
  const origin = pageOrigin();
  if (!origin) throw new TypeError('socketUrl is required outside a browser page');
  return `${origin.replace(/^http/, 'ws')}/`;
}

function abortError(message) {
  const error = new Error(message);
  error.name = 'AbortError';
  return error;
}

function roomKey(churchId, roomId) {
  return `${churchId}\u0000${roomId}`;
}

/** `url` with the `positions=1` query parameter (§5.6), unless it already has a `positions`
 *  parameter. Only the query is touched, so everything else stays byte for byte. */
export function withPositions(url) {
  const hash = url.indexOf('#');
  const base = hash < 0 ? url : url.slice(0, hash);
  const fragment = hash < 0 ? '' : url.slice(hash);
  const query = base.indexOf('?');
  if (query >= 0 && /(?:^|&)positions=/.test(base.slice(query + 1))) return url;
  const separator = query < 0 ? '?' : (query === base.length - 1 || base.endsWith('&') ? '' : '&');
  return `${base}${separator}positions=1${fragment}`;
}

/** `{epoch, seq}` if `value` is a well-formed position (§5.6), else `null`. */
function asPosition(value) {
  if (!value || typeof value.epoch !== 'string' || !Number.isSafeInteger(value.seq) || value.seq < 0) return null;
  return { epoch: value.epoch, seq: value.seq };
}

function samePosition(a, b) {
  return !!a && !!b && a.epoch === b.epoch && a.seq === b.seq;
}

/** Calls every listener, isolating their failures from each other and from the caller. */
function emit(listeners, onError, ...args) {
  for (const fn of [...listeners]) {
    try {
      fn(...args);
    } catch (error) {
      onError(error);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// REST
// ---------------------------------------------------------------------------------------------

/** A REST call that did not return 2xx (or never reached the server: `status` 0). */
export class MessagingApiError extends Error {
  constructor(message, { status, body = null, method, url, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'MessagingApiError';
    this.status = status;
    this.body = body;
    this.method = method;
    this.url = url;
  }
}

const seg = encodeURIComponent;

/**
 * Thin REST client for `/messaging/…`. Every method resolves with the parsed JSON body and
 * rejects with a `MessagingApiError` (HTTP status, server body) on any failure.
 */
export class MessagingApi {
  /**
   * @param {object} [options]
   * @param {string} [options.baseUrl] REST base, default `<page origin>/messaging`
   * @param {typeof fetch} [options.fetch]
   * @param {() => (string|null|undefined|Promise<string|null|undefined>)} [options.getToken]
   */
  constructor({ baseUrl, fetch: fetchImpl, getToken } = {}) {
    this.baseUrl = (baseUrl ?? defaultRestBase()).replace(/\/+$/, '');
    this._fetch = fetchImpl ?? ((...args) => globalThis.fetch(...args));
    this._getToken = getToken ?? (() => null);
  }

  async request(method, path, body) {
    const url = `${this.baseUrl}${path}`;
    const headers = {};
    const token = await this._getToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    const init = { method, headers };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await this._fetch(url, init);
    } catch (cause) {
      throw new MessagingApiError(`${method} ${path}: network error`, { status: 0, method, url, cause });
    }
    const text = await response.text().catch(() => '');
    let parsed = null;
    if (text) {
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = text;
      }
    }
    if (!response.ok) {
      // Two error shapes exist (§9): {"error":"…"} and the framework's {"error":{"message":…}}.
      const detail = typeof parsed?.error === 'string' ? parsed.error : parsed?.error?.message ?? response.statusText;
      throw new MessagingApiError(`${method} ${path}: ${response.status} ${detail}`, {
        status: response.status, body: parsed, method, url,
      });
    }
    return parsed;
  }

  get(path) { return this.request('GET', path); }
  post(path, body) { return this.request('POST', path, body); }
  delete(path) { return this.request('DELETE', path); }

  // --- connections (§10.2)
  joinRooms(items) { return this.post('/connections', items); }
  leaveRoom(churchId, roomId, socketId) {
    return this.delete(`/connections/${seg(churchId)}/${seg(roomId)}/${seg(socketId)}`);
  }
  setName(socketId, name) { return this.post('/connections/setName', { socketId, name }); }

  // --- conversations (§10.4)
  currentConversation(churchId, contentType, contentId) {
    return this.get(`/conversations/current/${seg(churchId)}/${seg(contentType)}/${seg(contentId)}`);
  }
  conversationsForContent(churchId, contentType, contentId) {
    return this.get(`/conversations/${seg(churchId)}/${seg(contentType)}/${seg(contentId)}`);
  }
  saveConversations(items) { return this.post('/conversations', items); }
  conversationMessages(contentType, contentId, { page = 1, limit = 100 } = {}) {
    return this.get(`/conversations/messages/${seg(contentType)}/${seg(contentId)}?page=${page}&limit=${limit}`);
  }

  // --- messages (§10.3)
  catchup(churchId, conversationId, since) {
    const query = since ? `?since=${seg(since)}` : '';
    return this.get(`/messages/catchup/${seg(churchId)}/${seg(conversationId)}${query}`);
  }
  sendMessages(items) { return this.post('/messages/send', items); }
  saveMessages(items) { return this.post('/messages', items); }
  react(messageId, emoji) { return this.post(`/messages/${seg(messageId)}/reactions`, { emoji }); }
  deleteMessage(id) { return this.delete(`/messages/${seg(id)}`); }

  // --- private messages and notifications (§10.5, §10.6)
  privateMessages() { return this.get('/privatemessages'); }
  unreadCount() { return this.get('/notifications/unreadCount'); }
  markNotificationsRead(churchId, personId) {
    return this.post(`/notifications/markRead/${seg(churchId)}/${seg(personId)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// SocketHelper
// ---------------------------------------------------------------------------------------------

/**
 * The one socket of a tab (§2). `init()` connects and resolves with the socket id; after any
 * close that `close()` did not ask for, it reconnects with exponential backoff and jitter, and
 * announces the new id to `reconnect` handlers so rooms can be re-joined.
 *
 * States: `idle` → `connecting` → `open`; `waiting` while a reconnect is scheduled;
 * `closed` after `close()`.
 */
export class SocketHelper {
  /**
   * @param {object} [options]
   * @param {string} [options.url] WebSocket URL, default the page's origin
   * @param {typeof WebSocket} [options.WebSocket]
   * @param {{setTimeout: Function, clearTimeout: Function, now: () => number}} [options.clock]
   * @param {() => number} [options.random] for the backoff jitter
   * @param {EventTarget|null} [options.windowTarget] receives `online` and `focus`
   * @param {EventTarget|null} [options.documentTarget] receives `visibilitychange`
   * @param {number} [options.handshakeTimeoutMs] open + `getId` answer, default 5000
   * @param {number} [options.probeTimeoutMs] default 3000
   * @param {number} [options.backoffBaseMs] default 500
   * @param {number} [options.backoffMaxMs] default 30000
   * @param {boolean} [options.positions] opt into positions (§5.6): `positions=1` on the URL,
   *   default true; false opens exactly `url`, as before positions existed
   * @param {(error: unknown) => void} [options.onError] handler failures end up here
   */
  constructor(options = {}) {
    this.url = options.url ?? defaultSocketUrl();
    /** Whether sockets are opened with `positions=1` (§5.6). */
    this.positions = options.positions ?? true;
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this._clock = options.clock ?? defaultClock();
    this._random = options.random ?? Math.random;
    this._windowTarget = options.windowTarget !== undefined
      ? options.windowTarget : (typeof window !== 'undefined' ? window : null);
    this._documentTarget = options.documentTarget !== undefined
      ? options.documentTarget : (typeof document !== 'undefined' ? document : null);
    this.handshakeTimeoutMs = options.handshakeTimeoutMs ?? 5000;
    this.probeTimeoutMs = options.probeTimeoutMs ?? 3000;
    this.backoffBaseMs = options.backoffBaseMs ?? 500;
    this.backoffMaxMs = options.backoffMaxMs ?? 30000;
    this._onError = options.onError ?? defaultOnError;

    /** @type {WebSocket|null} */
    this.socket = null;
    /** The id of the current socket; `null` until its handshake completes. */
    this.socketId = null;
    this.state = 'idle';
    /** Consecutive failed attempts since the last successful handshake. */
    this.attempt = 0;
    /** Epoch ms of the scheduled reconnect while `waiting`, else `null`. */
    this.retryAt = null;

    this._handlers = new Map(); // id -> { action, fn }, in registration order
    this._filters = new Set(); // frame filters, run before any handler
    this._stateListeners = new Set();
    this._ready = null; // { promise, resolve, reject } shared by concurrent init() calls
    this._active = false; // false until init(), and again after close()
    this._handshakeDone = false;
    this._lastSocketId = null;
    this._handshakeTimer = null;
    this._reconnectTimer = null;
    this._probeTimer = null;
    this._listening = false;
    this._wake = (event) => {
      // A hidden tab gets no benefit from a probe; it will probe when it becomes visible.
      if (event?.type === 'visibilitychange' && this._documentTarget?.visibilityState === 'hidden') return;
      this.probe();
    };
  }

  /**
   * Connects if needed and resolves with the socket id. Re-entrant and idempotent: concurrent
   * calls share one connect, and a call on an open socket resolves at once. While a reconnect
   * is pending it resolves when that reconnect succeeds. Rejects (AbortError) only if `close()`
   * is called first.
   * @returns {Promise<string>}
   */
  init() {
    this._active = true;
    this._listen();
    if (this.state === 'open' && this.socketId) return Promise.resolve(this.socketId);
    if (!this._ready) {
      let resolve, reject;
      const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
      this._ready = { promise, resolve, reject };
    }
    const { promise } = this._ready;
    if (this.state === 'idle' || this.state === 'closed') this._connect();
    return promise;
  }

  /**
   * Registers `fn` for frames whose `action` matches; it receives `(data, envelope)`.
   * Registering an id again replaces both the function and the action. The local action
   * `reconnect` receives `{socketId, previousSocketId}` after a new socket replaced an old one.
   */
  addHandler(action, id, fn) {
    if (typeof fn !== 'function') throw new TypeError('handler must be a function');
    // Delete first so a replaced handler moves to the end, like a fresh registration.
    this._handlers.delete(id);
    this._handlers.set(id, { action, fn });
  }

  removeHandler(id) {
    this._handlers.delete(id);
  }

  /**
   * `fn(frame)` sees every server frame but `socketId` before any handler, in arrival order;
   * returning `false` drops the frame (no handler sees it). `SubscriptionManager` uses this
   * to drop frames replayed twice (§5.6). Returns an unsubscribe function.
   */
  addFrameFilter(fn) {
    if (typeof fn !== 'function') throw new TypeError('filter must be a function');
    this._filters.add(fn);
    return () => this._filters.delete(fn);
  }

  /** `fn(state, helper)` on every state change; returns an unsubscribe function. */
  onStateChange(fn) {
    this._stateListeners.add(fn);
    return () => this._stateListeners.delete(fn);
  }

  /**
   * Checks that a socket that looks open still answers: it sends `getId` and reconnects if
   * nothing arrives within `probeTimeoutMs`. A socket waiting for its backoff reconnects now.
   * Called on `online`, `focus` and `visibilitychange`, when a sleeping laptop or a phone that
   * changed networks may hold a socket that is dead without a close event.
   */
  probe() {
    if (!this._active) return;
    if (this.state === 'waiting') {
      this._connect();
      return;
    }
    const ws = this.socket;
    if (this.state !== 'open' || !ws) return; // a connect in flight has its own timeout
    if (ws.readyState !== WS_OPEN) {
      this._abandon(ws, 'socket not open');
      this._connect();
      return;
    }
    if (this._probeTimer) return;
    this._probeTimer = this._clock.setTimeout(() => {
      this._probeTimer = null;
      if (ws !== this.socket) return;
      this._abandon(ws, 'probe timeout');
      this._connect();
    }, this.probeTimeoutMs);
    this._send(ws, 'getId');
  }

  /** Deliberate close: no reconnect, pending `init()` calls reject. `init()` starts again. */
  close() {
    this._active = false;
    this._unlisten();
    this._clearTimers();
    const ws = this.socket;
    this.socket = null;
    this.socketId = null;
    this.retryAt = null;
    this.attempt = 0;
    if (ws) {
      this._detach(ws);
      try { ws.close(1000, 'client closing'); } catch { /* already closed */ }
    }
    if (this._ready) {
      const { reject } = this._ready;
      this._ready = null;
      reject(abortError('socket closed'));
    }
    this._setState('closed');
  }

  /** Delay before reconnect attempt `attempt` (0-based): "equal jitter", so the delay keeps
   *  growing while clients that dropped together spread out; never above `backoffMaxMs`. */
  backoffDelay(attempt) {
    const ceiling = Math.min(this.backoffMaxMs, this.backoffBaseMs * 2 ** attempt);
    return Math.round(ceiling / 2 + this._random() * (ceiling / 2));
  }

  // --- internals

  _connect() {
    this._clearTimers();
    this.retryAt = null;
    let ws;
    try {
      ws = new this._WebSocket(this.positions ? withPositions(this.url) : this.url);
    } catch (error) {
      // A malformed URL or a blocked port throws synchronously; treat it like a failed attempt.
      this._onError(error);
      this._scheduleReconnect();
      return;
    }
    this.socket = ws;
    this._handshakeDone = false;
    this._setState('connecting');
    this._handshakeTimer = this._clock.setTimeout(() => {
      this._handshakeTimer = null;
      if (ws !== this.socket) return;
      this._abandon(ws, 'handshake timeout');
      this._scheduleReconnect();
    }, this.handshakeTimeoutMs);
    ws.onopen = () => { if (ws === this.socket) this._send(ws, 'getId'); };
    ws.onmessage = (event) => this._onMessage(ws, event);
    ws.onerror = () => { /* a close event always follows; reconnecting happens there */ };
    ws.onclose = () => this._onClose(ws);
  }

  _onMessage(ws, event) {
    if (ws !== this.socket) return;
    // Any frame proves the socket is alive, whatever a pending probe was waiting for.
    if (this._probeTimer) {
      this._clock.clearTimeout(this._probeTimer);
      this._probeTimer = null;
    }
    if (typeof event.data !== 'string') return; // the server only sends text frames (§3.1)
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return;
    }
    if (!frame || typeof frame !== 'object') return;
    if (frame.action === 'socketId') {
      if (!this._handshakeDone && typeof frame.data === 'string') this._onHandshake(frame.data);
      return;
    }
    for (const filter of [...this._filters]) {
      try {
        if (filter(frame) === false) return;
      } catch (error) {
        this._onError(error);
      }
    }
    this._dispatch(frame.action, frame.data, frame);
  }

  _onHandshake(socketId) {
    this._handshakeDone = true;
    if (this._handshakeTimer) {
      this._clock.clearTimeout(this._handshakeTimer);
      this._handshakeTimer = null;
    }
    const previousSocketId = this._lastSocketId;
    this.socketId = socketId;
    this._lastSocketId = socketId;
    this.attempt = 0;
    this.retryAt = null;
    this._setState('open');
    if (this._ready) {
      const { resolve } = this._ready;
      this._ready = null;
      resolve(socketId);
    }
    // The server forgot every row of the old socket (§2.2): listeners must re-join.
    if (previousSocketId && previousSocketId !== socketId) {
      this._dispatch('reconnect', { socketId, previousSocketId }, null);
    }
  }

  _onClose(ws) {
    if (ws !== this.socket) return;
    this._clearTimers();
    this.socket = null;
    this.socketId = null;
    if (this._active) this._scheduleReconnect();
    else this._setState('closed');
  }

  _scheduleReconnect() {
    if (!this._active) return;
    const delay = this.backoffDelay(this.attempt);
    this.attempt += 1;
    this.retryAt = this._clock.now() + delay;
    this._reconnectTimer = this._clock.setTimeout(() => {
      this._reconnectTimer = null;
      this._connect();
    }, delay);
    this._setState('waiting');
  }

  /** Drops a socket we no longer trust without waiting for its close event, which on a dead
   *  network can take minutes. */
  _abandon(ws, reason) {
    this._detach(ws);
    try { ws.close(4000, reason); } catch { /* already closing */ }
    if (ws === this.socket) {
      this.socket = null;
      this.socketId = null;
    }
  }

  _detach(ws) {
    ws.onopen = null;
    ws.onmessage = null;
    ws.onerror = null;
    ws.onclose = null;
  }

  _send(ws, text) {
    try {
      ws.send(text);
    } catch {
      // Sending on a closing socket throws; the handshake or probe timeout deals with it.
    }
  }

  _dispatch(action, data, frame) {
    for (const { action: wanted, fn } of [...this._handlers.values()]) {
      if (wanted !== action) continue;
      try {
        fn(data, frame);
      } catch (error) {
        this._onError(error);
      }
    }
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    emit(this._stateListeners, this._onError, state, this);
  }

  _clearTimers() {
    for (const name of ['_handshakeTimer', '_reconnectTimer', '_probeTimer']) {
      if (this[name]) {
        this._clock.clearTimeout(this[name]);
        this[name] = null;
      }
    }
  }

  _listen() {
    if (this._listening) return;
    this._listening = true;
    this._windowTarget?.addEventListener?.('online', this._wake);
    this._windowTarget?.addEventListener?.('focus', this._wake);
    this._documentTarget?.addEventListener?.('visibilitychange', this._wake);
  }

  _unlisten() {
    if (!this._listening) return;
    this._listening = false;
    this._windowTarget?.removeEventListener?.('online', this._wake);
    this._windowTarget?.removeEventListener?.('focus', this._wake);
    this._documentTarget?.removeEventListener?.('visibilitychange', this._wake);
  }
}

// ---------------------------------------------------------------------------------------------
// SubscriptionManager
// ---------------------------------------------------------------------------------------------

/** Actions whose frames belong to the person's `alerts` audience although their
 *  `conversationId` is not `alerts` (§3.1: a private conversation's id, or `"alert"`). */
const ALERT_ACTIONS = new Set(['privateMessage', 'notification']);

/**
 * Reference-counted room membership for one socket. Components join and leave freely; the
 * server sees one join when the first reference appears and one leave when the last goes away
 * (after `leaveDelayMs`, so a leave immediately followed by a join — a re-render, a route
 * change — costs nothing and does not flicker the room's attendance).
 *
 * With positions (§5.6, when the socket has them and the server answers with a `position`)
 * it also keeps each room's place, `{epoch, seq}`: from the join row, then advanced by every
 * frame of the room. Frames at or below it are replays already applied and are dropped before
 * any handler sees them. A re-join after a reconnect sends it as `since`, so the server
 * replays what was missed (`onResume`) or says it cannot (`onGap`, also raised when a frame's
 * `seq` skips ahead); gap listeners refetch through REST.
 */
export class SubscriptionManager {
  /**
   * @param {object} options
   * @param {SocketHelper} options.socket
   * @param {MessagingApi} options.api
   * @param {number} [options.leaveDelayMs] default 250
   * @param {{setTimeout: Function, clearTimeout: Function}} [options.clock]
   * @param {(error: unknown) => void} [options.onError] failed re-joins end up here
   */
  constructor({ socket, api, leaveDelayMs = 250, clock, onError } = {}) {
    this.socket = socket;
    this.api = api;
    this.leaveDelayMs = leaveDelayMs;
    this._clock = clock ?? defaultClock();
    this._onError = onError ?? defaultOnError;
    this._rooms = new Map(); // key -> entry
    this._leaving = new Map(); // key -> promise of an in-flight leave
    this._rejoinListeners = new Set();
    this._gapListeners = new Set();
    this._resumeListeners = new Set();
    this._handlerId = nextInstanceId('subscriptions');
    socket.addHandler('reconnect', this._handlerId, () => this._rejoinAll());
    this._offFilter = typeof socket.addFrameFilter === 'function'
      ? socket.addFrameFilter((frame) => this._onFrame(frame)) : () => {};
  }

  /**
   * Adds a reference to the room; the first one posts the join. Resolves with the stored
   * Connection row; rejects with the REST error (and then holds no reference).
   * @param {{churchId: string, conversationId: string, displayName?: string}} room
   */
  joinRoom({ churchId, conversationId, displayName }) {
    const key = roomKey(churchId, conversationId);
    let entry = this._rooms.get(key);
    if (!entry) {
      entry = {
        key, churchId, conversationId, displayName: displayName ?? '', refs: 0,
        joined: null, // the first join, as its callers see it
        sync: null, // every post for this room, in order; never rejects
        joinedSocketId: null, leaveTimer: null, settleLeave: null,
        position: null, // {epoch, seq} of the last frame applied (§5.6); null without positions
        joining: null, // the post in flight: {since, seen, gapSeen}
        resume: null, // a resume whose replay is still arriving: {since, target}
        answeredGap: null, // a gap taken from a join row; the matching gap frame is not a second one
      };
      this._rooms.set(key, entry);
    }
    entry.refs += 1;
    if (entry.leaveTimer) {
      // Leave then join within the delay: nothing is posted either way.
      this._clock.clearTimeout(entry.leaveTimer);
      entry.leaveTimer = null;
      this._settleLeave(entry, false);
    }
    if (!entry.joined) {
      entry.joined = this._join(entry);
      entry.sync = entry.joined.then(() => {}, () => {
        if (this._rooms.get(key) === entry) this._rooms.delete(key);
      });
    }
    return entry.joined;
  }

  /**
   * Drops a reference. When it was the last, the leave is posted after `leaveDelayMs` unless
   * a join comes first. Resolves `true` once the room was left, `false` if nothing was left
   * (other references remain, or a join cancelled the leave); rejects with a REST error.
   */
  leaveRoom(churchId, conversationId) {
    const key = roomKey(churchId, conversationId);
    const entry = this._rooms.get(key);
    if (!entry || entry.refs === 0) return Promise.resolve(false);
    entry.refs -= 1;
    if (entry.refs > 0) return Promise.resolve(false);
    return new Promise((resolve, reject) => {
      entry.settleLeave = (left) => resolve(left);
      entry.leaveTimer = this._clock.setTimeout(() => {
        entry.leaveTimer = null;
        entry.settleLeave = null;
        this._rooms.delete(key);
        const leaving = this._leave(entry);
        this._leaving.set(key, leaving);
        leaving
          .finally(() => { if (this._leaving.get(key) === leaving) this._leaving.delete(key); })
          .then(() => resolve(true), reject);
      }, this.leaveDelayMs);
    });
  }

  /** Renames this socket in every room but `alerts` (§10.2 setName); later re-joins use it. */
  async setName(name) {
    for (const entry of this._rooms.values()) {
      if (entry.conversationId !== 'alerts') entry.displayName = name;
    }
    const socketId = this.socket.socketId;
    if (!socketId) return [];
    return this.api.setName(socketId, name);
  }

  /** The rooms currently held, with their reference counts. */
  rooms() {
    return [...this._rooms.values()]
      .filter((e) => e.refs > 0)
      .map(({ churchId, conversationId, displayName, refs }) => ({ churchId, conversationId, displayName, refs }));
  }

  isJoined(churchId, conversationId) {
    return (this._rooms.get(roomKey(churchId, conversationId))?.refs ?? 0) > 0;
  }

  /** `fn({churchId, conversationId, socketId, connection, resumed})` after each room was
   *  re-joined on a new socket. `resumed` false: the moment to fetch what was missed. `resumed`
   *  true: the re-join named the room's position (§5.6), so the server replays what was missed
   *  or a gap (`onGap`) follows; nothing needs fetching. Returns an unsubscribe function. */
  onRejoin(fn) {
    this._rejoinListeners.add(fn);
    return () => this._rejoinListeners.delete(fn);
  }

  /** `fn({churchId, conversationId, reason, epoch, seq, previous})` when frames of a joined
   *  room were missed and will not be replayed (§5.6): a `gap` frame (`reason` `epoch`,
   *  `expired`, `lost`) or a frame whose `seq` skipped ahead (`jump`). The room continues
   *  from `{epoch, seq}`; `previous` is the position held before. Refetch the room through
   *  REST (`ConversationStore` and `NotificationService` do). Returns an unsubscribe function. */
  onGap(fn) {
    this._gapListeners.add(fn);
    return () => this._gapListeners.delete(fn);
  }

  /** `fn({churchId, conversationId, replayed, epoch, seq, since})` once a re-join with `since`
   *  has received every frame the server replayed (`replayed` of them; 0 when nothing was
   *  missed). Returns an unsubscribe function. */
  onResume(fn) {
    this._resumeListeners.add(fn);
    return () => this._resumeListeners.delete(fn);
  }

  /** The room's position `{epoch, seq}` (§5.6), or `null` without positions. */
  position(churchId, conversationId) {
    const position = this._rooms.get(roomKey(churchId, conversationId))?.position;
    return position ? { ...position } : null;
  }

  /** Stops re-joining; rooms stay joined on the server until the socket closes. */
  dispose() {
    this.socket.removeHandler(this._handlerId);
    this._offFilter();
    this._gapListeners.clear();
    this._resumeListeners.clear();
    for (const entry of this._rooms.values()) {
      if (entry.leaveTimer) this._clock.clearTimeout(entry.leaveTimer);
      entry.leaveTimer = null;
      this._settleLeave(entry, false);
    }
    this._rooms.clear();
    this._rejoinListeners.clear();
  }

  // --- internals

  _settleLeave(entry, left) {
    const settle = entry.settleLeave;
    entry.settleLeave = null;
    settle?.(left);
  }

  async _join(entry) {
    // A leave of the same room may still be in flight; joining before it lands would let the
    // leave delete the fresh row.
    await this._leaving.get(entry.key)?.catch(() => {});
    const socketId = await this.socket.init();
    try {
      return (await this._post(entry, socketId)).row;
    } catch (error) {
      // The socket died while the join was in flight ("Socket not found"). Re-joins after the
      // reconnect only cover rooms that had joined, so retry this one on the next socket.
      if (this.socket.socketId === socketId || this._rooms.get(entry.key) !== entry) throw error;
      const next = await this.socket.init();
      if (next === socketId) throw error;
      return (await this._post(entry, next)).row;
    }
  }

  /** Posts the join; with a position held (and positions on), as a resume from it. Resolves
   *  with the row and whether positions cover what this socket missed (`resumed`). */
  async _post(entry, socketId) {
    const item = {
      conversationId: entry.conversationId,
      churchId: entry.churchId,
      displayName: entry.displayName,
      socketId,
    };
    const since = this.socket.positions && entry.position ? { ...entry.position } : null;
    if (since) item.since = since;
    const joining = { since, seen: 0, gapSeen: false };
    entry.joining = joining;
    entry.answeredGap = null; // only the gap frame of the join that answered it matches
    let rows;
    try {
      rows = await this.api.joinRooms([item]);
    } finally {
      if (entry.joining === joining) entry.joining = null;
    }
    entry.joinedSocketId = socketId;
    const row = Array.isArray(rows) ? rows[0] ?? null : null;
    return { row, resumed: this._applyRow(entry, row, joining) };
  }

  /** Takes the position of a join row (§5.6). Returns whether a resume is under way, i.e.
   *  the join named a position and the server keeps positions for this socket. */
  _applyRow(entry, row, joining) {
    const answered = this.socket.positions ? asPosition(row?.position) : null;
    if (!answered) {
      // A server (or a mode of it) without positions: at-most-once, as before (§5.2).
      entry.position = null;
      entry.resume = null;
      return false;
    }
    // A gap frame for this join came first and set the place to continue from.
    if (joining.gapSeen) return !!joining.since;
    const { since } = joining;
    if (!since) {
      // Frames published after the join may have overtaken its response.
      entry.position = { epoch: answered.epoch, seq: Math.max(answered.seq, joining.seen) };
      return false;
    }
    if (answered.epoch === since.epoch && answered.seq >= since.seq) {
      // Frames since.seq+1 … answered.seq are queued to the socket (or an `expired` gap is).
      entry.resume = { since, target: answered.seq };
      this._checkResume(entry);
      return true;
    }
    // Another epoch (a restart), or a seq this epoch never reached: the server sends a gap
    // frame naming this very position. Act on the row now; that frame is then no news.
    entry.answeredGap = answered;
    this._gap(entry, { reason: 'epoch', ...answered });
    return true;
  }

  /** The joined room a frame belongs to, or `undefined`. Frames are routed by
   *  `conversationId`, except the `alerts` audience's own actions (§3.1). A room whose church
   *  the server resolved differently from the one joined with is found by its id alone. */
  _audience(frame) {
    const roomId = ALERT_ACTIONS.has(frame.action) ? 'alerts' : frame.conversationId;
    if (typeof roomId !== 'string' || !roomId) return undefined;
    const exact = this._rooms.get(roomKey(frame.churchId ?? '', roomId));
    if (exact) return exact;
    let found;
    for (const entry of this._rooms.values()) {
      if (entry.conversationId !== roomId) continue;
      if (found) return undefined; // ambiguous across churches
      found = entry;
    }
    return found;
  }

  /** Frame filter (§5.6): keeps each room's position, drops replays already applied. */
  _onFrame(frame) {
    if (frame.action !== 'gap' && !Number.isSafeInteger(frame.seq)) return true;
    const entry = this._audience(frame);
    if (!entry) return true;
    if (frame.action === 'gap') {
      this._onGapFrame(entry, frame.data);
      return true;
    }
    const { seq } = frame;
    const held = entry.position;
    if (!held) {
      // First join, response not here yet: remember how far frames went.
      if (entry.joining && !entry.joining.since) entry.joining.seen = Math.max(entry.joining.seen, seq);
      return true;
    }
    if (seq <= held.seq) return false; // replayed again (a repeated join): already applied
    if (seq > held.seq + 1) {
      // Frames held.seq+1 … seq-1 never came and no gap said so: refetch, then go on.
      entry.resume = null;
      this._gap(entry, { reason: 'jump', epoch: held.epoch, seq: seq - 1 });
    }
    entry.position = { epoch: held.epoch, seq };
    this._checkResume(entry);
    return true;
  }

  _onGapFrame(entry, data) {
    const at = asPosition(data);
    if (!at) return;
    if (entry.joining) entry.joining.gapSeen = true;
    const answered = entry.answeredGap;
    entry.answeredGap = null;
    if (samePosition(answered, at) && samePosition(entry.position, at)) return; // acted on already
    entry.resume = null;
    this._gap(entry, { reason: typeof data.reason === 'string' ? data.reason : 'unknown', ...at });
  }

  _gap(entry, { reason, epoch, seq }) {
    const previous = entry.position;
    entry.position = { epoch, seq };
    emit(this._gapListeners, this._onError, {
      churchId: entry.churchId, conversationId: entry.conversationId, reason, epoch, seq, previous,
    });
  }

  _checkResume(entry) {
    const { resume, position } = entry;
    if (!resume || !position || position.seq < resume.target) return;
    entry.resume = null;
    emit(this._resumeListeners, this._onError, {
      churchId: entry.churchId, conversationId: entry.conversationId,
      replayed: resume.target - resume.since.seq, epoch: position.epoch, seq: position.seq, since: resume.since,
    });
  }

  async _leave(entry) {
    await entry.sync;
    const socketId = entry.joinedSocketId;
    // When the socket that joined has gone, the server already deleted its rows (§2.2).
    if (!socketId || socketId !== this.socket.socketId) return;
    await this.api.leaveRoom(entry.churchId, entry.conversationId, socketId);
  }

  /** After a new socket id: every held room is posted again, after any join still in flight
   *  for it (which may already have used the new id). */
  _rejoinAll() {
    for (const entry of [...this._rooms.values()]) {
      if (entry.refs === 0) {
        // A pending leave on the dead socket has nothing left to delete.
        if (entry.leaveTimer) this._clock.clearTimeout(entry.leaveTimer);
        entry.leaveTimer = null;
        this._rooms.delete(entry.key);
        this._settleLeave(entry, true);
        continue;
      }
      entry.sync = entry.sync.then(async () => {
        if (this._rooms.get(entry.key) !== entry || entry.refs === 0) return;
        const socketId = this.socket.socketId;
        // No successful join yet (it failed and told its caller), or it already used this id.
        if (!entry.joinedSocketId || !socketId || entry.joinedSocketId === socketId) return;
        for (let retry = 0; ; retry += 1) {
          try {
            const { row: connection, resumed } = await this._post(entry, socketId);
            emit(this._rejoinListeners, this._onError, {
              churchId: entry.churchId, conversationId: entry.conversationId, socketId, connection, resumed,
            });
            return;
          } catch (error) {
            // A server that has just restarted may accept sockets a moment before its REST
            // side answers: retry transient failures a few times, report the rest.
            const transient = error?.status === 0 || error?.status >= 500;
            const stillWanted = this._rooms.get(entry.key) === entry && entry.refs > 0 && this.socket.socketId === socketId;
            if (!transient || !stillWanted || retry >= REJOIN_RETRIES) {
              this._onError(error);
              return;
            }
            await new Promise((resolve) => this._clock.setTimeout(resolve, 1000 * 2 ** retry));
          }
        }
      });
    }
  }
}

// ---------------------------------------------------------------------------------------------
// ConversationStore
// ---------------------------------------------------------------------------------------------

function compareMessages(a, b) {
  if (a.timeSent !== b.timeSent) return (a.timeSent ?? '') < (b.timeSent ?? '') ? -1 : 1;
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

/** Whether `incoming` (from REST) is at least as new as `existing`: REST answers can be
 *  older than a live `message` frame that arrived while the request was in flight. */
function notOlder(incoming, existing) {
  const a = incoming.timeUpdated ? Date.parse(incoming.timeUpdated) : 0;
  const b = existing.timeUpdated ? Date.parse(existing.timeUpdated) : 0;
  return a >= b;
}

/**
 * Messages of open conversations, from REST hydration and the `message`, `deleteMessage` and
 * `reaction` frames, merged by id. After a reconnect each open conversation is re-joined first
 * and then caught up with `since`, so a message sent during the gap is never lost. With
 * positions (§5.6) the re-join resumes instead: the server replays the missed frames (applied
 * once: replays already held are dropped by `SubscriptionManager`), and only a gap is caught up
 * through REST, then announced to `onGap` listeners.
 *
 * Limits of catch-up (the server keeps no change log): deletes, edits of older messages and
 * reactions made while this tab was offline are not replayed; re-open to resynchronise.
 */
export class ConversationStore {
  /**
   * @param {object} options
   * @param {SocketHelper} options.socket
   * @param {SubscriptionManager} options.subscriptions
   * @param {MessagingApi} options.api
   * @param {string|null|(() => string|null|undefined)} [options.personId] marks own reactions `mine`
   * @param {(error: unknown) => void} [options.onError] failed catch-ups end up here
   */
  constructor({ socket, subscriptions, api, personId = null, onError } = {}) {
    this.socket = socket;
    this.subscriptions = subscriptions;
    this.api = api;
    this._personId = typeof personId === 'function' ? personId : () => personId;
    this._onError = onError ?? defaultOnError;
    this._conversations = new Map(); // conversationId -> state
    this._gapListeners = new Set();
    this._handlerId = nextInstanceId('conversations');
    socket.addHandler('message', `${this._handlerId}:message`, (data) => this._onMessage(data));
    socket.addHandler('deleteMessage', `${this._handlerId}:delete`, (data) => this._onDelete(data));
    socket.addHandler('reaction', `${this._handlerId}:reaction`, (data) => this._onReaction(data));
    this._offRejoin = subscriptions.onRejoin(({ conversationId, resumed }) => {
      const state = this._conversations.get(conversationId);
      // A resumed re-join gets the missed frames replayed, or a gap (below).
      if (state?.refs > 0 && !resumed) this.catchUp(conversationId).catch((error) => this._onError(error));
    });
    this._offGap = subscriptions.onGap?.((gap) => this._onGap(gap)) ?? (() => {});
  }

  /** `fn({churchId, conversationId, reason, epoch, seq, previous, refetched})` after a gap in
   *  an open conversation (§5.6, see `SubscriptionManager.onGap`) was caught up through REST;
   *  `refetched` counts the messages the catch-up added. Returns an unsubscribe function. */
  onGap(fn) {
    this._gapListeners.add(fn);
    return () => this._gapListeners.delete(fn);
  }

  /**
   * Joins the conversation's room and loads its messages (join first, so nothing sent between
   * the load and the join is missed). Reference-counted like `joinRoom`. Resolves with the
   * messages; rejects with the REST error and then holds no reference.
   * @param {{churchId: string, conversationId: string, displayName?: string}} options
   */
  async open({ churchId, conversationId, displayName }) {
    const state = this._state(churchId, conversationId);
    state.refs += 1;
    if (!state.opening) {
      // One room reference per conversation, however many components opened it.
      state.opening = (async () => {
        await this.subscriptions.joinRoom({ churchId, conversationId, displayName });
        try {
          await this._load(state, false);
        } catch (error) {
          this.subscriptions.leaveRoom(churchId, conversationId).catch(this._onError);
          throw error;
        }
      })();
      state.opening.catch(() => {
        if (this._conversations.get(conversationId) === state) this._conversations.delete(conversationId);
      });
    }
    await state.opening;
    return this.getMessages(conversationId);
  }

  /** Drops a reference; the last one leaves the room and forgets the messages. */
  close(conversationId) {
    const state = this._conversations.get(conversationId);
    if (!state || state.refs === 0) return Promise.resolve(false);
    state.refs -= 1;
    if (state.refs > 0) return Promise.resolve(false);
    this._conversations.delete(conversationId);
    return this.subscriptions.leaveRoom(state.churchId, conversationId);
  }

  /** Fetches messages with `timeSent >= ` the newest one held (inclusive, deduplicated by id);
   *  everything if none is held, so no client clock is involved. */
  catchUp(conversationId) {
    const state = this._conversations.get(conversationId);
    if (!state) return Promise.resolve([]);
    return this._load(state, true).then(() => this.getMessages(conversationId));
  }

  /** Messages ordered by `(timeSent, id)`, each with `reactions: [{emoji, count, mine}]`. */
  getMessages(conversationId) {
    const state = this._conversations.get(conversationId);
    if (!state) return [];
    if (!state.view) {
      state.view = [...state.messages.values()].sort(compareMessages).map((message) => ({
        ...message,
        reactions: [...(state.reactions.get(message.id)?.entries() ?? [])]
          .map(([emoji, r]) => ({ emoji, count: r.count, mine: r.mine })),
      }));
    }
    return state.view;
  }

  /** `fn(messages)` after every change of the conversation; returns an unsubscribe function. */
  subscribe(conversationId, fn) {
    const listeners = this._listeners(conversationId);
    listeners.add(fn);
    return () => listeners.delete(fn);
  }

  /** Posts through `/messages/send` (anonymous, or authenticated when a token is set) and
   *  merges the stored message, so the sender sees it even if its frame is late. */
  async send({ churchId, conversationId, content, displayName, messageType }) {
    const [message] = await this.api.sendMessages([{ churchId, conversationId, content, displayName, messageType }]);
    if (message) this._merge([message], false);
    return message;
  }

  /** Creates (token required) or, with `id`, edits a message through `POST /messages`. */
  async save({ id, conversationId, content, displayName, messageType }) {
    const [message] = await this.api.saveMessages([{ id, conversationId, content, displayName, messageType }]);
    if (message) this._merge([message], !!id);
    return message;
  }

  /** Deletes a message (author or moderator). The `deleteMessage` frame updates every tab. */
  async remove(messageId) {
    const result = await this.api.deleteMessage(messageId);
    this._onDelete({ id: messageId });
    return result;
  }

  /** Toggles a reaction. The store changes on the `reaction` frame, not on the response, so
   *  every tab counts the same events exactly once. */
  react(messageId, emoji) {
    return this.api.react(messageId, emoji);
  }

  /** Seeds reaction summaries (`{emoji, count, mine}[]`, as REST returns them). */
  setReactions(conversationId, messageId, summaries) {
    const state = this._conversations.get(conversationId);
    if (!state) return;
    state.reactions.set(messageId, new Map(summaries.map((r) => [r.emoji, { count: r.count, mine: !!r.mine }])));
    this._changed(state);
  }

  dispose() {
    for (const suffix of ['message', 'delete', 'reaction']) this.socket.removeHandler(`${this._handlerId}:${suffix}`);
    this._offRejoin();
    this._offGap();
    this._gapListeners.clear();
    this._conversations.clear();
  }

  // --- internals

  _state(churchId, conversationId) {
    let state = this._conversations.get(conversationId);
    if (!state) {
      state = {
        churchId, conversationId, refs: 0, hydrated: false, opening: null,
        messages: new Map(), reactions: new Map(), deleted: new Set(),
        view: null, loading: Promise.resolve(),
      };
      this._conversations.set(conversationId, state);
    }
    return state;
  }

  _listeners(conversationId) {
    this._allListeners ??= new Map();
    let set = this._allListeners.get(conversationId);
    if (!set) {
      set = new Set();
      this._allListeners.set(conversationId, set);
    }
    return set;
  }

  /** Loads (or catches up) one conversation; loads of the same conversation run one at a time
   *  so two catch-ups never compute `since` from the same stale state. */
  _load(state, incremental) {
    const run = state.loading.catch(() => {}).then(async () => {
      const since = incremental && state.hydrated ? this._newest(state) : null;
      const messages = await this.api.catchup(state.churchId, state.conversationId, since);
      if (this._conversations.get(state.conversationId) !== state) return 0;
      state.hydrated = true;
      return this._merge(Array.isArray(messages) ? messages : [], false);
    });
    state.loading = run;
    return run;
  }

  /** A gap in an open conversation's frames: catch up (merged by id), then tell listeners. */
  _onGap(gap) {
    const state = this._conversations.get(gap.conversationId);
    if (!state || state.refs === 0 || state.churchId !== gap.churchId) return;
    this._load(state, true).then((refetched) => {
      if (this._conversations.get(gap.conversationId) !== state) return;
      emit(this._gapListeners, this._onError, { ...gap, refetched });
    }).catch((error) => this._onError(error));
  }

  _newest(state) {
    let newest = null;
    for (const m of state.messages.values()) if (!newest || m.timeSent > newest) newest = m.timeSent;
    return newest;
  }

  /** `replace`: a frame (or an edit response) is authoritative; REST lists only fill gaps.
   *  Returns how many messages were new. */
  _merge(messages, replace) {
    const touched = new Set();
    let added = 0;
    for (const message of messages) {
      const state = this._conversations.get(message?.conversationId);
      if (!state || !message.id || state.deleted.has(message.id)) continue;
      const existing = state.messages.get(message.id);
      if (existing && !replace && !notOlder(message, existing)) continue;
      if (!existing) added += 1;
      state.messages.set(message.id, message);
      touched.add(state);
    }
    for (const state of touched) this._changed(state);
    return added;
  }

  _onMessage(data) {
    if (data && typeof data === 'object') this._merge([data], true);
  }

  _onDelete(data) {
    const id = data?.id;
    if (!id) return;
    for (const state of this._conversations.values()) {
      if (data.conversationId && state.conversationId !== data.conversationId) continue;
      // Remember the id: a REST answer already in flight may still list the message.
      state.deleted.add(id);
      const had = state.messages.delete(id);
      state.reactions.delete(id);
      if (had) this._changed(state);
    }
  }

  _onReaction(data) {
    const state = this._conversations.get(data?.conversationId);
    if (!state || !state.messages.has(data.messageId)) return;
    let byEmoji = state.reactions.get(data.messageId);
    if (!byEmoji) {
      byEmoji = new Map();
      state.reactions.set(data.messageId, byEmoji);
    }
    const current = byEmoji.get(data.emoji) ?? { count: 0, mine: false };
    const mine = data.personId != null && data.personId === this._personId();
    const next = {
      count: Math.max(0, current.count + (data.added ? 1 : -1)),
      mine: mine ? !!data.added : current.mine,
    };
    if (next.count === 0) byEmoji.delete(data.emoji);
    else byEmoji.set(data.emoji, next);
    this._changed(state);
  }

  _changed(state) {
    state.view = null;
    const listeners = this._allListeners?.get(state.conversationId);
    if (listeners?.size) emit(listeners, this._onError, this.getMessages(state.conversationId));
  }
}

// ---------------------------------------------------------------------------------------------
// PresenceStore
// ---------------------------------------------------------------------------------------------

/**
 * Groups a roster by display name, in roster order (the server sorts it by name):
 * `[{displayName, count}]`. Empty and null names count as "Anonymous", as the server shows them.
 */
export function groupViewers(viewers) {
  const groups = new Map();
  for (const viewer of viewers ?? []) {
    const name = viewer?.displayName || 'Anonymous';
    const group = groups.get(name);
    if (group) group.count += 1;
    else groups.set(name, { displayName: name, count: 1 });
  }
  return [...groups.values()];
}

/**
 * The latest `attendance` of each room, keyed by `(churchId, roomId)` (content room ids are
 * only unique within a church). A frame identical to the last one of its room is not
 * re-announced: joins, re-joins and big-room coalescing often repeat the same roster.
 */
export class PresenceStore {
  /**
   * @param {object} options
   * @param {SocketHelper} options.socket
   * @param {(error: unknown) => void} [options.onError]
   */
  constructor({ socket, onError } = {}) {
    this.socket = socket;
    this._onError = onError ?? defaultOnError;
    this._rooms = new Map(); // key -> { snapshot, signature }
    this._listeners = new Map(); // key -> Set
    this._handlerId = nextInstanceId('presence');
    socket.addHandler('attendance', this._handlerId, (data, frame) => this._onAttendance(data, frame));
  }

  /** `{conversationId, viewers, totalViewers, groups, hidden}` or `null` before any frame;
   *  `hidden` counts viewers beyond the roster cap (§6). */
  get(churchId, roomId) {
    return this._rooms.get(roomKey(churchId, roomId))?.snapshot ?? null;
  }

  /** `fn(snapshot)` on each new snapshot of the room, and at once if one is known. */
  subscribe(churchId, roomId, fn) {
    const key = roomKey(churchId, roomId);
    let set = this._listeners.get(key);
    if (!set) {
      set = new Set();
      this._listeners.set(key, set);
    }
    set.add(fn);
    const known = this._rooms.get(key);
    if (known) emit([fn], this._onError, known.snapshot);
    return () => set.delete(fn);
  }

  /** Forgets a room (after leaving it), so a later join starts from nothing. */
  clear(churchId, roomId) {
    this._rooms.delete(roomKey(churchId, roomId));
  }

  dispose() {
    this.socket.removeHandler(this._handlerId);
    this._rooms.clear();
    this._listeners.clear();
  }

  _onAttendance(data, frame) {
    if (!data || !Array.isArray(data.viewers)) return;
    const roomId = data.conversationId ?? frame?.conversationId;
    const key = roomKey(frame?.churchId ?? '', roomId);
    const totalViewers = Number.isFinite(data.totalViewers) ? data.totalViewers : data.viewers.length;
    const signature = JSON.stringify([data.viewers, totalViewers]);
    if (this._rooms.get(key)?.signature === signature) return;
    const snapshot = {
      conversationId: roomId,
      viewers: data.viewers,
      totalViewers,
      groups: groupViewers(data.viewers),
      hidden: Math.max(0, totalViewers - data.viewers.length),
    };
    this._rooms.set(key, { snapshot, signature });
    const listeners = this._listeners.get(key);
    if (listeners?.size) emit(listeners, this._onError, snapshot);
  }
}

// ---------------------------------------------------------------------------------------------
// NotificationService
// ---------------------------------------------------------------------------------------------

/**
 * Unread counters of the signed-in person: joins the per-person `alerts` room (§4, token
 * required), applies the counts carried by `privateMessage` and `notification` frames (§7),
 * and refetches `GET /notifications/unreadCount` after every re-join that did not resume and
 * after every gap (§5.6), because frames sent while the socket was down are gone.
 */
export class NotificationService {
  /**
   * @param {object} options
   * @param {SocketHelper} options.socket
   * @param {SubscriptionManager} options.subscriptions
   * @param {MessagingApi} options.api
   * @param {(error: unknown) => void} [options.onError] failed refetches end up here
   */
  constructor({ socket, subscriptions, api, onError } = {}) {
    this.socket = socket;
    this.subscriptions = subscriptions;
    this.api = api;
    this._onError = onError ?? defaultOnError;
    this._counts = { notificationCount: 0, pmCount: 0 };
    this._listeners = new Set();
    this._churchId = null;
    this._frames = 0; // frames seen, to discard refetches overtaken by a frame
    this._handlerId = nextInstanceId('notifications');
    const onCounts = (data) => {
      if (!this._churchId || !data?.counts) return;
      this._frames += 1;
      this._set(data.counts);
    };
    socket.addHandler('privateMessage', `${this._handlerId}:pm`, onCounts);
    socket.addHandler('notification', `${this._handlerId}:notification`, onCounts);
    // Counts are refetched after a re-join that did not resume (frames sent during the gap
    // are gone) and after a gap in a resumed one (§5.6); a resume replays the missed counts.
    const refetch = ({ conversationId, churchId }) => {
      if (conversationId === 'alerts' && churchId === this._churchId) {
        this.refresh().catch((error) => this._onError(error));
      }
    };
    this._offRejoin = subscriptions.onRejoin((event) => { if (!event.resumed) refetch(event); });
    this._offGap = subscriptions.onGap?.(refetch) ?? (() => {});
  }

  /**
   * Starts tracking `personId` of `churchId` (the API client must carry that person's token):
   * joins `alerts`, then loads the counts. Rejects with the REST error.
   * @returns {Promise<{notificationCount: number, pmCount: number}>}
   */
  async initialize({ churchId, personId }) {
    if (!churchId || !personId) throw new TypeError('NotificationService needs a signed-in person');
    // The alerts row belongs to the token's person: switching leaves first (and waits for the
    // leave to land, so the new join is not swallowed by the leave debounce).
    if (this._churchId && (this._churchId !== churchId || this.personId !== personId)) await this.cleanup();
    const first = this._churchId === null;
    this._churchId = churchId;
    this.personId = personId;
    try {
      if (first) await this.subscriptions.joinRoom({ churchId, conversationId: 'alerts' });
      return await this.refresh();
    } catch (error) {
      if (first) this._churchId = null;
      throw error;
    }
  }

  /** Refetches the counts over REST and announces them if they changed. */
  async refresh() {
    const framesBefore = this._frames;
    const counts = await this.api.unreadCount();
    // A frame that arrived meanwhile was computed after a later commit; keep it.
    if (this._frames === framesBefore && counts) this._set(counts);
    return this.getCounts();
  }

  getCounts() {
    return { ...this._counts };
  }

  /** `fn(counts)` on every change; returns an unsubscribe function. */
  subscribe(fn) {
    this._listeners.add(fn);
    return () => this._listeners.delete(fn);
  }

  /** Leaves `alerts` and resets the counts (sign-out). */
  async cleanup() {
    const churchId = this._churchId;
    this._churchId = null;
    this._set({ notificationCount: 0, pmCount: 0 });
    if (churchId) await this.subscriptions.leaveRoom(churchId, 'alerts');
  }

  dispose() {
    this.socket.removeHandler(`${this._handlerId}:pm`);
    this.socket.removeHandler(`${this._handlerId}:notification`);
    this._offRejoin();
    this._offGap();
    this._listeners.clear();
  }

  _set(counts) {
    const next = {
      notificationCount: Number(counts.notificationCount) || 0,
      pmCount: Number(counts.pmCount) || 0,
    };
    if (next.notificationCount === this._counts.notificationCount && next.pmCount === this._counts.pmCount) return;
    this._counts = next;
    emit(this._listeners, this._onError, this.getCounts());
  }
}

// ---------------------------------------------------------------------------------------------
// Wiring
// ---------------------------------------------------------------------------------------------

/**
 * Builds the five primitives around one socket and one REST client.
 * @param {object} [options] everything the constructors above accept, plus
 *   `restBase`, `socketUrl`, `getToken`, `personId`
 */
export function createMessagingClient(options = {}) {
  const onError = options.onError ?? defaultOnError;
  const clock = options.clock ?? defaultClock();
  const api = options.api ?? new MessagingApi({ baseUrl: options.restBase, fetch: options.fetch, getToken: options.getToken });
  const socket = new SocketHelper({ ...options, url: options.socketUrl, clock, onError });
  const subscriptions = new SubscriptionManager({ socket, api, clock, onError, leaveDelayMs: options.leaveDelayMs });
  const conversations = new ConversationStore({ socket, subscriptions, api, personId: options.personId, onError });
  const presence = new PresenceStore({ socket, onError });
  const notifications = new NotificationService({ socket, subscriptions, api, onError });
  return {
    api, socket, subscriptions, conversations, presence, notifications,
    /** Closes the socket and detaches every primitive. */
    destroy() {
      notifications.dispose();
      presence.dispose();
      conversations.dispose();
      subscriptions.dispose();
      socket.close();
    },
  };
}
