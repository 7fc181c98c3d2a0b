// The dashboard page in a real browser (issue #21): Playwright (`playwright-core`, no browser
// download) driving Debian's Chromium against `demo --serve` over the local backends.
//
// Run by `cargo xtask browser` (and by `cargo xtask test` after the workspace tests), which
// starts the demo and passes:
//   DASHBOARD_URL     http://127.0.0.1:<port>
//   DASHBOARD_KEY     an API key of the demo account
//   PLAYWRIGHT_CORE   the installed playwright-core module (target/tools/playwright/...)
//   CHROMIUM          the browser binary (/usr/bin/chromium)
//   BROWSER_OUT       where screenshots go (target/browser)
// Every check prints one line; the first failure ends the run with exit code 1.
"use strict";

const fs = require("fs");
const path = require("path");

const url = process.env.DASHBOARD_URL;
const key = process.env.DASHBOARD_KEY;
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const out = process.env.BROWSER_OUT || "target/browser";
if (!url || !key || !process.env.PLAYWRIGHT_CORE) {
  console.error("browser suite: DASHBOARD_URL, DASHBOARD_KEY and PLAYWRIGHT_CORE must be set (run `cargo xtask browser`)");
  process.exit(2);
}
if (!fs.existsSync(chromiumPath)) {
  console.error(`browser suite: Chromium not found at ${chromiumPath}: install it with \`sudo apt-get install -y chromium\` (Debian), or run \`cargo xtask setup\` as root on Debian`);
  process.exit(2);
}
const { chromium } = require(process.env.PLAYWRIGHT_CORE);

// The whole suite is bounded: a hung page fails it instead of hanging CI.
const SUITE_TIMEOUT_MS = 120_000;
setTimeout(() => { console.error(`browser suite: FAILED: timed out after ${SUITE_TIMEOUT_MS / 1000} s`); process.exit(1); }, SUITE_TIMEOUT_MS).unref();

const CARDS = ["card-aks", "card-jobs", "card-storage", "card-blast", "card-metrics", "card-warmup", "card-inspector"];
const KEYED = CARDS.filter((id) => id !== "card-metrics");
const started = Date.now();
let failures = 0;

function pass(name, detail = "") { console.log(`  ok    ${name}${detail ? ` (${detail})` : ""}`); }
function fail(name, detail) { failures += 1; console.log(`  FAIL  ${name}: ${detail}`); }
async function check(name, body) {
  const t0 = Date.now();
  try {
    const detail = await body();
    pass(name, [detail, `${((Date.now() - t0) / 1000).toFixed(1)} s`].filter(Boolean).join(", "));
  } catch (e) {
    fail(name, e && e.message ? e.message.split("\n")[0] : String(e));
  }
}
function assert(condition, message) { if (!condition) throw new Error(message); }

// Watch a page: console errors, page errors, and every 4xx/5xx answer. `deliberate` marks the
// window in which 401s are expected (the wrong-key check).
function watch(page, log) {
  page.on("console", (m) => {
    if (m.type() !== "error") return;
    // Chromium logs every 4xx as a console error; the deliberate 401s are expected.
    if (log.deliberate && /status of 401/.test(m.text())) { log.expected.push(`console: ${m.text()}`); return; }
    log.console.push(m.text());
  });
  page.on("pageerror", (e) => log.console.push(`page error: ${e.message}`));
  page.on("requestfailed", (r) => { if (!log.closing) log.failed.push(`${r.method()} ${r.url()}: ${r.failure() && r.failure().errorText}`); });
  page.on("response", (r) => {
    if (r.status() < 400) return;
    const entry = `${r.status()} ${r.request().method()} ${new URL(r.url()).pathname}`;
    if (log.deliberate && r.status() === 401) log.expected.push(entry); else log.bad.push(entry);
  });
}

const cardState = (page, id) => page.locator(`#${id}`).getAttribute("data-state");
async function waitCards(page, ids, state, timeout) {
  await page.waitForFunction(([ids, state]) => ids.every((id) => document.getElementById(id).dataset.state === state),
    [ids, state], { timeout, polling: 100 });
}
// The warmup strip's content that polling must change: every chip (state and label) and the
// NotReady markers — not the read timings, which differ every poll anyway.
const warmupStrip = (page) => page.evaluate(() => [...document.querySelectorAll("#card-warmup .body .chip, #card-warmup .body .notready")]
  .map((e) => `${e.className}:${e.textContent}`).join("|"));
const text = (page, selector) => page.locator(selector).innerText();

