// End-to-end test of the chat page in Debian's headless Chromium, driven by playwright-core.
// scripts/browser-test builds and starts the chat example and runs this with:
//   CHAT_URL          the running server, e.g. http://127.0.0.1:18080/ (https://… with
//                     scripts/browser-test --tls: then every page, socket and fetch goes
//                     over TLS, and the https-only case below runs)
//   CHAT_URL_A, CHAT_URL_B
//                     (optional, default CHAT_URL) the server of person A and the server of
//                     person B, when they are two (two chat processes joined through Redis,
//                     scripts/browser-test --redis). A is ann, and everyone who stands with
//                     her (her tabs, cleo, dave, una); B is bob (and vic). Pushes and /stats
//                     go to A's server (/stats to both, summed, where a count covers A and B).
//   CHAT_LOOPS        (optional, default 1) loops per server (scripts/browser-test --threads
//                     N). With more than one, A and B on one server are put on two different
//                     loops: B's page is reloaded until the `loop` in its socket's welcome
//                     is not A's (a new connection is a new draw of the kernel's
//                     SO_REUSEPORT hash), and every two-person case checks they still are.
//                     On two servers they are apart anyway; that is checked too.
//   CHAT_PUSH_TOKEN   the token it was started with (both servers)
//   CHAT_BIN          the chat binary (the restart test starts its own server with it)
//   CHAT_TLS_CERT, CHAT_TLS_KEY
//                     (https only) the PEM certificate and key the server was started
//                     with: the restart test starts its own server with them too. The
//                     certificate is self-signed: the browser contexts ignore HTTPS errors,
//                     and node's fetch trusts it through NODE_EXTRA_CA_CERTS.
//   CHAT_SCREENSHOT   where to save the 1280×800 screenshot (default
//                     ../../target/chat-screenshot.png); chat-1280.png, chat-390.png and
//                     chat-390-rooms.png are written beside it on every run
//
// Every page is watched through the Chrome DevTools Protocol (Network domain) for its
// WebSocket handshakes, so the test sees the 101's headers as Chromium got them: the chat
// offers permessage-deflate (shared mode) and Chromium must negotiate it. And for the
// `welcome` that opens each socket: the loop it says the connection is on.
//
// A person is a browser context (its own localStorage, so its own identity). The people at
// 1280×800 share one context and are told apart by origin (A's http://127.0.0.1:PORT and
// B's http://localhost:PORT, or https://…); the people on phones and the later visitors
// get contexts of their own.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdir, copyFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const CHAT_URL = process.env.CHAT_URL || process.env.CHAT_URL_A;
if (!CHAT_URL) throw new Error("CHAT_URL is not set (run scripts/browser-test)");
/** Person A's server (ann's). */
const BASE = process.env.CHAT_URL_A || CHAT_URL;
/** Person B's (bob's): another origin than A's even on the same server (localhost). */
const ALT = (process.env.CHAT_URL_B || CHAT_URL).replace("//127.0.0.1:", "//localhost:");
if (new URL(BASE).origin === new URL(ALT).origin) {
  throw new Error(`A and B need two origins (their own localStorage), not ${BASE} and ${ALT} (B's 127.0.0.1 becomes localhost)`);
}
if (new URL(BASE).protocol !== new URL(ALT).protocol) throw new Error(`CHAT_URL_A ${BASE} and CHAT_URL_B ${ALT}: one scheme`);
const TLS = new URL(BASE).protocol === "https:";
/** One server for A and B (by port: both are on loopback), or two. */
const SAME_SERVER = new URL(BASE).port === new URL(ALT).port;
const SERVERS = SAME_SERVER ? [BASE] : [BASE, ALT];
const LOOPS = Number(process.env.CHAT_LOOPS || 1);
if (!(Number.isInteger(LOOPS) && LOOPS >= 1)) throw new Error(`CHAT_LOOPS=${process.env.CHAT_LOOPS}: a number of loops`);
/** A and B are to be (and are checked to be) on different loops, or different servers. */
const SPREAD = !SAME_SERVER || LOOPS > 1;
const TRIES = 20; // reloads to put B on another loop than A: each a fair draw with 2 loops
const TLS_FILES = ["--tls-cert", process.env.CHAT_TLS_CERT, "--tls-key", process.env.CHAT_TLS_KEY];
if (TLS && !(process.env.CHAT_TLS_CERT && process.env.CHAT_TLS_KEY)) {
  throw new Error("CHAT_URL is https:// but CHAT_TLS_CERT/CHAT_TLS_KEY are not set (run scripts/browser-test --tls)");
}
const TOKEN = process.env.CHAT_PUSH_TOKEN || "";
const SCREENSHOT = process.env.CHAT_SCREENSHOT || path.join(HERE, "../../target/chat-screenshot.png");
const SHOTS = path.dirname(SCREENSHOT);
const STEP = 10_000; // any single wait
const TEST = 60_000; // any test
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };

let browser;
let desk; // the context of the people at 1280×800
const contexts = [];
const pages = {};
const dialogs = [];
const pageErrors = [];
const handshakes = new Map(); // page -> [{status, headers, requestHeaders, url}], as Chromium saw them
const welcomes = new Map(); // page -> [{loop, instance, url}]: each socket's welcome, as Chromium got it
const frames = new Map(); // page -> [{bytes, type, seq}]: every text frame its sockets got (inflated)
const placements = []; // [{what, a, b}]: where A and B were in each two-person case
const moves = []; // [{who, reloads, took}]: what placeApart did

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--disable-quic"],
    timeout: 30_000,
  });
  desk = await person(DESKTOP);
  await mkdir(SHOTS, { recursive: true });
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
});

/** A new person: a browser context of its own (own storage), with this viewport. */
async function person(viewport) {
  // Over https the certificate is self-signed: the context takes it (for pages and sockets).
  const context = await browser.newContext({ viewport, ignoreHTTPSErrors: TLS });
  context.setDefaultTimeout(STEP);
  contexts.push(context);
  return context;
}

