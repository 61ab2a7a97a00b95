// Debian's Chromium, driven by playwright-core, for tests/browser.rs: one scenario
// per run, against processes the Rust test started. It prints what the page showed as
// one JSON line; the Rust test decides what is right.
//
//   node web/tests/browser.mjs SCENARIO 'JSON'

import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const [scenario, json] = process.argv.slice(2);
const cfg = JSON.parse(json || "{}");

const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  // The page plays muted video on its own, as a click would let it.
  "--autoplay-policy=no-user-gesture-required",
];

const browser = await chromium.launch({
  executablePath: process.env.ASTRAL_CHROMIUM || "/usr/bin/chromium",
  args: FLAGS,
});
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
const errors = [];
page.on("pageerror", (e) => errors.push(e.message));

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Reads the pattern's burned-in clock (`test-pattern:clock`) off the video: eight
 * seven-segment digits in the top left corner, as capture/src/pattern.rs draws them. */
function readClock() {
  const video = document.getElementById("video");
  const W = video.videoWidth, H = video.videoHeight;
  const canvas = document.createElement("canvas");
  canvas.width = W;
  canvas.height = H;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(video, 0, 0, W, H);
  const h = Math.max(Math.floor(H / 10), 10), w = Math.floor(h / 2), t = Math.max(Math.floor(h / 10), 1);
  const margin = 2 * t, half = Math.floor(h / 2);
  const lit = (x, y) => {
    const p = ctx.getImageData(x, y, 1, 1).data;
    return 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2] > 128;
  };
  const DIGITS = [0x3f, 0x06, 0x5b, 0x4f, 0x66, 0x6d, 0x7d, 0x07, 0x7f, 0x6f];
  let value = 0;
  for (let d = 0; d < 8; d++) {
    const x = margin + d * (w + margin), y = margin;
    const centres = [
      [x + w / 2, y + t / 2], // a
      [x + w - t / 2, y + half / 2], // b
      [x + w - t / 2, y + half + half / 2], // c
      [x + w / 2, y + h - t / 2], // d
      [x + t / 2, y + half + half / 2], // e
      [x + t / 2, y + half / 2], // f
      [x + w / 2, y + half], // g
    ];
    let bits = 0;
    centres.forEach(([cx, cy], i) => {
      if (lit(Math.floor(cx), Math.floor(cy))) bits |= 1 << i;
    });
    const digit = DIGITS.indexOf(bits);
    if (digit < 0) return null;
    value = value * 10 + digit;
  }
  // What the player holds back on purpose: frames that arrived, not yet shown.
  const buffered = video.buffered.length ? video.buffered.end(video.buffered.length - 1) - video.currentTime : 0;
  return { shown: value, now: Date.now() % 1e8, buffered: Math.round(buffered * 1000) };
}

/** How much the picture varies: a blank (black or one-colour) picture does not. */
function pictureStats() {
  const video = document.getElementById("video");
  const canvas = document.createElement("canvas");
  canvas.width = 160;
  canvas.height = 90;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(video, 0, 0, 160, 90);
  const data = ctx.getImageData(0, 0, 160, 90).data;
  let sum = 0, sq = 0;
  const colours = new Set();
  for (let i = 0; i < data.length; i += 4) {
    const y = 0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2];
    sum += y;
    sq += y * y;
    colours.add(((data[i] >> 5) << 6) | ((data[i + 1] >> 5) << 3) | (data[i + 2] >> 5));
  }
  const n = data.length / 4, mean = sum / n;
  return { lumaMean: mean, lumaStddev: Math.sqrt(sq / n - mean * mean), colours: colours.size };
}

