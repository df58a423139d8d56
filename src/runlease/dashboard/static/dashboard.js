// runlease dashboard: keeps the page current without reloads.
// - Countdowns tick in the browser from each lease's lease_until, on the server's clock:
//   the offset between the two clocks is taken from the as_of of every fragment fetched.
// - /events (server-sent events) brings each new event; each one triggers a refresh of
//   the overview's fragments, at most one in flight and one every REFRESH_MS.
// - Operator forms are sent with fetch; the server's answer (or refusal) shows in place.
"use strict";
(() => {
  const REFRESH_MS = 400;
  const MAX_EVENTS = 200;
  let offset = 0; // server clock minus browser clock, in seconds

  function span(seconds) {
    const whole = Math.max(Math.floor(seconds), 0);
    const h = Math.floor(whole / 3600), m = Math.floor((whole % 3600) / 60), s = whole % 60;
    const two = (n) => String(n).padStart(2, "0");
    if (h) return `${h}h ${two(m)}m`;
    if (m) return `${m}m ${two(s)}s`;
    return `${s}s`;
  }

  function serverNow() { return Date.now() / 1000 + offset; }

  function takeClock(root) {
    const clock = root.querySelector("[data-as-of]");
    if (clock) offset = Number(clock.dataset.asOf) - Date.now() / 1000;
  }

  function tick() {
    const now = serverNow();
    for (const el of document.querySelectorAll("[data-until]")) {
      const left = Number(el.dataset.until) - now;
      const text = left >= 1 ? span(left) : "expired";
      if (el.textContent !== text) el.textContent = text;
      el.classList.toggle("low", left < 30);
    }
    for (const el of document.querySelectorAll("[data-since]")) {
      const since = Number(el.dataset.since);
      if (!since) continue;
      const text = `${span(now - since)} ago`;
      if (el.textContent !== text) el.textContent = text;
    }
  }

  function notice(text, ok) {
    const box = document.getElementById("notice");
    if (!box) return;
    box.textContent = text;
    box.className = ok ? "ok" : "error";
    box.hidden = false;
  }

  function toLogin() {
    location.href = "/login?next=" + encodeURIComponent(location.pathname);
  }

  // A fragment someone is typing into, or with a reason typed, waits for the next refresh.
  function busy(fragment) {
    if (fragment.contains(document.activeElement) && document.activeElement.tagName === "INPUT") return true;
    return [...fragment.querySelectorAll("input[type=text]")].some((i) => i.value !== "");
  }

  let inFlight = false, again = false, lastRefresh = 0, timer = null;
  async function refresh() {
    if (inFlight) { again = true; return; }
    inFlight = true;
    lastRefresh = Date.now();
    try {
      const reply = await fetch("/fragments/overview", { credentials: "same-origin" });
      if (reply.status === 401) { toLogin(); return; }
      if (!reply.ok) return;
      const doc = new DOMParser().parseFromString(await reply.text(), "text/html");
      takeClock(doc);
      let deferred = false;
      for (const fresh of doc.querySelectorAll("[data-fragment]")) {
        const current = document.querySelector(`[data-fragment="${fresh.dataset.fragment}"]`);
        if (!current) continue;
        if (busy(current)) { deferred = true; continue; }
        current.replaceWith(document.importNode(fresh, true));
      }
      if (deferred) setTimeout(schedule, 2000);
      tick();
    } catch (err) {
      // The server is away: the event stream reconnects and asks again.
    } finally {
      inFlight = false;
      if (again) { again = false; schedule(); }
    }
  }

  function schedule() {
    if (document.body.dataset.page !== "overview" || timer !== null) return;
    const wait = Math.max(REFRESH_MS - (Date.now() - lastRefresh), 0);
    timer = setTimeout(() => { timer = null; refresh(); }, wait);
  }

  function eventItem(ev) {
    const li = document.createElement("li");
    li.className = "event fresh";
    li.dataset.seq = ev.seq;
    const add = (tag, cls, text) => {
      const el = document.createElement(tag);
      if (cls) el.className = cls;
      el.textContent = text;
      li.append(el, " ");
      return el;
    };
    add("span", "seq", `#${ev.seq}`);
    add("time", "", new Date(ev.at * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z");
    add("b", "kind", ev.kind);
    if (ev.task_id) add("a", "", ev.task_id).href = "/tasks/" + encodeURIComponent(ev.task_id);
    if (ev.run_id) add("span", "id", ev.run_id);
    if (ev.actor) add("span", "actor", ev.actor);
    if (ev.data) add("code", "data", ev.data);
    return li;
  }

  function follow() {
    const list = document.getElementById("events");
    const live = document.getElementById("live");
    if (!list) return;
    const stream = new EventSource("/events?after=" + encodeURIComponent(list.dataset.after || "0"));
    const state = (name, text) => { if (live) { live.dataset.state = name; live.textContent = text; } };
    stream.onopen = () => { state("live", "live"); schedule(); };
    stream.onmessage = (message) => {
      const ev = JSON.parse(message.data);
      list.dataset.after = ev.seq;
      list.prepend(eventItem(ev));
      while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
      schedule();
    };
    // A busy queue: the server sent the newest events of a moment and counted the rest.
    stream.addEventListener("skipped", (message) => {
      const gap = JSON.parse(message.data);
      list.dataset.after = gap.last_seq;
      const li = document.createElement("li");
      li.className = "skipped";
      li.textContent = `… ${gap.count} events not shown (#${gap.first_seq}–#${gap.last_seq}; ` +
        `runlease events --after ${gap.first_seq - 1} lists them)`;
      list.prepend(li);
      while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
      schedule();
    });
    stream.onerror = () => {
      if (stream.readyState === EventSource.CLOSED) {
        state("closed", "disconnected");
        refresh(); // a 401 there sends the browser to the login page
      } else {
        state("connecting", "reconnecting…");
      }
    };
  }

  async function submitAction(form, event) {
    event.preventDefault();
    const button = form.querySelector("button");
    if (button) button.disabled = true;
    let done = false;
    try {
      const reply = await fetch(form.action, {
        method: "POST",
        body: new URLSearchParams(new FormData(form)),
        headers: { Accept: "application/json" },
        credentials: "same-origin",
      });
      if (reply.status === 401) { toLogin(); return; }
      const answer = await reply.json();
      if (answer.ok) {
        done = true;
        notice(answer.message, true);
        for (const input of form.querySelectorAll("input[type=text]")) input.value = "";
      } else {
        notice(`Refused (HTTP ${reply.status}, ${answer.error.code}): ${answer.error.message}`, false);
      }
    } catch (err) {
      notice("The server did not answer; try again.", false);
    } finally {
      if (button) button.disabled = false;
    }
    // The overview refreshes in place; a task page has no stream, so it loads again once
    // something changed (a refusal stays on screen).
    if (document.body.dataset.page === "overview") schedule();
    else if (done) {
      sessionStorage.setItem("runlease-notice", document.getElementById("notice").textContent);
      location.reload();
    }
  }

  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form instanceof HTMLFormElement && form.hasAttribute("data-action")) submitAction(form, event);
  });

  document.addEventListener("DOMContentLoaded", () => {
    const carried = sessionStorage.getItem("runlease-notice");
    if (carried) {
      sessionStorage.removeItem("runlease-notice");
      notice(carried, true);
    }
    takeClock(document);
    tick();
    setInterval(tick, 250);
    if (document.body.dataset.page === "overview") follow();
  });
})();