async function open(context, url) {
  const page = await context.newPage();
  // Before the page loads: it opens its socket at once.
  const shakes = [];
  handshakes.set(page, shakes);
  const cdp = await context.newCDPSession(page);
  const urls = new Map(); // requestId -> the socket's URL
  cdp.on("Network.webSocketCreated", ({ requestId, url: wsUrl }) => urls.set(requestId, wsUrl));
  cdp.on("Network.webSocketHandshakeResponseReceived", ({ requestId, response }) =>
    shakes.push({ ...response, url: urls.get(requestId) }));
  const hellos = [];
  welcomes.set(page, hellos);
  const got = [];
  frames.set(page, got);
  cdp.on("Network.webSocketFrameReceived", ({ requestId, response }) => {
    if (response.opcode !== 1) return;
    let msg;
    try { msg = JSON.parse(response.payloadData); } catch { return; /* the page's business */ }
    got.push({ bytes: Buffer.byteLength(response.payloadData), type: msg?.type, seq: msg?.seq });
    if (msg?.type === "welcome") hellos.push({ loop: msg.loop, instance: msg.instance, url: urls.get(requestId) });
  });
  await cdp.send("Network.enable");
  page.on("dialog", async (d) => { dialogs.push(d.message()); await d.dismiss().catch(() => {}); });
  page.on("pageerror", (e) => pageErrors.push(`${url}: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error" && /Content Security Policy/i.test(m.text())) pageErrors.push(`${url}: ${m.text()}`);
  });
  await page.goto(url, { timeout: STEP });
  return page;
}

async function signIn(page, name) {
  await page.locator("#login").waitFor({ state: "visible" });
  await page.fill("#name-input", name);
  await page.press("#name-input", "Enter");
  await online(page);
  await page.locator("#me-name", { hasText: name }).waitFor();
}

const online = (page) => page.locator('#status[data-state="online"]').waitFor();

async function say(page, text) {
  await page.locator("#text:enabled").waitFor();
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

/** The message rows of the current view: [{author, text}] (system lines: {system}). */
function rows(page) {
  return page.$$eval("#messages .msg", (els) => els.map((el) => el.classList.contains("system") || el.classList.contains("divider")
    ? { system: el.textContent }
    : { author: el.querySelector(".author").textContent, text: el.querySelector(".text").textContent }));
}

async function waitForRow(page, author, text) {
  await page.locator("#messages .msg", {
    has: page.locator(".author", { hasText: author }),
  }).filter({ has: page.locator(".text").getByText(text, { exact: true }) }).first().waitFor();
}

/** A header's value from a CDP headers object (names in any case), or undefined. */
function header(headers, name) {
  const key = Object.keys(headers || {}).find((k) => k.toLowerCase() === name);
  return key === undefined ? undefined : headers[key];
}

/** The permessage-deflate the chat offers, in the 101 Chromium got for `page`'s socket. */
function checkDeflate(page, who) {
  const shakes = handshakes.get(page) || [];
  assert.ok(shakes.length > 0, `${who}: no WebSocket handshake seen`);
  const last = shakes.at(-1);
  assert.equal(last.status, 101, `${who}: ${JSON.stringify(last)}`);
  const ext = header(last.headers, "sec-websocket-extensions");
  assert.match(ext ?? "", /^permessage-deflate(\s*;|$)/, `${who}: the 101 said ${JSON.stringify(last.headers)}`);
  // Shared mode: the server resets after every message, and asks the browser to as well.
  assert.match(ext, /;\s*server_no_context_takeover\b/, ext);
  assert.match(ext, /;\s*client_no_context_takeover\b/, ext);
  return { ext, offered: header(last.requestHeaders, "sec-websocket-extensions") };
}

async function members(page) {
  return page.$$eval("#members li", (els) => els.map((el) => el.querySelector("span").textContent));
}

async function post(pathname, body, token = TOKEN) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const res = await fetch(new URL(pathname, BASE), { method: "POST", headers, body: JSON.stringify(body), signal: AbortSignal.timeout(STEP) });
  return { status: res.status, json: await res.json() };
}

/** GET /stats of a server: A's unless told. */
async function stats(base = BASE) {
  return (await fetch(new URL("/stats", base), { signal: AbortSignal.timeout(STEP) })).json();
}

/** The library's counters (the numbers at the top of /stats) of A's and B's servers, summed. */
async function statsOfBoth() {
  const sum = {};
  for (const one of await Promise.all(SERVERS.map((base) => stats(base)))) {
    for (const [key, value] of Object.entries(one)) {
      if (typeof value === "number") sum[key] = (sum[key] ?? 0) + value;
    }
  }
  return sum;
}

/**
 * A push's `delivered`: `n` connections, when A and B share a server; a server of two
 * counts what it knows of, so there at most `n` (that everyone got it, the pages say).
 */
function checkDelivered(json, n, what) {
  if (SAME_SERVER) assert.equal(json.delivered, n, what);
  else assert.ok(Number.isInteger(json.delivered) && json.delivered <= n, `${what}: ${JSON.stringify(json)}`);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The welcome of `page`'s newest socket, once there are more than `seen` of them. */
async function welcomeOf(page, seen = 0) {
  const got = welcomes.get(page);
  for (let waited = 0; got.length <= seen; waited += 20) {
    assert.ok(waited < STEP, `${page.url()}: no welcome on its socket within ${STEP} ms`);
    await sleep(20);
  }
  return got.at(-1);
}

/** Where `page`'s socket is, from its welcome: "server :PORT, loop N". */
async function placeOf(page) {
  const w = await welcomeOf(page);
  if (LOOPS > 1) {
    assert.ok(Number.isInteger(w.loop) && w.loop >= 0 && w.loop < LOOPS,
      `${page.url()}: its welcome says loop ${w.loop}, not one of 0..${LOOPS - 1} (the chat's welcome needs its "loop")`);
  }
  return `server :${new URL(w.url ?? page.url()).port}, loop ${w.loop ?? "?"}`;
}

/**
 * Puts `mover`'s socket on another loop (or server) than `other`'s: reloads `mover`, a new
 * connection each time and so a new draw of the kernel's SO_REUSEPORT hash, until it is
 * (at most TRIES times). A reload falls in the presence grace period: nobody sees it go.
 * Nothing to do unless SPREAD. Returns the reloads it took.
 */
async function placeApart(mover, other, who) {
  if (!SPREAD) return 0;
  const there = await placeOf(other);
  const started = Date.now();
  for (let reloads = 0; ; reloads++) {
    const here = await placeOf(mover);
    if (here !== there) {
      moves.push({ who, reloads, took: Date.now() - started });
      return reloads;
    }
    assert.ok(SAME_SERVER, `${who}: on ${here}, as the other, though their servers are two`);
    assert.ok(reloads < TRIES, `${who}: still on ${here}, as the other, after ${TRIES} reloads`);
    const seen = welcomes.get(mover).length;
    await mover.reload({ timeout: STEP });
    await welcomeOf(mover, seen);
    await online(mover);
  }
}

/**
 * Notes where A and B are at the end of a two-person case, and (SPREAD) that it is two
 * loops or servers: what they sent each other went from one to the other.
 */
async function checkApart(what, a = pages.ann, b = pages.bob) {
  const [at, bt] = [await placeOf(a), await placeOf(b)];
  placements.push({ what, a: at, b: bt });
  if (SPREAD) assert.notEqual(at, bt, `${what}: A and B on one loop`);
}

/** Two animation frames: scroll events and layout have run. */
const settle = (page) => page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));

