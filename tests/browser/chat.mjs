// Drives serve's chat page in a real Chromium, as a user would: sets a system prompt, the temperature and
// a seed, types a question, watches the answer stream in, saves a screenshot; then asks again and presses
// Stop mid-answer. Prints what it saw as one JSON line; the Rust test (bins/serve/tests/browser.rs)
// judges it.
//
// usage: node chat.mjs URL SYSTEM QUESTION TEMPERATURE SEED MAX_TOKENS SCREENSHOT.png
import { chromium } from "playwright-core";

const [url, system, question, temperature, seed, maxTokens, screenshot] = process.argv.slice(2);
if (!screenshot) {
  console.error("usage: node chat.mjs URL SYSTEM QUESTION TEMPERATURE SEED MAX_TOKENS SCREENSHOT.png");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 700 } });
  const external = [];
  page.on("request", (r) => { if (!r.url().startsWith(url)) external.push(r.url()); });
  const consoleErrors = [];
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
  await page.goto(url);
  await page.waitForFunction(() => !document.getElementById("model").textContent.includes("…"));
  const model = await page.textContent("[data-testid=model]");

  await page.fill("[data-testid=system]", system);
  await page.fill("[data-testid=temperature]", temperature);
  await page.fill("[data-testid=seed]", seed);
  await page.fill("[data-testid=max-tokens]", maxTokens);
  // The lengths the reply is shown at while it streams: several means it was drawn piece by piece.
  await page.evaluate(() => {
    window.lengths = [];
    new MutationObserver(() => {
      const body = document.querySelector(".msg.assistant .body");
      const n = body ? body.textContent.length : 0;
      if (n > 0 && window.lengths[window.lengths.length - 1] !== n) window.lengths.push(n);
    }).observe(document.getElementById("messages"), { subtree: true, childList: true, characterData: true });
  });
  await page.fill("[data-testid=input]", question);
  await page.keyboard.press("Enter");
  const done = page.locator(".msg.assistant[data-finish]").first();
  await done.waitFor({ timeout: 60000 });
  const answer = await done.locator(".body").textContent();
  const finish = await done.getAttribute("data-finish");
  const meta = await done.locator(".meta").textContent();
  const lengths = await page.evaluate(() => window.lengths);
  const userBubble = await page.locator(".msg.user .body").first().textContent();
  await page.screenshot({ path: screenshot, fullPage: true });

  // Second turn: Stop ends the reply mid-way. Seeded, so that the answer is the same long one every run
  // (an unseeded one could end by itself before the click).
  await page.fill("[data-testid=seed]", seed);
  await page.fill("[data-testid=max-tokens]", "200");
  await page.fill("[data-testid=input]", "Tell me more");
  await page.click("[data-testid=send]");
  const second = page.locator(".msg.assistant").nth(1);
  await page.waitForFunction(() => {
    const r = document.querySelectorAll(".msg.assistant")[1];
    return r && r.querySelector(".body").textContent.length > 0;
  }, null, { timeout: 60000 });
  const sendDisabledWhileRunning = await page.isDisabled("[data-testid=send]");
  await page.click("[data-testid=stop]");
  await page.locator(".msg.assistant[data-finish]").nth(1).waitFor({ timeout: 30000 });
  const stoppedFinish = await second.getAttribute("data-finish");
  const sendEnabledAfter = await page.isEnabled("[data-testid=send]");

  console.log(JSON.stringify({
    model, answer, finish, meta, lengths, userBubble, external, consoleErrors,
    sendDisabledWhileRunning, stoppedFinish, sendEnabledAfter,
  }));
} finally {
  await browser.close();
}
