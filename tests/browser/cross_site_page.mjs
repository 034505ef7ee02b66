// Opens a page of another site (tests/browser/cross_site/attack.html, served from another loopback address by
// test_cross_site_page.py) in headless Chromium (Debian's, through playwright-core). The page and its sandboxed
// iframe try the master's routes with "simple" requests and listen on its websocket.
//
//   node tests/browser/cross_site_page.mjs PAGE_URL CHROMIUM
//
// Prints READY once both have sent their requests and opened their sockets, then waits for a line on stdin (the
// test runs a distributed job meanwhile) and prints what the page saw as one JSON line.

import readline from "node:readline";
import { chromium } from "playwright-core";

const [pageUrl, executablePath] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath, args: ["--no-sandbox", "--disable-gpu", "--no-first-run"] });
try {
  const page = await browser.newPage();
  await page.goto(pageUrl);
  const errors = [];
  page.on("console", (message) => errors.push(`${message.type()}: ${message.text()}`));
  page.on("pageerror", (error) => errors.push(String(error)));
  try {
    await page.waitForFunction(() => {
      const seen = window.seen || [];
      const done = (origin) => seen.some((r) => r.kind === "done" && r.origin === origin);
      const socket = (origin) => seen.some((r) => r.origin === origin && (r.kind === "ws-open" || r.kind === "ws-error"));
      return done("page") && done("iframe") && socket("page") && socket("iframe");
    }, null, { timeout: 30000 });
  } catch (error) {
    console.error(JSON.stringify({ seen: await page.evaluate(() => window.seen), errors }));
    throw error;
  }
  console.log("READY");
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) break;  // the job ran
  await page.waitForTimeout(500);  // the last events on their way
  console.log(JSON.stringify(await page.evaluate(() => window.seen)));
} finally {
  await browser.close();
}