/**
 * The page fits its viewport: it does not grow past it or scroll sideways; the message box,
 * Send and Sign out are on screen; the last message row is inside the message list and on
 * screen (and is `newest`, if given).
 */
async function checkLayout(page, newest, what = "") {
  await settle(page);
  const m = await page.evaluate(() => {
    const box = (el) => { const r = el.getBoundingClientRect(); return { top: r.top, bottom: r.bottom, left: r.left, right: r.right, width: r.width }; };
    const q = (sel) => box(document.querySelector(sel));
    const last = [...document.querySelectorAll("#messages .msg")].at(-1);
    return {
      vw: innerWidth, vh: innerHeight,
      pageW: document.documentElement.scrollWidth, pageH: document.documentElement.scrollHeight,
      text: q("#text"), send: q("#send"), signout: q("#signout"), messages: q("#messages"),
      last: last ? { ...box(last), text: last.querySelector(".text") ? last.querySelector(".text").textContent : last.textContent } : null,
    };
  });
  const at = `${what} at ${m.vw}×${m.vh}`;
  assert.ok(m.pageH <= m.vh, `the page grows past the viewport ${at}: ${m.pageH} px`);
  assert.ok(m.pageW <= m.vw, `the page scrolls sideways ${at}: ${m.pageW} px`);
  for (const name of ["text", "send", "signout"]) {
    const r = m[name];
    assert.ok(r.top >= 0 && r.bottom <= m.vh && r.left >= 0 && r.right <= m.vw, `#${name} is off screen ${at}: ${JSON.stringify(r)}`);
  }
  assert.ok(m.last, `no message rows ${at}`);
  if (newest) assert.equal(m.last.text, newest, `the last row ${at}`);
  assert.ok(m.last.top >= m.messages.top - 1 && m.last.bottom <= m.messages.bottom + 1 && m.last.bottom <= m.vh,
    `the newest message is not in view ${at}: ${JSON.stringify(m.last)} in ${JSON.stringify(m.messages)}`);
  return m;
}

test("a long history opens at the newest message, the message box on screen (1280×800)", { timeout: TEST }, async () => {
  // 60 lines before anyone looks; the server keeps the last 50 (--history default).
  for (let i = 1; i <= 60; i++) {
    const res = await post("/push", { room: "lobby", text: `history line ${i}`, from: "ci" });
    assert.equal(res.status, 200);
  }
  pages.ann = await open(desk, BASE);
  await signIn(pages.ann, "ann");
  await waitForRow(pages.ann, "ci", "history line 60");
  await checkLayout(pages.ann, "history line 60", "the lobby");
  const texts = (await rows(pages.ann)).map((r) => r.text);
  assert.equal(texts.length, 50);
  assert.equal(texts[0], "history line 11");

  // Scrolled up, the list stays put when a message arrives, and offers to jump down.
  await pages.ann.locator("#messages").hover();
  await pages.ann.mouse.wheel(0, -20_000);
  await pages.ann.waitForFunction(() => document.getElementById("messages").scrollTop === 0);
  await settle(pages.ann);
  await post("/push", { room: "lobby", text: "history line 61", from: "ci" });
  await pages.ann.locator("#jump").waitFor();
  assert.equal(await pages.ann.evaluate(() => document.getElementById("messages").scrollTop), 0, "the reader was not moved");
  await pages.ann.click("#jump");
  await pages.ann.locator("#jump").waitFor({ state: "hidden" });
  await checkLayout(pages.ann, "history line 61", "after jumping down");
});

test("two people join and chat in a room", { timeout: TEST }, async (t) => {
  pages.bob = await open(desk, ALT);
  await signIn(pages.bob, "bob");
  // With two loops (or servers), bob on another than ann, for this and every case after.
  const reloads = await placeApart(pages.bob, pages.ann, "bob");
  t.diagnostic(`ann on ${await placeOf(pages.ann)}, bob on ${await placeOf(pages.bob)}` +
    (SPREAD ? ` (${reloads} reload${reloads === 1 ? "" : "s"} of bob's page to get there)` : ""));

  // Both land in the lobby and see each other in its member list.
  await pages.ann.locator("#view-title", { hasText: "# lobby" }).waitFor();
  await pages.ann.locator("#members li", { hasText: "bob" }).waitFor();
  assert.deepEqual(await members(pages.ann), ["ann", "bob"]);
  assert.deepEqual(await members(pages.bob), ["ann", "bob"]);
  await pages.ann.locator("#messages .msg.system", { hasText: "bob joined" }).waitFor();

  // ann creates #rust; bob sees it in the room list (pushed counts) and clicks it.
  await pages.ann.fill("#join-input", "rust");
  await pages.ann.press("#join-input", "Enter");
  await pages.ann.locator("#view-title", { hasText: "# rust" }).waitFor();
  assert.equal(await pages.ann.inputValue("#join-input"), "", "emptied once joined");
  const rustForBob = pages.bob.locator('#rooms li[data-room="rust"]');
  await rustForBob.waitFor();
  await rustForBob.click();
  await pages.bob.locator("#view-title", { hasText: "# rust" }).waitFor();
  await pages.ann.locator("#members li", { hasText: "bob" }).waitFor();
  await pages.ann.locator('#rooms li[data-room="rust"] .count', { hasText: "2" }).waitFor();
  // An empty room says so, and says what a room is.
  await pages.bob.locator("#messages .intro", { hasText: "Nobody has written here yet" }).waitFor();

  await say(pages.ann, "hello from ann");
  await waitForRow(pages.bob, "ann", "hello from ann");
  await say(pages.bob, "hi ann, bob here");
  await waitForRow(pages.ann, "bob", "hi ann, bob here");
  const annRows = (await rows(pages.ann)).filter((r) => !r.system);
  assert.deepEqual(annRows, [
    { author: "ann", text: "hello from ann" },
    { author: "bob", text: "hi ann, bob here" },
  ]);
  // The lobby did not get the rust messages.
  await pages.bob.click('#rooms li[data-room="lobby"]');
  await pages.bob.locator("#view-title", { hasText: "# lobby" }).waitFor();
  assert.ok(!(await rows(pages.bob)).some((r) => r.text === "hello from ann"));
  // Back in rust, ann's message while bob was away is an unread badge on rust, a pill
  // apart from the member count.
  await say(pages.ann, "are you in the lobby?");
  const rust = pages.bob.locator('#rooms li[data-room="rust"]');
  await rust.locator(".badge", { hasText: "1" }).waitFor();
  assert.equal(await rust.locator(".badge").getAttribute("title"), "1 unread");
  assert.equal(await rust.locator(".count").getAttribute("title"), "2 members online");
  await rust.click();
  await waitForRow(pages.bob, "ann", "are you in the lobby?");
  await rust.locator(".badge").waitFor({ state: "detached" });
  await checkApart("a room: presence, messages both ways, an unread badge");
});