(async () => {
  fs.mkdirSync(out, { recursive: true });
  const browser = await chromium.launch({ executablePath: chromiumPath, headless: true, args: ["--disable-gpu", "--disable-dev-shm-usage"] });
  const log = { console: [], bad: [], expected: [], failed: [], deliberate: false, closing: false };
  try {
    console.log(`browser suite: Chromium ${browser.version()} against ${url}`);
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    watch(page, log);
    // ?interval=2: the page's fastest polling; the demo's clusters evolve every second.
    await page.goto(`${url}/?interval=2#key=${encodeURIComponent(key)}`);

    await check("the key from the URL fragment is kept, and the fragment dropped", async () => {
      assert(await page.evaluate(() => localStorage.getItem("dashboard-key")) === key, "localStorage holds no key");
      assert(await page.evaluate(() => location.hash) === "", "the fragment is still in the URL");
      assert(await page.locator("#key").inputValue() === key, "the key field is empty");
    });

    await check("every card fills within 15 s", async () => {
      await waitCards(page, CARDS, "fresh", 15_000).catch(async () => {
        const states = await Promise.all(CARDS.map(async (id) => `${id}=${await cardState(page, id)}`));
        throw new Error(`not all fresh: ${states.join(", ")}`);
      });
      await page.waitForFunction(() => /account /.test(document.getElementById("me").textContent), null, { timeout: 5_000 });
      return `${((Date.now() - started) / 1000).toFixed(1)} s after start`;
    });

    await check("each card shows its data's age", async () => {
      await page.waitForFunction(() => [...document.querySelectorAll(".card .age")].every((e) => /updated \d+ s ago/.test(e.textContent)), null, { timeout: 3_000 });
    });

    await check("the warmup chips have a legend", async () => {
      const items = await page.locator("#card-warmup .legend li").allInnerTexts();
      for (const state of ["ready", "staging", "queued", "failed", "stale", "no warmup job", "unknown"]) {
        assert(items.some((t) => t.includes(state)), `no legend entry for ${state}: ${items.join(" / ")}`);
      }
      return `${items.length} entries`;
    });

    await check("durations print without float noise", async () => {
      const body = await page.locator("main").innerText();
      const noise = body.match(/\d+\.\d{3,}/g);
      assert(!noise, `float noise: ${noise && noise.slice(0, 3).join(", ")}`);
      assert(/reads in \d+(\.\d)? ms/.test(body), "no warmup read timing shown");
    });

    await check("the warmup strip changes between two polls", async () => {
      const before = await warmupStrip(page);
      assert(before.length > 0, "no chips");
      await page.waitForFunction((before) => [...document.querySelectorAll("#card-warmup .body .chip, #card-warmup .body .notready")]
        .map((e) => `${e.className}:${e.textContent}`).join("|") !== before, before, { timeout: 8_000, polling: 200 });
    });

    await check("the metrics card shows live series from /metrics", async () => {
      const card = await text(page, "#card-metrics .body");
      assert(/requests served\s+[\d,]+/.test(card), `no request count: ${card.slice(0, 200)}`);
      const exported = (card.match(/^.*\t[\d,]+\t/gm) || []).length;
      assert(/pool hits\s+[\d,]+/.test(card) || /401s refused/.test(card), "no pool hits row");
      return `${exported} series rows with values`;
    });

    let jobId = "";
    await check("a job submission shows progress, then lands in the jobs, storage and inspector cards", async () => {
      const blobsBefore = Number((await text(page, "#card-storage tbody td:nth-child(2)")).replace(/,/g, ""));
      await page.click("#submit");
      await page.waitForSelector("#submitting progress", { state: "visible", timeout: 500 });
      assert(await page.locator("#submit").isDisabled(), "the button stays enabled while the job waits");
      await page.waitForFunction(() => /waiting for the upstream… \d\.\d s/.test(document.getElementById("submitting").textContent), null, { timeout: 2_000 });
      await page.screenshot({ path: path.join(out, "submitting.png") });
      await page.waitForFunction(() => /→ upstream 2\d\d/.test(document.getElementById("submitting").textContent), null, { timeout: 15_000 });
      const result = await text(page, "#submitting");
      jobId = result.split(" ")[0];
      assert(/^job-/.test(jobId), `no job id in "${result}"`);
      assert(!(await page.locator("#submit").isDisabled()), "the button stays disabled");
      await page.waitForFunction((id) => document.querySelector("#card-blast .body").textContent.includes(id), jobId, { timeout: 8_000 });
      await page.waitForFunction((before) => Number(document.querySelector("#card-storage tbody td:nth-child(2)").textContent.replace(/,/g, "")) > before, blobsBefore, { timeout: 8_000 });
      await page.waitForFunction(() => /POST\s+\/api\/blast\/jobs\s+202/.test(document.querySelector("#card-inspector .body").innerText), null, { timeout: 8_000 });
      return `${result}; blobs ${blobsBefore} -> more`;
    });

    // The docs' picture: every card filled, a job submitted, a few polls of live metrics.
    await page.screenshot({ path: path.join(out, "desktop.png") });

    await check("no favicon (or any other) request in the inspector but the job", async () => {
      const rows = await page.locator("#card-inspector tbody tr").allInnerTexts();
      assert(rows.length >= 1 && rows.every((r) => r.includes("/api/blast/jobs")), `rows: ${rows.join(" / ")}`);
    });

    await check("a wrong key marks every keyed card stale, keeping its data and age", async () => {
      log.deliberate = true;
      await page.fill("#key", "dk_wrong_key_for_the_browser_suite");
      await page.locator("#key").dispatchEvent("change");
      await waitCards(page, KEYED, "stale", 8_000);
      const me = await text(page, "#me");
      assert(/key/i.test(me), `the header says "${me}"`);
      const note = await text(page, "#card-aks .stale-note");
      assert(/Stale: the last poll failed/.test(note), `note: ${note}`);
      assert((await text(page, "#card-aks .body")).includes("aks-"), "the old data is gone");
      assert(/updated \d+ s ago/.test(await text(page, "#card-aks .age")), "no data age");
      await page.screenshot({ path: path.join(out, "stale.png") });
      await page.fill("#key", key);
      await page.locator("#key").dispatchEvent("change");
      await waitCards(page, CARDS, "fresh", 10_000);
      log.deliberate = false;
      return `header: ${me}`;
    });

    await check("keyboard: the key field and the submit button are reachable with Tab", async () => {
      await page.locator("body").focus();
      const seen = [];
      for (let i = 0; i < 6; i += 1) {
        await page.keyboard.press("Tab");
        seen.push(await page.evaluate(() => document.activeElement && document.activeElement.id));
      }
      assert(seen.includes("key") && seen.includes("submit"), `focus went to ${seen.join(", ")}`);
    });

    await check("the header stays on one line at 420 px", async () => {
      await page.setViewportSize({ width: 420, height: 800 });
      const tops = await page.evaluate(() => [...document.querySelectorAll("body > header > *")]
        .filter((e) => e.getClientRects().length && getComputedStyle(e).position !== "absolute")
        .map((e) => Math.round(e.getBoundingClientRect().top + e.getBoundingClientRect().height / 2)));
      assert(Math.max(...tops) - Math.min(...tops) <= 4, `header items at ${tops.join(", ")} px`);
      const height = await page.evaluate(() => document.querySelector("body > header").getBoundingClientRect().height);
      assert(height <= 56, `header ${height} px tall`);
      return `${Math.round(height)} px tall`;
    });

    const small = await browser.newContext({ viewport: { width: 375, height: 812 }, deviceScaleFactor: 2 });
    const phone = await small.newPage();
    watch(phone, log);
    await phone.goto(`${url}/?interval=2#key=${encodeURIComponent(key)}`);
    await check("at 375 px every card fills and nothing scrolls sideways", async () => {
      await waitCards(phone, CARDS, "fresh", 15_000);
      const { scroll, width } = await phone.evaluate(() => ({ scroll: document.documentElement.scrollWidth, width: window.innerWidth }));
      assert(scroll <= width, `page is ${scroll} px wide in a ${width} px window`);
      await phone.screenshot({ path: path.join(out, "phone.png"), fullPage: true });
      return `${scroll} px in ${width} px`;
    });

    const wall = await browser.newContext({ viewport: { width: 2560, height: 1440 } });
    const big = await wall.newPage();
    watch(big, log);
    await big.goto(`${url}/?interval=2#key=${encodeURIComponent(key)}`);
    await check("on a wall screen (2560 px) every card fills", async () => {
      await waitCards(big, CARDS, "fresh", 15_000);
      await big.screenshot({ path: path.join(out, "wall.png") });
    });

    await check("no console errors, and no 4xx/5xx but the deliberate 401s", async () => {
      assert(!log.console.length, `console: ${log.console.slice(0, 5).join(" / ")}`);
      assert(!log.bad.length, `responses: ${[...new Set(log.bad)].slice(0, 8).join(", ")}`);
      assert(!log.failed.length, `failed requests: ${log.failed.slice(0, 5).join(" / ")}`);
      return `${log.expected.length} deliberate 401s`;
    });
    log.closing = true;
  } finally {
    log.closing = true;
    await browser.close();
  }
  const secs = ((Date.now() - started) / 1000).toFixed(1);
  if (failures) {
    console.error(`browser suite: FAILED: ${failures} check(s) failed in ${secs} s; screenshots in ${out}`);
    process.exit(1);
  }
  console.log(`browser suite: all checks passed in ${secs} s; screenshots in ${out}`);
})().catch((e) => {
  console.error(`browser suite: FAILED: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
