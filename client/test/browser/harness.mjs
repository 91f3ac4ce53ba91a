// Shared plumbing of the browser tests: the release binary on free ports with a temp SQLite
// database, and Debian's headless Chromium driven by playwright-core.

import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { existsSync, mkdirSync, mkdtempSync, rmSync, createWriteStream } from 'node:fs';
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
  return {
    context,
    async close() {
      await context.close().catch(() => {});
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** Opens a page and records its uncaught errors, so a test can assert there were none. */
export async function openPage(context, url, { viewport } = {}) {
  const page = await context.newPage();
  if (viewport) await page.setViewportSize(viewport);
  page.errors = [];
  page.on('pageerror', (error) => page.errors.push(error));
  await page.goto(url);
  return page;
}

export function ensureArtifactsDir() {
  mkdirSync(artifactsDir, { recursive: true });
  return artifactsDir;
}
