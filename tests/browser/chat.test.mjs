// End-to-end test of the chat page in Debian's headless Chromium, driven by playwright-core.
// scripts/browser-test builds and starts the chat example and runs this with:
//   CHAT_URL          the running server, e.g. http://127.0.0.1:18080/
//   CHAT_PUSH_TOKEN   the token it was started with
//   CHAT_BIN          the chat binary (the restart test starts its own server with it)
//   CHAT_SCREENSHOT   where to save the screenshot (default ../../target/chat-screenshot.png)
//
// Two people are two origins (http://127.0.0.1:PORT and http://localhost:PORT): each has
// its own localStorage, so its own identity, in one fresh browser profile.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, rm, mkdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const BASE = process.env.CHAT_URL;
if (!BASE) throw new Error("CHAT_URL is not set (run scripts/browser-test)");
const ALT = BASE.replace("//127.0.0.1:", "//localhost:");
const TOKEN = process.env.CHAT_PUSH_TOKEN || "";
const SCREENSHOT = process.env.CHAT_SCREENSHOT || path.join(HERE, "../../target/chat-screenshot.png");
const STEP = 10_000; // any single wait
const TEST = 60_000; // any test

let context;
let profile;
const pages = {};
const dialogs = [];
const pageErrors = [];

before(async () => {
  profile = await mkdtemp(path.join(tmpdir(), "chat-browser-"));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--disable-quic"],
    viewport: { width: 1280, height: 800 },
    timeout: 30_000,
  });
  context.setDefaultTimeout(STEP);
});

after(async () => {
  if (context) await context.close().catch(() => {});
  if (profile) await rm(profile, { recursive: true, force: true }).catch(() => {});
});

async function open(url) {
  const page = await context.newPage();
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

async function members(page) {
  return page.$$eval("#members li", (els) => els.map((el) => el.querySelector("span").textContent));
}

async function post(pathname, body, token = TOKEN) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const res = await fetch(new URL(pathname, BASE), { method: "POST", headers, body, signal: AbortSignal.timeout(STEP) });
  return { status: res.status, json: await res.json() };
}

test("two people join and chat in a room", { timeout: TEST }, async () => {
  pages.ann = await open(BASE);
  await signIn(pages.ann, "ann");
  pages.bob = await open(ALT);
  await signIn(pages.bob, "bob");

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
  const rustForBob = pages.bob.locator('#rooms li[data-room="rust"]');
  await rustForBob.waitFor();
  await rustForBob.click();
  await pages.bob.locator("#view-title", { hasText: "# rust" }).waitFor();
  await pages.ann.locator("#members li", { hasText: "bob" }).waitFor();
  await pages.ann.locator('#rooms li[data-room="rust"] .count', { hasText: "2" }).waitFor();

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
});

test("private messages, to every tab of the recipient", { timeout: TEST }, async () => {
  // ann's second tab: same origin, same localStorage token, same user.
  pages.ann2 = await open(BASE);
  await online(pages.ann2);
  await pages.ann2.locator("#me-name", { hasText: "ann" }).waitFor();
  assert.equal(await pages.ann2.locator("#login").isVisible(), false, "no name prompt: the token says who");

  // bob clicks ann in the lobby's member list and writes to her.
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
});

test("text is shown as text, never as HTML", { timeout: TEST }, async () => {
  const evil = ["<script>alert(1)</script>", '<img src=x onerror="window.__xss=1;alert(2)">'];
  await pages.ann.click('#rooms li[data-room="rust"]');
  await pages.bob.click('#rooms li[data-room="rust"]');
  for (const text of evil) await say(pages.ann, text);
  // A push whose sender label is HTML too.
  const res = await post("/push", JSON.stringify({ room: "rust", text: "<b>bold?</b>", from: "<img src=y onerror=alert(3)>" }));
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
});

