// Shared plumbing of the browser tests: the release binary on free ports with a temp SQLite
// database, and Debian's headless Chromium driven by playwright-core.
//
// The binary embeds `client/` when it is built, so a binary older than the working tree would
// serve an older client. The browser therefore gets `/`, `/demo` and `/client/…` from this
// working tree (the same files, content types and headers the binary serves); set
// CLIENT_FROM_BINARY=1 to test the copy embedded in the binary instead.

import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, createWriteStream } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { once } from 'node:events';

import { chromium } from 'playwright-core';

export const clientDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const binary = path.resolve(clientDir, process.env.MESSAGING_BIN ?? '../target/release/messaging');
export const artifactsDir = path.resolve(clientDir, process.env.ARTIFACTS_DIR ?? 'artifacts');
export const chromiumPath = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

/** A TCP port nobody listens on right now. */
export async function freePort() {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address();
  server.close();
  await once(server, 'close');
  return port;
}

/** Polls `check` until it returns a truthy value; fails after `timeoutMs` with `what`. */
export async function waitUntil(check, { timeoutMs = 15000, intervalMs = 50, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  let lastError;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? `: ${lastError.message}` : ''}`);
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/**
 * The messaging binary in dev mode, restartable on the same ports and database file.
 */
export class MessagingServer {
  /** `env`: extra environment variables for the binary (e.g. a small SOCKET_QUEUE_BYTES). */
  constructor({ env = {} } = {}) {
    this.env = env;
    this.dir = mkdtempSync(path.join(tmpdir(), 'messaging-browser-'));
    this.dbPath = path.join(this.dir, 'messaging.db');
    this.logPath = path.join(this.dir, 'server.log');
    this.process = null;
    this.starts = 0;
  }

  get origin() { return `http://127.0.0.1:${this.port}`; }
  get restBase() { return `${this.origin}/messaging`; }
  get socketPortUrl() { return `ws://127.0.0.1:${this.socketPort}/`; }

  async start() {
    if (!existsSync(binary)) throw new Error(`messaging binary not found at ${binary} (set MESSAGING_BIN or run cargo build --release)`);
    if (!this.port) {
      this.port = await freePort();
      this.socketPort = await freePort();
      this.grpcPort = await freePort();
    }
    this.starts += 1;
    const log = createWriteStream(this.logPath, { flags: 'a' });
    const child = spawn(binary, ['--dev'], {
      env: {
        PATH: process.env.PATH,
        JWT_SECRET: 'browser-test-secret',
        DATABASE_URL: `sqlite://${this.dbPath}?mode=rwc`,
        PORT: String(this.port),
        HOST: '127.0.0.1',
        SOCKET_PORT: String(this.socketPort),
        GRPC_PORT: String(this.grpcPort),
        GRPC_HOST: '127.0.0.1',
        RUST_LOG: process.env.RUST_LOG ?? 'warn',
        ...this.env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout.pipe(log, { end: false });
    child.stderr.pipe(log, { end: false });
    this.process = child;
    const exited = once(child, 'exit').then(([code, signal]) => {
      throw new Error(`messaging exited during start-up (code ${code}, signal ${signal}); see ${this.logPath}`);
    });
    exited.catch(() => {});
    await Promise.race([
      exited,
      waitUntil(async () => (await fetch(`${this.origin}/ready`)).ok, { timeoutMs: 30000, what: `${this.origin}/ready` }),
    ]);
    return this;
  }

  /** SIGTERM, and the exit (the contract allows 10 s for a graceful shutdown). */
  async stop() {
    const child = this.process;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    this.process = null;
    const exited = once(child, 'exit');
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 15000);
    await exited;
    clearTimeout(timer);
  }

  async restart() {
    await this.stop();
    await this.start();
  }

  /** SIGKILL, and the exit: a crash, with no close frames and no clean-up of its rows. */
  async kill() {
    const child = this.process;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    this.process = null;
    const exited = once(child, 'exit');
    child.kill('SIGKILL');
    await exited;
  }

  async dispose() {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** REST call from the test itself (not the page). */
  async rest(method, route, { body, token } = {}) {
    const headers = { 'Content-Type': 'application/json' };
    if (token) headers.Authorization = `Bearer ${token}`;
    const response = await fetch(`${this.restBase}${route}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await response.text();
    const json = text ? JSON.parse(text) : null;
    if (!response.ok) throw new Error(`${method} ${route} → ${response.status} ${text}`);
    return json;
  }
}

const CONTENT_TYPES = {
  js: 'text/javascript; charset=utf-8',
  mjs: 'text/javascript; charset=utf-8',
  ts: 'application/typescript; charset=utf-8',
  html: 'text/html; charset=utf-8',
  css: 'text/css; charset=utf-8',
  svg: 'image/svg+xml',
  png: 'image/png',
  ico: 'image/x-icon',
  md: 'text/markdown; charset=utf-8',
};

/** The working-tree file the binary would serve at `pathname` (see build.rs `embed_client`
 *  and src/edge/static_files.rs), or `null`. */
function clientFile(pathname) {
  const rel = ['/', '/demo', '/demo/'].includes(pathname) ? 'demo/index.html'
    : pathname.startsWith('/client/') ? decodeURIComponent(pathname.slice('/client/'.length)) : null;
  if (!rel) return null;
  const parts = rel.split('/');
  if (parts.some((part) => !part || part.startsWith('.'))) return null;
  if (parts.slice(0, -1).some((dir) => ['node_modules', 'test', 'tests', 'artifacts'].includes(dir))) return null;
  const type = CONTENT_TYPES[path.extname(rel).slice(1)];
  const file = path.join(clientDir, ...parts);
  return type && existsSync(file) ? { file, type } : null;
}

/** Serves the client and demo page from this working tree to every page of `context`. */
async function serveClientFromTree(context) {
  // A page answered by a route has no IP address, so Chromium counts it as public and blocks
  // its sockets to 127.0.0.1 unless Local Network Access is granted.
  await context.grantPermissions(['local-network-access']);
  const local = (url) => ['127.0.0.1', 'localhost'].includes(url.hostname)
    && (url.pathname.startsWith('/client/') || ['/', '/demo', '/demo/'].includes(url.pathname));
  await context.route(local, (route) => {
    const request = route.request();
    if (request.method() !== 'GET') return route.continue();
    const found = clientFile(new URL(request.url()).pathname);
    if (!found) return route.fulfill({ status: 404, body: '' });
    return route.fulfill({
      status: 200,
      body: readFileSync(found.file),
      headers: { 'content-type': found.type, 'cache-control': 'no-cache', 'access-control-allow-origin': '*' },
    });
  });
}

/** Debian's Chromium, headless, with a fresh profile directory. */
export async function launchBrowser() {
  if (!existsSync(chromiumPath)) throw new Error(`Chromium not found at ${chromiumPath} (apt-get install -y chromium)`);
  const profile = mkdtempSync(path.join(tmpdir(), 'messaging-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: chromiumPath,
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
    viewport: { width: 1200, height: 900 },
    deviceScaleFactor: 1,
    locale: 'en-US',
    timezoneId: 'UTC',
    colorScheme: 'light',
  });
  context.setDefaultTimeout(15000);
  if (process.env.CLIENT_FROM_BINARY !== '1') await serveClientFromTree(context);
  return {
    context,
    async close() {
      await context.close().catch(() => {});
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** Opens a page and records its uncaught errors, so a test can assert there were none.
 *  `beforeGoto(page)` runs before the page loads (e.g. to route its WebSockets). */
export async function openPage(context, url, { viewport, beforeGoto } = {}) {
  const page = await context.newPage();
  if (viewport) await page.setViewportSize(viewport);
  page.errors = [];
  page.on('pageerror', (error) => page.errors.push(error));
  await beforeGoto?.(page);
  await page.goto(url);
  return page;
}

/**
 * Routes every WebSocket of `page` to its server through Playwright, so that a test can cut
 * the page's sockets (`drop()`) and hold its reconnects back (`hold()`: each new socket is
 * closed with 1013 at once, as by a server that is not there) until `release()`. `urls`
 * lists the URL of every socket the page opened. Call before the page loads.
 */
export async function socketGate(page) {
  const gate = {
    urls: [],
    held: false,
    live: new Set(),
    hold() { gate.held = true; },
    release() { gate.held = false; },
    /** Closes both ends of every routed socket: the page sees 4000, the server a close. */
    async drop() {
      const pairs = [...gate.live];
      gate.live.clear();
      await Promise.all(pairs.flatMap(({ ws, server }) => [
        ws.close({ code: 4000, reason: 'dropped by the test' }).catch(() => {}),
        server.close({ code: 1000, reason: 'dropped by the test' }).catch(() => {}),
      ]));
    },
  };
  await page.routeWebSocket(() => true, (ws) => {
    gate.urls.push(ws.url());
    if (gate.held) {
      ws.close({ code: 1013, reason: 'held back by the test' }).catch(() => {});
      return;
    }
    // Messages and closes are forwarded both ways by default.
    gate.live.add({ ws, server: ws.connectToServer() });
  });
  return gate;
}

export function ensureArtifactsDir() {
  mkdirSync(artifactsDir, { recursive: true });
  return artifactsDir;
}