test("the socket negotiates permessage-deflate, and a long message arrives intact", { timeout: TEST }, async (t) => {
  for (const who of ["ann", "bob"]) {
    const { ext, offered } = checkDeflate(pages[who], who);
    t.diagnostic(`${who}: offered "${offered}", 101 Sec-WebSocket-Extensions: ${ext}`);
  }
  // Several hundred characters, well over the chat's min_size (128 bytes): compressed once
  // by the server for both recipients, and by Chromium on the way in. Non-ASCII too, so a
  // broken inflate could not pass for a UTF-8 slip.
  const long = Array.from({ length: 8 }, (_, i) =>
    `Line ${i + 1} of the release notes: every room message is now compressed once, whatever the room's size — naïve café ☕ ${i * 37}.`).join(" ");
  assert.ok(long.length >= 600 && long.length <= 1000, `${long.length} characters`);
  // (Each in front for its clicks: a tab behind another gets few animation frames, and a
  // click waits for them. bob's, the last opened, is in front again at the end.)
  for (const page of [pages.ann, pages.bob]) {
    await page.bringToFront();
    await page.click('#rooms li[data-room="lobby"]');
    await page.locator("#view-title", { hasText: "# lobby" }).waitFor();
  }
  // What the pages got from here on (read before the counters: a frame counted after
  // them was received after this).
  const seen = [pages.ann, pages.bob].map((page) => frames.get(page).length);
  const before = await statsOfBoth();
  await say(pages.ann, long);
  for (const page of [pages.bob, pages.ann]) {
    await waitForRow(page, "ann", long);
    assert.deepEqual((await rows(page)).at(-1), { author: "ann", text: long });
  }
  // It went compressed both ways: the server inflated ann's frame, and compressed the
  // message once for the two connections in the lobby (once per loop, or server, with
  // one of them: on two, once each).
  const places = new Set([await placeOf(pages.ann), await placeOf(pages.bob)]).size;
  // (Another loop's counters are as of its last turn: until they show both deliveries.)
  let after;
  for (let waited = 0; ; waited += 50) {
    after = await statsOfBoth();
    if ((after.compressed_out - before.compressed_out >= 2 && after.inflate_bytes_in > before.inflate_bytes_in) || waited >= STEP) break;
    await sleep(50);
  }
  await sleep(100); // what the counters saw is on the pages by now
  // Every frame of 128 bytes or more (the chat's min_size) that ann or bob got since, by
  // its seq (one publish: one frame, whoever gets it), and the servers it went out from:
  // the long message, and anything else that happened meanwhile (a room_counts, a
  // presence: published once and compressed once per server that has a recipient too).
  const big = new Map(); // seq -> {type, from: Set of servers}
  for (const [i, page] of [pages.ann, pages.bob].entries()) {
    for (const f of frames.get(page).slice(seen[i]).filter((f) => f.bytes >= 128)) {
      const one = big.get(f.seq) ?? { type: f.type, from: new Set() };
      one.from.add(await placeOf(page));
      big.set(f.seq, one);
    }
  }
  const budget = [...big.values()].reduce((n, f) => n + f.from.size, 0);
  const what = [...big.values()].map((f) => `${f.type} to ${f.from.size}`).join(", ");
  const d = (key) => after[key] - before[key];
  t.diagnostic(`compressions +${d("compressions")}, compressed frames out +${d("compressed_out")}, ` +
    `${d("compress_bytes_in")} -> ${d("compress_bytes_out")} bytes out, ${d("inflate_bytes_in")} -> ${d("inflate_bytes_out")} bytes in; ` +
    `frames of 128 bytes or more: ${what}`);
  assert.ok(d("inflate_bytes_in") > 0 && d("inflate_bytes_out") > long.length, "ann's frame came compressed");
  assert.ok(d("inflate_bytes_in") < d("inflate_bytes_out"));
  assert.ok(d("compressions") >= 1, "the message was compressed");
  assert.ok(d("compressed_out") >= 2, "ann and bob got it compressed");
  if (places === 1) assert.ok(d("compressions") < d("compressed_out"), "once for both, not once each");
  else {
    // One recipient per place: once per recipient would look the same, so this holds the
    // count to once per frame and place, the long message and whatever came with it.
    assert.ok(big.size >= 1 && budget >= places, `the long message among the frames: ${what}`);
    assert.ok(d("compressions") <= budget,
      `once per loop (or server) with a recipient, per frame (${budget}: ${what}), not once per recipient: ${d("compressions")}`);
  }
  assert.ok(d("compress_bytes_out") < d("compress_bytes_in") / 2, "and it got smaller");
  for (const page of [pages.ann, pages.bob]) {
    await page.bringToFront();
    await page.click('#rooms li[data-room="rust"]');
    await page.locator("#view-title", { hasText: "# rust" }).waitFor();
  }
  await checkApart("a long message, compressed");
});