const scenarios = {
  /** The stream list: a card per stream, with a still. */
  async list() {
    await page.goto(cfg.portal);
    const img = `[data-stream="${cfg.stream}"] img[data-thumbnail]`;
    await page.waitForFunction(
      (sel) => {
        const i = document.querySelector(sel);
        return i && i.complete && i.naturalWidth > 0;
      },
      img,
      { timeout: 40000 },
    );
    return page.evaluate((sel) => {
      const card = document.querySelector(`[data-stream]`);
      const i = document.querySelector(sel);
      return {
        streams: [...document.querySelectorAll("[data-stream]")].map((c) => c.dataset.stream),
        title: card.querySelector(".title").textContent,
        facts: [...card.querySelectorAll(".facts span")].map((s) => s.textContent),
        thumbnail: { width: i.naturalWidth, height: i.naturalHeight },
      };
    }, img);
  },

  /** One click on Watch: the video plays, through the viewer's box or a public one. */
  async watch() {
    await page.goto(`${cfg.portal}/?node=${encodeURIComponent(cfg.node)}`);
    await page.click(`[data-stream="${cfg.stream}"] button`, { timeout: 30000 });
    const started = Date.now();
    await page.waitForFunction(() => document.getElementById("video")?.currentTime > 0.3, null, { timeout: 40000 });
    const startup = Date.now() - started;
    const t0 = await page.evaluate(() => document.getElementById("video").currentTime);
    await sleep(4000);
    const t1 = await page.evaluate(() => document.getElementById("video").currentTime);
    const result = await page.evaluate(() => {
      const v = document.getElementById("video");
      const facts = Object.fromEntries([...document.querySelectorAll("[data-fact]")].map((d) => [d.dataset.fact, d.textContent]));
      return { width: v.videoWidth, height: v.videoHeight, facts, status: document.getElementById("watch-status").textContent };
    });
    result.startupMs = startup;
    result.advance = t1 - t0;
    result.picture = await page.evaluate(pictureStats);
    if (cfg.screenshot) await page.screenshot({ path: cfg.screenshot });
    if (cfg.clock) {
      // Glass to glass: the clock the source drew into the picture, against this one.
      result.latencies = [];
      result.buffered = [];
      for (let i = 0; i < 40; i++) {
        const r = await page.evaluate(readClock);
        if (r) {
          result.latencies.push((((r.now - r.shown) % 1e8) + 1e8) % 1e8);
          result.buffered.push(r.buffered);
        }
        await sleep(97);
      }
    }
    return result;
  },

  /** The map: every box, then the map again after one is killed. */
  async map() {
    await page.goto(`${cfg.portal}/map`);
    // Boxes by the names their owners gave them.
    const shows = (names) => {
      const drawn = new Set([...document.querySelectorAll("[data-node]")].map((g) => g.dataset.name));
      return names.every((n) => drawn.has(n));
    };
    await page.waitForFunction(shows, cfg.nodes, { timeout: 30000 });
    const snapshot = () =>
      page.evaluate(() => ({
        nodes: [...document.querySelectorAll("[data-node]")].map((g) => g.dataset.name).sort(),
        edges: [...document.querySelectorAll("[data-edge]")].map((l) => l.dataset.edgeNames).sort(),
      }));
    const before = await snapshot();
    if (!cfg.kill) return { before };
    process.kill(cfg.kill.pid, "SIGKILL");
    const killed = Date.now();
    // Redrawn: the dead box is gone, and every other box hangs from a live parent.
    const rest = cfg.nodes.filter((n) => n !== cfg.kill.name);
    await page.waitForFunction(
      ({ rest, dead, source }) => {
        const drawn = new Set([...document.querySelectorAll("[data-node]")].map((g) => g.dataset.name));
        const edges = [...document.querySelectorAll("[data-edge]")].map((l) => l.dataset.edgeNames.split(">"));
        const parentOf = new Map(edges.map(([p, c]) => [c, p]));
        return (
          !drawn.has(dead) &&
          rest.every((n) => drawn.has(n) && (n === source || (parentOf.has(n) && parentOf.get(n) !== dead)))
        );
      },
      { rest, dead: cfg.kill.name, source: cfg.source },
      { timeout: 60000, polling: 200 },
    );
    return { before, after: await snapshot(), redrawnAfterMs: Date.now() - killed };
  },

  /** The owner's page: make an owner key, claim a box with its pairing code, stop
   * its broadcast and start it again through the portal. */
  async boxes() {
    await page.goto(`${cfg.portal}/boxes`);
    await page.click("#new-owner");
    await page.waitForSelector("#claim", { timeout: 10000 });
    const key = await page.textContent("#owner-message");
    await page.fill("#claim input", "WRONG-CODE");
    await page.click("#claim button");
    await page.waitForFunction(() => /no box online/.test(document.getElementById("owner-message")?.textContent), null, { timeout: 10000 });
    const wrong = await page.textContent("#owner-message");
    await page.fill("#claim input", cfg.code);
    await page.click("#claim button");
    await page.waitForSelector("[data-box] [data-online=true]", { timeout: 15000 });
    const card = await page.textContent("[data-box]");
    const broadcast = () => page.getAttribute("[data-box] [data-broadcast]", "data-broadcast");
    const before = await broadcast();
    await page.click("[data-box] p button");
    await page.waitForFunction(() => document.querySelector("[data-box] [data-broadcast]")?.dataset.broadcast === "off", null, { timeout: 20000 });
    const stopped = await page.textContent("#owner-message");
    await page.click("[data-box] p button");
    await page.waitForFunction(() => document.querySelector("[data-box] [data-broadcast]")?.dataset.broadcast === "live", null, { timeout: 30000 });
    return { key, wrong, card, before, stopped, after: await broadcast(), box: await page.getAttribute("[data-box]", "data-box") };
  },

  /** A box's admin page: a wrong token, the right one, then a new bitrate. */
  async admin() {
    await page.goto(cfg.box);
    await page.waitForSelector("#token");
    await page.fill("#token", "not-the-token");
    await page.click("#login button");
    await page.waitForFunction(() => document.getElementById("login-error")?.textContent);
    const wrong = await page.textContent("#login-error");
    await page.fill("#token", cfg.token);
    await page.click("#login button");
    await page.waitForSelector("input[data-setting=bitrate_kbps]", { timeout: 10000 });
    await page.waitForSelector("#stills img", { timeout: 10000 });
    await page.waitForFunction(() => {
      const i = document.querySelector("#stills img");
      return i && i.complete && i.naturalWidth > 0;
    }, null, { timeout: 15000 });
    const before = await page.inputValue("input[data-setting=bitrate_kbps]");
    await page.fill("input[data-setting=bitrate_kbps]", String(cfg.bitrate));
    await page.click("#settings button");
    await page.waitForFunction(() => /Saved|Not saved/.test(document.getElementById("settings-note").textContent), null, { timeout: 20000 });
    const note = await page.textContent("#settings-note");
    await page.waitForFunction(() => document.getElementById("logs")?.textContent.length > 0, null, { timeout: 10000 });
    const cookies = await page.context().cookies();
    return {
      wrong,
      before,
      note,
      url: page.url(),
      documentCookie: await page.evaluate(() => document.cookie),
      cookies: cookies.map((c) => ({ name: c.name, httpOnly: c.httpOnly, sameSite: c.sameSite })),
      status: await page.textContent("#status"),
      pairingCode: await page.textContent("#pairing-code"),
      stillWidth: await page.evaluate(() => document.querySelector("#stills img").naturalWidth),
      logLines: await page.evaluate(() => document.getElementById("logs").textContent.split("\n").length),
    };
  },
};

let code = 0;
try {
  const run = scenarios[scenario];
  if (!run) throw new Error(`no scenario ${scenario}; try ${Object.keys(scenarios).join(", ")}`);
  const result = await run();
  result.pageErrors = errors;
  console.log(JSON.stringify(result));
} catch (e) {
  console.error(`browser ${scenario}: ${e.message}`);
  if (errors.length) console.error(`page errors: ${errors.join("; ")}`);
  try {
    const shot = path.join(os.tmpdir(), `astral-browser-${scenario}-failed.png`);
    await page.screenshot({ path: shot });
    console.error(`screenshot: ${shot}`);
  } catch {
    /* the page may be gone */
  }
  code = 1;
}
await browser.close();
process.exit(code);
