// The dashboard's only script: refresh the page's content in place, and confirm destructive
// actions. Without it every page still works; it just does not refresh itself.
"use strict";

const REFRESH_MS = 5000;

function busy() {
  // Never replace what the user is typing into or has opened.
  const active = document.activeElement;
  if (active && active.matches("input:not([type=checkbox]), select, textarea")) return true;
  return document.querySelector("main details[open]") !== null;
}

async function refresh() {
  const toggle = document.getElementById("auto-refresh");
  if (!toggle || !toggle.checked || document.hidden || busy()) return;
  try {
    const response = await fetch(location.href, { credentials: "same-origin" });
    if (!response.ok || response.redirected) return;
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
    const main = fresh.getElementById("main");
    if (!main) return;
    document.getElementById("main").replaceWith(main);
    document.getElementById("updated").textContent =
      "updated " + new Date().toLocaleTimeString();
  } catch (error) {
    document.getElementById("updated").textContent = "refresh failed";
  }
}

function remember() {
  const toggle = document.getElementById("auto-refresh");
  if (!toggle) return;
  toggle.checked = localStorage.getItem("tp-auto-refresh") !== "off";
  toggle.addEventListener("change", () => {
    localStorage.setItem("tp-auto-refresh", toggle.checked ? "on" : "off");
  });
}

document.addEventListener("submit", (event) => {
  const question = event.target.dataset.confirm;
  if (question && !window.confirm(question)) event.preventDefault();
});

document.addEventListener("DOMContentLoaded", () => {
  remember();
  setInterval(refresh, REFRESH_MS);
});