test("private messages, to every tab of the recipient", { timeout: TEST }, async () => {
  // ann's second tab: same origin, same localStorage token, same user.
  pages.ann2 = await open(desk, BASE);
  await online(pages.ann2);
  await pages.ann2.locator("#me-name", { hasText: "ann" }).waitFor();
  assert.equal(await pages.ann2.locator("#login").isVisible(), false, "no name prompt: the token says who");

  // bob clicks ann in the lobby's member list and writes to her.
  await pages.bob.click('#rooms li[data-room="lobby"]');
  await pages.bob.locator("#members li", { hasText: "ann" }).click();
  await pages.bob.locator("#view-title", { hasText: "@ ann" }).waitFor();
  await say(pages.bob, "psst, ann");
  await waitForRow(pages.bob, "bob", "psst, ann");
  for (const page of [pages.ann, pages.ann2]) {
    const convo = page.locator("#dms li", { hasText: "bob" });
    await convo.locator(".badge", { hasText: "1" }).waitFor();
    await convo.click();
    await waitForRow(page, "bob", "psst, ann");
  }
  await say(pages.ann2, "got it (tab 2)");
  await waitForRow(pages.bob, "ann", "got it (tab 2)");
  await waitForRow(pages.ann, "ann", "got it (tab 2)"); // the echo reaches ann's other tab
  assert.deepEqual((await rows(pages.ann)), [
    { author: "bob", text: "psst, ann" },
    { author: "ann", text: "got it (tab 2)" },
  ]);
  await pages.ann2.close();
  delete pages.ann2;
  await checkApart("private messages");
});

test("text is shown as text, never as HTML", { timeout: TEST }, async () => {
  const evil = ["<script>alert(1)</script>", '<img src=x onerror="window.__xss=1;alert(2)">'];
  await pages.ann.click('#rooms li[data-room="rust"]');
  await pages.bob.click('#rooms li[data-room="rust"]');
  for (const text of evil) await say(pages.ann, text);
  // A push whose sender label is HTML too.
  const res = await post("/push", { room: "rust", text: "<b>bold?</b>", from: "<img src=y onerror=alert(3)>" });
  assert.equal(res.status, 200);
  for (const page of [pages.ann, pages.bob]) {
    for (const text of evil) await waitForRow(page, "ann", text);
    await waitForRow(page, "<img src=y onerror=alert(3)>", "<b>bold?</b>");
    const found = await page.evaluate(() => ({
      xss: window.__xss,
      img: document.querySelectorAll("#messages img, #app img").length,
      script: document.querySelectorAll("#messages script").length,
      bold: document.querySelectorAll("#messages b").length,
    }));
    assert.deepEqual(found, { xss: undefined, img: 0, script: 0, bold: 0 });
  }
  assert.deepEqual(dialogs, [], "no alert ran");
  await checkApart("text as text");
});

test("pushes: to a room in the room, to everyone or to one user in Notifications only", { timeout: TEST }, async () => {
  const res = await post("/push", { room: "rust", text: "deploy finished", from: "ci" });
  assert.equal(res.status, 200);
  assert.equal(res.json.ok, true);
  checkDelivered(res.json, 2, "one connection each for ann and bob");
  for (const page of [pages.ann, pages.bob]) await waitForRow(page, "ci", "deploy finished");

  // bob has his conversation with ann open, ann has #rust open.
  await pages.bob.locator("#dms li", { hasText: "ann" }).click();
  await pages.bob.locator("#view-title", { hasText: "@ ann" }).waitFor();
  const dm = await rows(pages.bob);
  const rust = await rows(pages.ann);
  assert.deepEqual(dm, [{ author: "bob", text: "psst, ann" }, { author: "ann", text: "got it (tab 2)" }]);

  const all = await post("/push", { all: true, text: "maintenance at 17:00" });
  checkDelivered(all.json, 2, "to all: ann and bob");
  for (const page of [pages.ann, pages.bob]) {
    await page.locator("#toast", { hasText: "maintenance at 17:00" }).waitFor();
    await page.locator("#notices-item .badge", { hasText: "1" }).waitFor();
  }
  assert.deepEqual(await rows(pages.bob), dm, "not filed into the open private conversation");
  assert.deepEqual(await rows(pages.ann), rust, "not filed into the open room");
  // It is in Notifications; back in the conversation it is still not there.
  await pages.bob.click("#notices-item");
  await pages.bob.locator("#view-title", { hasText: "Notifications" }).waitFor();
  assert.deepEqual(await rows(pages.bob), [{ author: "server", text: "maintenance at 17:00" }]);
  assert.equal(await pages.bob.locator("#text").isDisabled(), true, "nothing to answer to");
  await pages.bob.locator("#dms li", { hasText: "ann" }).click();
  await pages.bob.locator("#view-title", { hasText: "@ ann" }).waitFor();
  assert.deepEqual(await rows(pages.bob), dm);

  // To one user: bob only; the toast opens Notifications.
  const one = await post("/push", { user: "bob", text: "your build is green", from: "ci" });
  checkDelivered(one.json, 1, "to bob");
  await pages.bob.locator("#toast", { hasText: "your build is green" }).click();
  await pages.bob.locator("#view-title", { hasText: "Notifications" }).waitFor();
  assert.deepEqual(await rows(pages.bob), [
    { author: "server", text: "maintenance at 17:00" },
    { author: "ci", text: "your build is green" },
  ]);
  assert.deepEqual(await rows(pages.ann), rust);
  await pages.ann.click("#notices-item");
  assert.deepEqual(await rows(pages.ann), [{ author: "server", text: "maintenance at 17:00" }]);
  await pages.ann.click('#rooms li[data-room="rust"]');

  const refused = await post("/push", { all: true, text: "x" }, "wrong-token");
  assert.equal(refused.status, TOKEN ? 401 : 200);
  await checkApart("pushes");
});

