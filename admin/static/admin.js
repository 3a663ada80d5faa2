// Sluice admin: relative time hints, auto-refresh, selection helpers.
// Served from /static (CSP script-src 'self'); no inline script anywhere.
"use strict";

(function () {
  const pad = (n) => String(n).padStart(2, "0");

  function localText(date) {
    return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
      `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
  }

  function relative(seconds) {
    const abs = Math.abs(seconds);
    let text;
    if (abs < 45) text = `${Math.round(abs)} s`;
    else if (abs < 3600) text = `${Math.round(abs / 60)} min`;
    else if (abs < 86400) text = `${Math.round(abs / 3600)} h`;
    else text = `${Math.round(abs / 86400)} d`;
    return seconds >= 0 ? `in ${text}` : `${text} ago`;
  }

  function renderTimes() {
    const now = Date.now() / 1000;
    for (const el of document.querySelectorAll("time[data-ts]")) {
      const ts = Number(el.dataset.ts);
      if (!Number.isFinite(ts)) continue;
      // The text stays the server's UTC time with its zone (relay.wording.when:
      // one rule for the pages, the CLI and the log); the viewer's own is a hint.
      el.title = `${localText(new Date(ts * 1000))} in your time zone`;
      if (el.hasAttribute("data-rel")) {
        const rel = document.createElement("span");
        rel.className = "rel";
        rel.textContent = `(${relative(ts - now)})`;
        el.appendChild(rel);
      }
    }
    for (const el of document.querySelectorAll("input.tz")) {
      el.value = String(new Date().getTimezoneOffset());
    }
  }

  function setupRefresh() {
    const select = document.getElementById("autorefresh");
    if (!select) return;
    const key = "sluice.autorefresh";
    select.value = localStorage.getItem(key) || "0";
    let timer = null;
    const arm = () => {
      if (timer) clearTimeout(timer);
      const seconds = Number(select.value);
      if (!seconds) return;
      timer = setTimeout(() => {
        // Never throw away what the operator is doing: skip while something is selected
        // or a field has focus.
        const busy = document.querySelector("input[name=queue_id]:checked") ||
          (document.activeElement && ["INPUT", "SELECT", "TEXTAREA"].includes(
            document.activeElement.tagName) && document.activeElement !== select);
        if (busy) arm(); else location.reload();
      }, seconds * 1000);
    };
    select.addEventListener("change", () => { localStorage.setItem(key, select.value); arm(); });
    arm();
  }

  function setupSelection() {
    const all = document.getElementById("select-all");
    const boxes = () => document.querySelectorAll("input[name=queue_id]");
    const count = document.getElementById("selected-count");
    // A row is one recipient, its checkbox its whole message (the actions take queue
    // IDs): the boxes of one message tick together, and the count is in messages.
    const update = () => {
      if (!count) return;
      const chosen = new Map();
      for (const b of document.querySelectorAll("input[name=queue_id]:checked")) {
        chosen.set(b.value, Number(b.dataset.recipients || 1));
      }
      let recipients = 0;
      for (const n of chosen.values()) recipients += n;
      const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
      count.textContent = chosen.size ?
        `Selected: ${plural(chosen.size, "message")} (${plural(recipients, "recipient")})` :
        "Selected: 0";
    };
    if (all) all.addEventListener("change", () => {
      for (const b of boxes()) b.checked = all.checked;
      update();
    });
    for (const b of boxes()) b.addEventListener("change", () => {
      for (const other of boxes()) if (other.value === b.value) other.checked = b.checked;
      update();
    });
    for (const button of document.querySelectorAll("button[data-confirm]")) {
      button.addEventListener("click", (event) => {
        if (!window.confirm(button.dataset.confirm)) event.preventDefault();
      });
    }
    const form = document.getElementById("queue-form");
    if (form) form.addEventListener("submit", (event) => {
      if (!document.querySelector("input[name=queue_id]:checked")) {
        event.preventDefault();
        if (count) count.textContent = "Select at least one message first.";
      }
    });
  }

  // "Test connection" in the provider list: the JSON API, the answer in the row.
  // (Without script the form posts and the page comes back with the answer.)
  function setupProviderTests() {
    for (const form of document.querySelectorAll("form.test-form")) {
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        const button = form.querySelector("button");
        const out = form.parentElement.querySelector(".test-result");
        button.disabled = true;
        out.className = "test-result";
        out.textContent = "testing…";
        try {
          const response = await fetch(form.dataset.api, {
            method: "POST",
            credentials: "same-origin",
            headers: { "x-csrf-token": form.querySelector("input[name=csrf_token]").value },
          });
          const report = await response.json();
          if (!response.ok) throw new Error(report.error || response.statusText);
          const last = report.steps[report.steps.length - 1];
          out.className = `test-result ${report.ok ? "good" : "bad"}`;
          out.textContent = report.ok ? "✔ works" : `✘ ${last.name}: ${last.detail}`;
        } catch (error) {
          out.className = "test-result bad";
          out.textContent = `✘ ${error.message}`;
        } finally {
          button.disabled = false;
        }
      });
    }
  }

  // "Retrieve folders" on the bounce mailbox card: the JSON API, the list in the card.
  // (Without script the form posts and the overview comes back with the list.)
  // Folder names come from the mail server: text nodes only, never markup.
  function setupBounceFolders() {
    const form = document.querySelector("form.folders-form");
    if (!form) return;
    const out = form.parentElement.querySelector(".folder-result");
    const line = (tag, className, text) => {
      const el = document.createElement(tag);
      if (className) el.className = className;
      el.textContent = text;
      return el;
    };
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = form.querySelector("button");
      button.disabled = true;
      out.replaceChildren(line("p", "muted", "asking the mail server…"));
      try {
        const response = await fetch(form.dataset.api, { credentials: "same-origin" });
        const data = await response.json();
        if (!response.ok) throw new Error(data.error || response.statusText);
        const list = document.createElement("ul");
        list.className = "folders";
        for (const name of data.folders) {
          const item = line("li", name === data.configured ? "configured" : "", name);
          if (name === data.configured) {
            item.append(" ", line("span", "muted", "✔ configured (bounces.mailbox.folder)"));
          }
          list.append(item);
        }
        out.replaceChildren(list);
        if (!data.folders.includes(data.configured)) {
          out.append(line("p", "error",
            `The configured folder (bounces.mailbox.folder) ${data.configured} is not among them.`));
        }
      } catch (error) {
        const p = line("p", "error", error.message);
        p.setAttribute("role", "alert");
        out.replaceChildren(p);
      } finally {
        button.disabled = false;
      }
    });
  }

  // "Retrieve folders" on the bounce settings form: the values typed so far go to the
  // JSON API, and the server's folders come back as a choice that fills the Folder field.
  // The page is not reloaded, so the typed password stays where it was typed.
  // (Without script the form posts, and the page comes back with the list.)
  function setupTypedFolders() {
    const button = document.getElementById("retrieve-folders");
    if (!button || !button.dataset.api) return;
    const form = button.form;
    const out = document.getElementById("folder-result");
    const folder = form.querySelector('[name="mailbox.folder"]');
    // Not a submit button any more: Enter in a field saves, as on the other forms.
    button.type = "button";
    const line = (tag, className, text) => {
      const el = document.createElement(tag);
      if (className) el.className = className;
      el.textContent = text; // folder names come from the mail server: text only
      return el;
    };
    button.addEventListener("click", async (event) => {
      event.preventDefault();
      const body = {};
      for (const [key, value] of new FormData(form)) {
        if (typeof value === "string" && key !== "csrf_token" && key !== "base_digest") {
          body[key] = value;
        }
      }
      button.disabled = true;
      out.replaceChildren(line("p", "muted", "asking the mail server…"));
      try {
        const response = await fetch(button.dataset.api, {
          method: "POST",
          credentials: "same-origin",
          headers: {
            "Content-Type": "application/json",
            "X-CSRF-Token": form.querySelector("input[name=csrf_token]").value,
          },
          body: JSON.stringify(body),
        });
        const data = await response.json();
        if (!response.ok) throw new Error(data.error || response.statusText);
        const select = document.createElement("select");
        select.id = "folder-pick";
        select.setAttribute("aria-label", "Folder on the server");
        if (!data.folders.includes(folder.value)) {
          const none = line("option", "", "— pick the folder bounces arrive in —");
          none.value = "";
          select.append(none);
        }
        for (const name of data.folders) {
          const option = line("option", "", name);
          option.value = name;
          option.selected = name === folder.value;
          select.append(option);
        }
        select.addEventListener("change", () => { if (select.value) folder.value = select.value; });
        const n = data.folders.length;
        out.replaceChildren(line("p", "good", `✔ ${n} folder${n === 1 ? "" : "s"} on the server:`), select);
      } catch (error) {
        const p = line("p", "error", error.message);
        p.setAttribute("role", "alert");
        out.replaceChildren(p);
      } finally {
        button.disabled = false;
      }
    });
  }

  // A sent test message: ask for its status every second until it is settled.
  function setupTestMessagePoll() {
    const card = document.getElementById("test-message");
    if (!card || card.dataset.settled === "yes") return;
    const deadline = Date.now() + 10 * 60 * 1000;
    const poll = async () => {
      try {
        const response = await fetch(card.dataset.poll, { credentials: "same-origin" });
        if (response.ok) {
          const t = await response.json();
          const badge = card.querySelector(".tm-status .badge");
          badge.textContent = t.status;
          badge.className = `badge s-${t.status.replace(/ /g, "-").toLowerCase()}`;
          card.querySelector(".tm-provider").textContent = t.provider || "–";
          card.querySelector(".tm-reply").textContent =
            t.reply || (t.settled ? "–" : "waiting for the provider…");
          if (t.settled) {
            card.dataset.settled = "yes";
            card.classList.add(t.status === "sent" ? "good" : "bad");
            return;
          }
        }
      } catch (error) {
        // The daemon may be reloading; the next round asks again.
      }
      if (Date.now() < deadline) setTimeout(poll, 1000);
    };
    setTimeout(poll, 500);
  }

  document.addEventListener("DOMContentLoaded", () => {
    renderTimes();
    setupRefresh();
    setupSelection();
    setupProviderTests();
    setupBounceFolders();
    setupTypedFolders();
    setupTestMessagePoll();
  });
})();
