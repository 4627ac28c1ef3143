// Waygate console: the inbox polls for new requests (short polling: a request thread is held
// for milliseconds, never for the life of a page), time left counts down, copy buttons copy.
// Pages work without it; it only saves reloads.
"use strict";

const POLL_MS = 1000;

function mergeInbox(box, html) {
  const fresh = document.createElement("div");
  fresh.innerHTML = html;
  const list = box.querySelector("#awaiting-list");
  const freshList = fresh.querySelector("#awaiting-list");
  if (!list || !freshList) {
    return;
  }
  const wanted = new Set([...freshList.children].map((item) => item.dataset.id));
  for (const item of [...list.children]) {
    if (!wanted.has(item.dataset.id)) {
      item.remove(); // decided or expired: it shows under "Recently decided"
    }
  }
  // New requests go in their place (newest first); items on the page stay untouched, so a
  // reason being typed keeps its text and focus.
  let cursor = list.firstElementChild;
  for (const item of [...freshList.children]) {
    const present = list.querySelector(`[data-id="${CSS.escape(item.dataset.id)}"]`);
    if (present) {
      cursor = present.nextElementSibling;
      continue;
    }
    list.insertBefore(item, cursor);
  }
  for (const id of ["awaiting-count", "decided"]) {
    const now = fresh.querySelector(`#${id}`);
    const old = box.querySelector(`#${id}`);
    if (now && old && now.innerHTML !== old.innerHTML) {
      old.innerHTML = now.innerHTML;
    }
  }
  const empty = box.querySelector("section .empty");
  if (empty && list.children.length) {
    empty.remove();
  }
  countDown();
}

async function poll(box) {
  try {
    const answer = await fetch(box.dataset.poll, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "text/html" },
    });
    if (answer.status === 401) {
      window.location.reload(); // signed out: the page asks to sign in again
      return;
    }
    if (answer.ok) {
      mergeInbox(box, await answer.text());
    }
  } catch (error) {
    // offline for a moment: the next poll tries again
  }
  window.setTimeout(() => poll(box), POLL_MS);
}

function countDown() {
  const now = Date.now();
  for (const node of document.querySelectorAll("[data-expires]")) {
    const left = Math.floor((Date.parse(node.dataset.expires) - now) / 1000);
    if (left <= 0) {
      node.textContent = "expired";
      continue;
    }
    const minutes = Math.floor(left / 60);
    const seconds = String(left % 60).padStart(2, "0");
    node.textContent = minutes ? `${minutes} min ${seconds} s left` : `${left} s left`;
  }
}

function wireCopyButtons() {
  for (const button of document.querySelectorAll("[data-copy]")) {
    button.addEventListener("click", async () => {
      const field = document.getElementById(button.dataset.copy);
      field.select();
      try {
        await navigator.clipboard.writeText(field.value);
      } catch (error) {
        document.execCommand("copy"); // older browsers, or no clipboard permission
      }
      button.textContent = "Copied";
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const box = document.getElementById("inbox");
  if (box && box.dataset.poll) {
    window.setTimeout(() => poll(box), POLL_MS);
  }
  countDown();
  window.setInterval(countDown, 1000);
  wireCopyButtons();
});