test("a reload reconnects as the same user and shows the history", { timeout: TEST }, async () => {
  await pages.bob.reload({ timeout: STEP });
  await online(pages.bob);
  await pages.bob.locator("#me-name", { hasText: "bob" }).waitFor();
  // A new socket: maybe on ann's loop now. If so, reloads until it is not.
  await placeApart(pages.bob, pages.ann, "bob");
  const rust = pages.bob.locator('#rooms li[data-room="rust"].joined');
  await rust.waitFor();
  await rust.click();
  await waitForRow(pages.bob, "ann", "hello from ann");
  await waitForRow(pages.bob, "ci", "deploy finished");
  const texts = (await rows(pages.bob)).filter((r) => !r.system).map((r) => r.text);
  assert.deepEqual(texts, ["hello from ann", "hi ann, bob here", "are you in the lobby?", ...["<script>alert(1)</script>", '<img src=x onerror="window.__xss=1;alert(2)">'], "<b>bold?</b>", "deploy finished"]);
  // Still one user: ann saw no leave or join (the reload fell in the grace period).
  await say(pages.bob, "back after a reload");
  await waitForRow(pages.ann, "bob", "back after a reload");
  const annSystem = (await rows(pages.ann)).filter((r) => r.system).map((r) => r.system);
  assert.deepEqual(annSystem, ["bob joined"]);
  await checkApart("a reload");
});

test("screenshot at 1280×800", { timeout: TEST }, async () => {
  await pages.ann.bringToFront();
  await say(pages.ann, "Looks tidy.");
  await waitForRow(pages.bob, "ann", "Looks tidy.");
  // A toast left from the pushes goes by itself (clicking it would open Notifications).
  await pages.ann.locator("#toast").waitFor({ state: "hidden", timeout: 8000 });
  await checkLayout(pages.ann, "Looks tidy.", "#rust");
  await pages.ann.screenshot({ path: path.join(SHOTS, "chat-1280.png") });
  await copyFile(path.join(SHOTS, "chat-1280.png"), SCREENSHOT);
  await checkApart("a message before the screenshot");
});

test("leaving a room", { timeout: TEST }, async () => {
  await pages.ann.fill("#join-input", "tmp");
  await pages.ann.press("#join-input", "Enter");
  await pages.ann.locator("#view-title", { hasText: "# tmp" }).waitFor();
  const tmp = pages.ann.locator('#rooms li[data-room="tmp"]');
  await tmp.hover();
  await tmp.locator("button.leave").click();
  await pages.ann.locator('#rooms li[data-room="tmp"]:not(.joined)').waitFor();
  await pages.ann.locator("#view-title", { hasText: "# tmp" }).waitFor({ state: "detached" });
  const saved = await pages.ann.evaluate(() => JSON.parse(localStorage.getItem("chat.rooms")));
  assert.deepEqual(saved.sort(), ["lobby", "rust"]);
});

test("on a phone (390×844): full-width conversation, rooms and members behind toggles", { timeout: TEST }, async () => {
  const newest = "newest line for the phone";
  await post("/push", { room: "lobby", text: newest, from: "ci" });
  pages.cleo = await open(await person(PHONE), BASE);
  const cleo = pages.cleo;
  await signIn(cleo, "cleo");
  await placeApart(cleo, pages.bob, "cleo"); // she writes to bob below
  await waitForRow(cleo, "ci", newest);
  // Both panels are folded away; the conversation has the whole width.
  assert.equal(await cleo.locator("#side").isVisible(), false);
  assert.equal(await cleo.locator("#people").isVisible(), false);
  const m = await checkLayout(cleo, newest, "the lobby");
  assert.ok(m.messages.width >= PHONE.width - 2, `the conversation is ${m.messages.width} px wide`);

  // Rooms through the drawer: picking #rust joins it and closes the drawer.
  await cleo.click("#toggle-side");
  await cleo.locator("#side").waitFor({ state: "visible" });
  await cleo.locator('#rooms li[data-room="rust"]').click();
  await cleo.locator("#view-title", { hasText: "# rust" }).waitFor();
  await cleo.locator("#side").waitFor({ state: "hidden" });
  await say(cleo, "hello from a phone");
  await waitForRow(cleo, "cleo", "hello from a phone");
  await waitForRow(pages.bob, "cleo", "hello from a phone");
  await checkLayout(cleo, "hello from a phone", "#rust");
  // And back to the lobby the same way, where the list is at its newest again.
  await cleo.click("#toggle-side");
  await cleo.locator('#rooms li[data-room="lobby"]').click();
  await cleo.locator("#view-title", { hasText: "# lobby" }).waitFor();
  await cleo.locator("#side").waitFor({ state: "hidden" });
  await checkLayout(cleo, null, "back in the lobby");

  // Members through theirs: a private message to bob.
  await cleo.click("#toggle-people");
  await cleo.locator("#people").waitFor({ state: "visible" });
  await cleo.locator("#members li", { hasText: "bob" }).click();
  await cleo.locator("#view-title", { hasText: "@ bob" }).waitFor();
  await cleo.locator("#people").waitFor({ state: "hidden" });
  await say(cleo, "hi bob, from a phone");
  await waitForRow(cleo, "cleo", "hi bob, from a phone");
  await pages.bob.locator("#dms li", { hasText: "cleo" }).locator(".badge", { hasText: "1" }).waitFor();

  // The screenshots: the conversation, and the room drawer.
  await cleo.click("#toggle-side");
  await cleo.locator('#rooms li[data-room="rust"]').click();
  await cleo.locator("#view-title", { hasText: "# rust" }).waitFor();
  await cleo.locator("#side").waitFor({ state: "hidden" });
  await checkLayout(cleo, "hello from a phone", "#rust");
  await cleo.screenshot({ path: path.join(SHOTS, "chat-390.png") });
  await cleo.click("#toggle-side");
  await cleo.locator("#side").waitFor({ state: "visible" });
  await settle(cleo);
  await cleo.waitForTimeout(300); // the drawer's slide
  await cleo.screenshot({ path: path.join(SHOTS, "chat-390-rooms.png") });
  await cleo.click("#scrim", { position: { x: PHONE.width - 20, y: PHONE.height / 2 } });
  await cleo.locator("#side").waitFor({ state: "hidden" });
  await checkApart("a phone (cleo) and bob", cleo, pages.bob);
});

test("the layout holds from 360 to 2560 px wide", { timeout: TEST }, async () => {
  const page = pages.cleo;
  for (const [width, height] of [[360, 640], [390, 844], [600, 900], [768, 1024], [1024, 768], [1280, 800], [1920, 1080], [2560, 1440]]) {
    await page.setViewportSize({ width, height });
    const m = await checkLayout(page, "hello from a phone", "#rust");
    const side = await page.locator("#side").isVisible();
    const people = await page.locator("#people").isVisible();
    assert.equal(side, width > 700, `room list shown at ${width}`);
    assert.equal(people, width > 1000, `member list shown at ${width}`);
    const others = (side ? 240 : 0) + (people ? 220 : 0);
    assert.ok(m.messages.width >= width - others - 22, `the conversation is ${m.messages.width} px of ${width}`);
  }
  await page.setViewportSize(PHONE);
});