test("a push from the HTTP API shows up on the pages", { timeout: TEST }, async () => {
  const res = await post("/push", JSON.stringify({ room: "rust", text: "deploy finished", from: "ci" }));
  assert.equal(res.status, 200);
  assert.equal(res.json.ok, true);
  assert.equal(res.json.delivered, 2, "one connection each for ann and bob");
  for (const page of [pages.ann, pages.bob]) await waitForRow(page, "ci", "deploy finished");

  const all = await post("/push", JSON.stringify({ all: true, text: "maintenance at 17:00" }));
  assert.equal(all.json.delivered, 2);
  for (const page of [pages.ann, pages.bob]) {
    await page.locator("#toast", { hasText: "maintenance at 17:00" }).waitFor();
    await waitForRow(page, "server", "maintenance at 17:00");
  }
  const refused = await post("/push", JSON.stringify({ all: true, text: "x" }), "wrong-token");
  assert.equal(refused.status, TOKEN ? 401 : 200);
});

test("a reload reconnects as the same user and shows the history", { timeout: TEST }, async () => {
  await pages.bob.reload({ timeout: STEP });
  await online(pages.bob);
  await pages.bob.locator("#me-name", { hasText: "bob" }).waitFor();
  const rust = pages.bob.locator('#rooms li[data-room="rust"].joined');
  await rust.waitFor();
  await rust.click();
  await waitForRow(pages.bob, "ann", "hello from ann");
  await waitForRow(pages.bob, "ci", "deploy finished");
  const texts = (await rows(pages.bob)).filter((r) => !r.system).map((r) => r.text);
  assert.deepEqual(texts, ["hello from ann", "hi ann, bob here", ...["<script>alert(1)</script>", '<img src=x onerror="window.__xss=1;alert(2)">'], "<b>bold?</b>", "deploy finished"]);
  // Still one user: ann saw no leave or join (the reload fell in the grace period).
  await say(pages.bob, "back after a reload");
  await waitForRow(pages.ann, "bob", "back after a reload");
  const annSystem = (await rows(pages.ann)).filter((r) => r.system).map((r) => r.system);
  assert.deepEqual(annSystem, ["bob joined"]);
});

test("screenshot", { timeout: TEST }, async () => {
  await pages.ann.bringToFront();
  await say(pages.ann, "Looks tidy.");
  await waitForRow(pages.bob, "ann", "Looks tidy.");
  if (await pages.ann.locator("#toast").isVisible()) await pages.ann.click("#toast"); // dismiss
  await pages.ann.locator("#toast").waitFor({ state: "hidden" });
  await mkdir(path.dirname(SCREENSHOT), { recursive: true });
  await pages.ann.screenshot({ path: SCREENSHOT });
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

test("after a server restart the page reconnects with backoff and rejoins its rooms", { timeout: 90_000, skip: !process.env.CHAT_BIN && "CHAT_BIN not set" }, async () => {
  // A server of our own, so the shared one stays up; a new port is a new origin, so a new
  // person ("carol") with her own localStorage.
  let server = await startServer("127.0.0.1:0");
  const url = server.url;
  const addr = new URL(url).host;
  try {
    const carol = await open(url);
    await signIn(carol, "carol");
    // Someone else (another origin) asking for the same name is told to pick another.
    const other = await open(url.replace("//127.0.0.1:", "//localhost:"));
    await other.fill("#name-input", "Carol");
    await other.press("#name-input", "Enter");
    await other.locator("#login-error", { hasText: "is taken" }).waitFor();
    assert.equal(await other.locator("#login").isVisible(), true);
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
    const stats = await (await fetch(new URL("/stats", url), { signal: AbortSignal.timeout(STEP) })).json();
    assert.equal(stats.chat.users_online, 1);
    assert.equal(stats.chat.rooms, 2, "lobby, and ops rejoined by the page");
    assert.deepEqual((await rows(carol)).filter((r) => !r.system).map((r) => r.text), ["before the restart", "after the restart"]);
    await carol.close();
  } finally {
    await stopServer(server);
  }
});

/** Starts the chat binary on `addr`; resolves with {proc, url} once it printed its URL. */
function startServer(addr) {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.env.CHAT_BIN, [addr, "--history", "20"], { stdio: ["ignore", "pipe", "inherit"] });
    const timer = setTimeout(() => { proc.kill("SIGKILL"); reject(new Error(`server on ${addr} did not start`)); }, STEP);
    let out = "";
    proc.stdout.on("data", (chunk) => {
      out += chunk;
      const m = out.match(/^(http:\/\/\S+)$/m);
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

test("no script errors, no CSP violations, no dialogs", () => {
  assert.deepEqual(pageErrors, []);
  assert.deepEqual(dialogs, []);
});