test("errors are sentences, and what was typed stays", { timeout: TEST }, async () => {
  const cleo = pages.cleo;
  // A room name the server would refuse: explained at once, the name left to be fixed.
  await cleo.click("#toggle-side");
  await cleo.fill("#join-input", "no spaces");
  await cleo.press("#join-input", "Enter");
  const toast = cleo.locator("#toast.error");
  await toast.waitFor();
  assert.equal(await toast.locator(".body").textContent(), "Room names are 1 to 32 letters, digits, - or _ (no spaces).");
  assert.equal(await cleo.inputValue("#join-input"), "no spaces");
  await cleo.fill("#join-input", "");
  await cleo.click("#scrim", { position: { x: PHONE.width - 20, y: PHONE.height / 2 } });
  await toast.click();
  await toast.waitFor({ state: "hidden" });

  // A private message the server refuses (dave closed his page): a sentence, not the
  // code, and the text goes back into the message box.
  const dave = await open(await person(DESKTOP), BASE);
  await signIn(dave, "dave");
  await cleo.click("#toggle-side");
  await cleo.locator('#rooms li[data-room="lobby"]').click();
  await cleo.click("#toggle-people");
  await cleo.locator("#members li", { hasText: "dave" }).click();
  await cleo.locator("#view-title", { hasText: "@ dave" }).waitFor();
  const before = (await stats()).chat.users_online;
  await dave.close();
  for (let i = 0; (await stats()).chat.users_online !== before - 1; i++) {
    assert.ok(i < 100, "dave's page did not go away");
    await new Promise((r) => setTimeout(r, 50));
  }
  await say(cleo, "are you there?");
  await toast.waitFor();
  assert.equal(await toast.locator(".body").textContent(), "dave is not connected: your message was not sent.");
  assert.equal(await toast.getAttribute("data-code"), "user_offline");
  assert.equal(await cleo.inputValue("#text"), "are you there?");
  assert.deepEqual(await rows(cleo), []);
});

test("sign out, then sign in with the same name at once", { timeout: TEST }, async () => {
  const ann = pages.ann;
  await pages.bob.click('#rooms li[data-room="lobby"]');
  await pages.bob.locator("#members li", { hasText: "ann" }).waitFor();
  // A second tab of ann's is signed out with her.
  const tab = await open(desk, BASE);
  await online(tab);
  await tab.locator("#me-name", { hasText: "ann" }).waitFor();
  const oldToken = await ann.evaluate(() => localStorage.getItem("chat.token"));
  await ann.click("#signout");
  await ann.locator("#login").waitFor({ state: "visible" });
  await tab.locator("#login-error", { hasText: "You were signed out in another tab." }).waitFor();
  assert.equal(await tab.locator("#status-text").textContent(), "Not connected");
  await tab.close();
  assert.equal(await ann.inputValue("#name-input"), "");
  assert.equal(await ann.locator("#login-error").textContent(), "");
  assert.equal(await ann.evaluate(() => localStorage.getItem("chat.token")), null, "the token is forgotten");
  // Not "Connecting…" behind the name box: the page says what the status says.
  assert.equal(await ann.locator("#status-text").textContent(), "Not connected");
  assert.equal(await ann.locator("#placeholder").textContent(), "Sign in to start chatting.");
  // The others see ann leave at once, not after the 5 s grace period.
  await pages.bob.locator("#messages .msg.system", { hasText: "ann left" }).waitFor({ timeout: 3000 });
  await pages.bob.locator("#members li", { hasText: "ann" }).waitFor({ state: "detached" });

  const started = Date.now();
  await ann.fill("#name-input", "ann");
  await ann.press("#name-input", "Enter");
  await online(ann);
  await ann.locator("#me-name", { hasText: "ann" }).waitFor();
  assert.ok(Date.now() - started < 3000, `signing in again took ${Date.now() - started} ms`);
  assert.equal(await ann.locator("#login").isVisible(), false);
  const newToken = await ann.evaluate(() => JSON.parse(localStorage.getItem("chat.token")));
  assert.ok(newToken && newToken !== JSON.parse(oldToken), "a new identity");
  // A fresh start: the lobby only, nothing of the old conversations.
  await ann.locator("#view-title", { hasText: "# lobby" }).waitFor();
  assert.deepEqual(await ann.$$eval("#rooms li.joined", (els) => els.map((e) => e.dataset.room)), ["lobby"]);
  assert.equal(await ann.locator("#dms li[data-peer]").count(), 0);
  await pages.bob.locator("#members li", { hasText: "ann" }).waitFor();
  // Her new socket may be on bob's loop: reloads until it is not.
  if (await placeApart(ann, pages.bob, "ann")) await ann.locator("#view-title", { hasText: "# lobby" }).waitFor();
  await say(ann, "back, as a new ann");
  await waitForRow(pages.bob, "ann", "back, as a new ann");
  await checkApart("sign out, sign in again");
});

test("after a server restart the page reconnects with backoff and rejoins its rooms", { timeout: 90_000, skip: !process.env.CHAT_BIN && "CHAT_BIN not set" }, async () => {
  // A server of our own, so the shared one stays up; a new port is a new origin, so a new
  // person ("carol") with her own localStorage.
  let server = await startServer("127.0.0.1:0");
  const url = server.url;
  const addr = new URL(url).host;
  try {
    const carol = await open(desk, url);
    await signIn(carol, "carol");
    // Someone else (another origin) asking for the same name is told to pick another.
    const other = await open(desk, url.replace("//127.0.0.1:", "//localhost:"));
    await other.fill("#name-input", "Carol");
    await other.press("#name-input", "Enter");
    await other.locator("#login-error", { hasText: "is taken" }).waitFor();
    assert.equal(await other.locator("#login").isVisible(), true);
    assert.equal(await other.locator("#placeholder").textContent(), "Sign in to start chatting.");
    await other.fill("#name-input", "dave");
    await other.press("#name-input", "Enter");
    await online(other);
    await other.close();
    await carol.fill("#join-input", "ops");
    await carol.press("#join-input", "Enter");
    await carol.locator("#view-title", { hasText: "# ops" }).waitFor();
    await say(carol, "before the restart");
    await waitForRow(carol, "carol", "before the restart");

    await stopServer(server);
    await carol.locator('#status[data-state="reconnecting"]').waitFor();
    // Down for a while: the page retries with growing delays.
    await new Promise((r) => setTimeout(r, 1500));
    server = await startServer(addr);
    await online(carol);
    await carol.locator('#rooms li[data-room="ops"].joined').waitFor();
    await carol.locator("#messages .msg.divider", { hasText: "server restarted" }).waitFor();
    await say(carol, "after the restart");
    await waitForRow(carol, "carol", "after the restart");
    const restarted = await (await fetch(new URL("/stats", url), { signal: AbortSignal.timeout(STEP) })).json();
    assert.equal(restarted.chat.users_online, 1);
    assert.equal(restarted.chat.rooms, 2, "lobby, and ops rejoined by the page");
    assert.deepEqual((await rows(carol)).filter((r) => !r.system).map((r) => r.text), ["before the restart", "after the restart"]);
    await carol.close();
  } finally {
    await stopServer(server);
  }
});

/** Starts the chat binary on `addr`; resolves with {proc, url} once it printed its URL. */
function startServer(addr) {
  return new Promise((resolve, reject) => {
    const args = [addr, "--history", "20", ...(TLS ? TLS_FILES : [])];
    const proc = spawn(process.env.CHAT_BIN, args, { stdio: ["ignore", "pipe", "inherit"] });
    const timer = setTimeout(() => { proc.kill("SIGKILL"); reject(new Error(`server on ${addr} did not start`)); }, STEP);
    let out = "";
    proc.stdout.on("data", (chunk) => {
      out += chunk;
      const m = out.match(TLS ? /^(https:\/\/\S+)$/m : /^(http:\/\/\S+)$/m);
      if (m) { clearTimeout(timer); proc.stdout.resume(); resolve({ proc, url: m[1] }); }
    });
    proc.on("exit", (code) => { clearTimeout(timer); reject(new Error(`server on ${addr} exited with ${code}: ${out}`)); });
  });
}

function stopServer(server) {
  return new Promise((resolve) => {
    if (!server || server.proc.exitCode !== null || server.proc.signalCode !== null) return resolve();
    server.proc.removeAllListeners("exit");
    server.proc.on("exit", () => resolve());
    server.proc.kill("SIGKILL");
  });
}

test("over https, the page's socket is wss:// and a message goes from one person to the other", { timeout: TEST, skip: !TLS && "https only (scripts/browser-test --tls)" }, async (t) => {
  // Two new people, each a context of its own, on the shared server.
  const [una, vic] = [await open(await person(DESKTOP), BASE), await open(await person(DESKTOP), ALT)];
  const origin = (u) => new URL(u).origin;
  try {
    await signIn(una, "una");
    await signIn(vic, "vic");
    await placeApart(vic, una, "vic");
    for (const [who, page, at] of [["una", una, BASE], ["vic", vic, ALT]]) {
      assert.equal(await page.evaluate(() => location.protocol), "https:", who);
      const shakes = handshakes.get(page);
      assert.ok(shakes.length > 0, `${who}: no WebSocket handshake seen`);
      const last = shakes.at(-1);
      assert.equal(last.status, 101, `${who}: ${JSON.stringify(last)}`);
      const ws = new URL(last.url);
      assert.equal(ws.protocol, "wss:", `${who}: the socket is ${last.url}`);
      assert.equal(ws.host, new URL(at).host, `${who}: the socket is ${last.url}`);
      assert.equal(ws.pathname, "/ws");
      assert.ok(shakes.every((s) => s.url && s.url.startsWith("wss://")), `${who}: ${shakes.map((s) => s.url)}`);
      assert.equal(header(last.requestHeaders, "origin"), origin(at), `${who}: the handshake's Origin`);
      checkDeflate(page, who);
      t.diagnostic(`${who}: ${last.status} for ${ws.origin}${ws.pathname} (Origin ${header(last.requestHeaders, "origin")}), ` +
        `Sec-WebSocket-Extensions: ${header(last.headers, "sec-websocket-extensions")}`);
    }
    // The lobby: una writes, vic reads, and back.
    await vic.locator("#members li", { hasText: "una" }).waitFor();
    await say(una, "hello over wss from una");
    await waitForRow(vic, "una", "hello over wss from una");
    await say(vic, "and back over wss, vic");
    await waitForRow(una, "vic", "and back over wss, vic");
    await checkApart("over https (una and vic)", una, vic);
  } finally {
    // Out again, so they are nobody's business afterwards.
    for (const page of [una, vic]) {
      if (page.isClosed()) continue;
      await page.click("#signout").catch(() => {});
      await page.close();
    }
  }
});

test("every socket that got a 101 negotiated permessage-deflate", () => {
  let n = 0;
  for (const [page, shakes] of handshakes) {
    for (const shake of shakes.filter((s) => s.status === 101)) {
      n++;
      assert.match(header(shake.headers, "sec-websocket-extensions") ?? "", /^permessage-deflate/, `${page.url()}: ${JSON.stringify(shake.headers)}`);
      // The page follows its own scheme: wss:// on an https page, ws:// on an http one.
      assert.match(shake.url ?? "", TLS ? /^wss:\/\// : /^ws:\/\//, `${page.url()}: its socket`);
    }
  }
  assert.ok(n >= 5, `only ${n} handshakes seen`);
});

test("no script errors, no CSP violations, no dialogs", () => {
  assert.deepEqual(pageErrors, []);
  assert.deepEqual(dialogs, []);
});

test("A and B were on two loops (or servers) in every two-person case", { skip: !SPREAD && "one server with one loop" }, (t) => {
  for (const p of placements) t.diagnostic(`${p.what}: A on ${p.a}, B on ${p.b}`);
  for (const m of moves) t.diagnostic(`placing ${m.who}: ${m.reloads} reload${m.reloads === 1 ? "" : "s"}, ${m.took} ms`);
  assert.ok(placements.length >= (TLS ? 10 : 9), `only ${placements.length} cases got to the end`);
  for (const p of placements) assert.notEqual(p.a, p.b, `${p.what}: A and B on one loop`);
});
