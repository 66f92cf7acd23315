// The conversation page's websocket client (docs/protocol.md): sends messages, grows streamed replies
// in place by offset, reconnects and resumes without losing or repeating text, and drives the
// message actions (stop, regenerate, edit and resend, copy) and the inline errors.
(function () {
  "use strict";

  const main = document.querySelector("main.chat[data-conversation-id]");
  if (!main) return;
  const conversationId = main.dataset.conversationId;
  const messagesEl = document.getElementById("messages");
  const emptyEl = messagesEl.querySelector(".empty-thread");
  const form = document.getElementById("composer");
  const input = document.getElementById("composer-input");
  const sendBtn = document.getElementById("send");
  const stopBtn = document.getElementById("stop");
  const jumpBtn = document.getElementById("jump");
  const connectionEl = document.getElementById("connection");
  const announcer = document.getElementById("announcer");
  const maxChars = parseInt(main.dataset.maxChars || "20000", 10);
  const hints = JSON.parse((document.getElementById("error-hints") || {}).textContent || "{}");
  const ui = window.chatUI || {};
  const md = window.ChatMarkdown;
  const REFUSALS = ["invalid", "busy", "rate_limited", "quota_exceeded", "not_found"];

  const replies = new Map(); // reply id -> {text, length, el, status, announced}
  let generatingId = null;
  let socket = null;
  let failures = 0;
  let retryDelay = 500;
  let pending = null; // {client_id, content, edit_of}: sent, not yet acknowledged by a `message` event
  let stopping = false;
  let openLeaf = main.dataset.openLeaf ? parseInt(main.dataset.openLeaf, 10) : null;
  let stopTimer = null;

  // -- text by code points (the protocol's offsets count code points, not UTF-16 units) -------------
  function codePoints(text) {
    let n = 0;
    for (const _ of text) n++; // eslint-disable-line no-unused-vars
    return n;
  }
  function sliceCodePoints(text, start) {
    return Array.from(text).slice(start).join("");
  }

  // -- scrolling: follow the reply unless the person scrolled up ----------------------------------------
  let stick = true;
  let lastIntent = -Infinity; // when the reader last touched the thread (wheel, touch, pointer, keys)
  let upIntent = -Infinity; // when the reader last moved the view up
  function distanceFromBottom() {
    return messagesEl.scrollHeight - messagesEl.scrollTop - messagesEl.clientHeight;
  }
  function scrollToBottom(smooth) {
    messagesEl.scrollTo({ top: messagesEl.scrollHeight, behavior: smooth ? "smooth" : "auto" });
    stick = true;
    jumpBtn.hidden = true;
  }
  function followContent() {
    if (stick && performance.now() - upIntent > 700) scrollToBottom(false);
    else if (distanceFromBottom() > 40) jumpBtn.hidden = false;
  }
  // Only the reader un-sticks the view: layout changes (a code block enhanced as it scrolls into
  // view, a long history laid out lazily) move scrollTop too, and then the view is pinned again.
  const intent = () => { lastIntent = performance.now(); };
  const followAgain = () => { upIntent = -Infinity; lastIntent = -Infinity; };
  let pinQueued = false;
  function pinSoon() {
    if (pinQueued) return;
    pinQueued = true;
    requestAnimationFrame(() => {
      pinQueued = false;
      if (stick && performance.now() - upIntent > 700) scrollToBottom(false);
    });
  }
  let lastTop = 0;
  messagesEl.addEventListener("wheel", (event) => {
    if (event.deltaY < 0) { stick = false; upIntent = performance.now(); }
  }, { passive: true });
  for (const type of ["touchmove", "pointerdown", "keydown"]) messagesEl.addEventListener(type, intent, { passive: true });
  messagesEl.addEventListener("scroll", () => {
    const now = performance.now();
    const top = messagesEl.scrollTop;
    if (now - lastIntent < 1000 && top < lastTop - 2) upIntent = now;
    lastTop = top;
    const near = distanceFromBottom() < 40;
    if (now - upIntent < 700) stick = false; // still on its way up: never pull it back down
    else if (near) stick = true;
    else if (now - lastIntent < 1000) stick = false;
    else if (stick) pinSoon();
    jumpBtn.hidden = near || stick;
  }, { passive: true });
  new MutationObserver(() => { if (stick) pinSoon(); }).observe(messagesEl, { childList: true, subtree: true });
  jumpBtn.addEventListener("click", () => { followAgain(); scrollToBottom(true); input.focus(); });

  // -- announcing the reply politely to screen readers, a sentence or so at a time -------------------
  function announce(text) {
    text = text.replace(/\s+/g, " ").trim();
    if (!text) return;
    const p = document.createElement("p");
    p.textContent = text;
    announcer.append(p);
    while (announcer.childElementCount > 4) announcer.firstElementChild.remove();
  }
  function announceProgress(r, final) {
    const content = r.el.querySelector(".msg-content");
    const text = content ? content.textContent : r.text;
    if (text.length < r.announced) r.announced = text.length; // markup settled into shorter text
    const rest = text.slice(r.announced);
    let cut = rest.length;
    if (!final) {
      const m = rest.match(/^[\s\S]*[.!?:\n](?=\s|$)/);
      if (!m || m[0].length < 40) return; // wait for a whole sentence or two
      cut = m[0].length;
    }
    announce(rest.slice(0, cut));
    r.announced += cut;
  }

  // -- building messages ----------------------------------------------------------------------------
  function actionsFor(role) {
    const tpl = document.getElementById(`tpl-actions-${role}`);
    return tpl ? tpl.content.firstElementChild.cloneNode(true) : document.createElement("div");
  }

  // -- versions: `‹ i / n ›` on a message with siblings (the same markup as _versions.html) ------------
  function versionsEl(id, siblings) {
    const list = siblings || [id];
    if (list.length < 2) return null;
    const at = Math.max(0, list.indexOf(id));
    const box = document.createElement("div");
    box.className = "versions";
    box.setAttribute("role", "group");
    box.setAttribute("aria-label", "Versions");
    const arrow = (cls, label, text, target) => {
      const b = document.createElement("button");
      b.type = "button";
      b.className = `act ${cls}`;
      b.dataset.act = "switch";
      b.dataset.target = target === undefined ? "" : String(target);
      b.setAttribute("aria-label", label);
      b.title = label;
      b.textContent = text;
      b.disabled = target === undefined;
      return b;
    };
    const count = document.createElement("span");
    count.className = "version-count";
    count.setAttribute("aria-hidden", "true");
    count.textContent = `${at + 1} / ${list.length}`;
    const spoken = document.createElement("span");
    spoken.className = "visually-hidden";
    spoken.textContent = `Version ${at + 1} of ${list.length}`;
    box.append(arrow("version-prev", "Previous version", "‹", list[at - 1]), count, spoken,
      arrow("version-next", "Next version", "›", list[at + 1]));
    return box;
  }
  function setVersions(el, id, siblings) {
    const old = el.querySelector(":scope > .versions");
    const fresh = versionsEl(id, siblings);
    if (old) old.remove();
    if (fresh) el.querySelector(":scope > .msg-actions").before(fresh);
  }
  // Everything shown after message `parentId` goes (null: everything): a new version replaces that
  // part of the path on screen; the old one stays on the server, one `‹` away.
  function truncateAfter(parentId) {
    const root = parentId === null || parentId === undefined;
    const parent = root ? null : document.getElementById(`m${parentId}`);
    if (!root && (!parent || parent.parentElement !== messagesEl)) return; // not shown (yet): leave it
    const children = Array.from(messagesEl.children);
    const cut = parent === null ? 0 : children.indexOf(parent) + 1;
    for (const node of children.slice(cut)) {
      if (node === emptyEl || node.tagName === "TEMPLATE") continue;
      node.remove(); // a reply's record keeps its (now detached) element and text
    }
  }

  function messageEl(id, role, status, attach = true) {
    let el = document.getElementById(`m${id}`);
    if (el) return el;
    el = document.createElement("article");
    el.id = `m${id}`;
    el.className = `msg msg-${role}` + (status && status !== "complete" ? ` msg-${status}` : "");
    el.dataset.messageId = id;
    el.dataset.role = role;
    el.dataset.status = status || "complete";
    const author = document.createElement("h2");
    author.className = "msg-author";
    author.textContent = role === "user" ? "You" : "Assistant";
    const content = document.createElement("div");
    content.className = "msg-content " + (role === "user" ? "msg-plain" : "markdown");
    el.append(author, content, actionsFor(role));
    if (attach) {
      messagesEl.append(el);
      if (emptyEl) emptyEl.hidden = true;
    }
    return el;
  }

  // The model picker (where the persona allows a choice): each send carries the model chosen.
  const picker = document.getElementById("model-picker");
  function modelField(p) {
    return p && p.model ? { model: p.model } : {};
  }
  const PROVIDERS = { openai: "OpenAI", anthropic: "Anthropic" };
  function modelLabel(spec) {
    const i = spec.indexOf(":");
    if (spec.startsWith("offline:")) return "offline demo model";
    return i < 0 ? spec : `${spec.slice(i + 1)} (${PROVIDERS[spec.slice(0, i)] || spec.slice(0, i)})`;
  }
  function showModel(el, spec) {
    if (!spec) return;
    let details = el.querySelector(".msg-usage");
    if (!details) {
      details = document.createElement("details");
      details.className = "msg-usage";
      const summary = document.createElement("summary");
      const name = document.createElement("span");
      name.className = "msg-model";
      summary.append(name);
      details.append(summary);
      el.querySelector(".msg-actions").before(details);
    }
    details.querySelector(".msg-model").textContent = modelLabel(spec);
  }

  // A reply's record: its text as streamed, whether or not it is on the path shown (a reply on a
  // branch switched away from keeps streaming into a detached element, ready for switching back).
  function replyFor(id, attach = false) {
    let r = replies.get(id);
    if (!r) {
      const el = messageEl(id, "assistant", "streaming", attach);
      r = { text: "", length: 0, el, status: el.dataset.status, announced: 0 };
      replies.set(id, r);
    }
    return r;
  }

  function setStatus(r, status) {
    r.status = status;
    r.el.dataset.status = status;
    r.el.className = "msg msg-assistant" + (status !== "complete" ? ` msg-${status}` : "");
    r.el.setAttribute("aria-busy", status === "streaming" ? "true" : "false");
  }

  function removeMessage(id) {
    replies.delete(id);
    const el = document.getElementById(`m${id}`);
    if (el) {
      // An inline error about a removed reply goes with it.
      const next = el.nextElementSibling;
      if (next && next.classList.contains("inline-error")) next.remove();
      el.remove();
    }
  }

  // Rendering is throttled: one paint per animation frame at most, and not more than ~20 a second.
  const renderQueue = new Set();
  let renderTimer = null;
  let lastRender = 0;
  function scheduleRender(id) {
    renderQueue.add(id);
    if (renderTimer !== null) return;
    const wait = Math.max(0, 50 - (performance.now() - lastRender));
    renderTimer = setTimeout(() => requestAnimationFrame(flushRender), wait);
  }
  function flushRender() {
    renderTimer = null;
    lastRender = performance.now();
    for (const id of renderQueue) {
      const r = replies.get(id);
      if (!r) continue;
      md.render(r.el.querySelector(".msg-content"), r.text);
      if (r.status === "streaming") announceProgress(r, false);
    }
    renderQueue.clear();
    followContent();
  }

  function setGenerating(id) {
    generatingId = id;
    const busy = id !== null;
    stopBtn.hidden = !busy;
    stopBtn.disabled = false;
    if (!busy) {
      stopping = false;
      clearTimeout(stopTimer);
    }
    main.classList.toggle("generating", busy);
    updateSendState();
  }

  function updateSendState() {
    const n = input.value.length;
    const files = window.chatFiles;
    const empty = !input.value.trim() && !(files && files.count());
    sendBtn.disabled = generatingId !== null || pending !== null || empty || n > maxChars || !!(files && files.uploading());
  }

  // -- notes and errors, inline in the thread -------------------------------------------------------
  function setNote(el, text, isError) {
    let note = el.querySelector(".msg-note");
    if (!note) {
      note = document.createElement("div");
      note.className = "msg-note";
      el.querySelector(".msg-actions").before(note);
    }
    note.classList.toggle("msg-note-error", !!isError);
    note.replaceChildren();
    const p = document.createElement("p");
    p.textContent = text;
    note.append(p);
    return note;
  }
  function clearNote(el) {
    const note = el.querySelector(".msg-note");
    if (note) note.remove();
  }

  function clearRefusals() {
    messagesEl.querySelectorAll(".inline-error.refusal").forEach((e) => e.remove());
  }

  // A wait in words: "45 s", "12 min", "10 h 44 min".
  function inWords(seconds) {
    const s = Math.max(1, Math.round(seconds));
    if (s < 90) return `${s} s`;
    const m = Math.round(s / 60);
    if (m < 60) return `${m} min`;
    return m % 60 ? `${Math.floor(m / 60)} h ${m % 60} min` : `${m / 60} h`;
  }
  // When a daily quota resets, in the reader's own time zone: "It resets tomorrow at 09:00 (in 10 h 44 min)."
  function resetsAt(seconds) {
    const at = new Date(Date.now() + seconds * 1000);
    const time = at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    const day = at.toDateString() === new Date().toDateString() ? "today" : "tomorrow";
    return `It resets ${day} at ${time}, your time (in ${inWords(seconds)}).`;
  }

  // A countdown for "try again in N s", then the retry button.
  function countdown(box, seconds, button) {
    const span = document.createElement("span");
    span.className = "countdown";
    box.querySelector("p").append(" ", span);
    let left = Math.ceil(seconds);
    if (button) button.disabled = true;
    const tick = () => {
      if (!box.isConnected) return;
      if (left <= 0) {
        span.textContent = "You can try again now.";
        if (button) button.disabled = false;
        return;
      }
      span.textContent = `Try again in ${inWords(left)}.`;
      left -= 1;
      setTimeout(tick, 1000);
    };
    tick();
  }

  function showError(frame) {
    const hint = hints[frame.code];
    const text = hint || frame.message || "Something went wrong.";
    const retryable = !["provider_auth", "invalid", "not_found", "context_too_long", "busy", "quota_exceeded"].includes(frame.code);
    let box;
    let retry = null;
    const reply = frame.message_id && replies.get(frame.message_id);
    if (reply && reply.el.isConnected) {
      // A failed reply: the error sits under it; retrying regenerates it.
      box = setNote(reply.el, `This reply failed. ${text}`, true);
      if (retryable) {
        retry = document.createElement("button");
        retry.type = "button";
        retry.className = "btn btn-small";
        retry.dataset.act = "regenerate";
        retry.textContent = "Try again";
      }
    } else {
      // A refused message: nothing was stored, the text is still in the composer; retrying sends it.
      box = document.createElement("div");
      box.className = "inline-error refusal";
      box.setAttribute("role", "alert");
      const p = document.createElement("p");
      p.textContent = text;
      box.append(p);
      if (retryable) {
        retry = document.createElement("button");
        retry.type = "button";
        retry.className = "btn btn-small";
        retry.textContent = "Try again";
        retry.addEventListener("click", () => { box.remove(); submit(); });
      }
      clearRefusals();
      messagesEl.append(box);
    }
    // The provider's own words help only when the hint cannot say what went wrong.
    if (hint && frame.message && frame.code === "provider_unavailable") {
      const detail = document.createElement("p");
      detail.className = "error-detail";
      detail.textContent = frame.message;
      box.append(detail);
    }
    if (frame.code === "context_too_long" || frame.code === "not_found") {
      const a = document.createElement("a");
      a.href = "/conversations/new/";
      a.className = "btn btn-small";
      a.textContent = "Start a new chat";
      box.append(a);
    }
    if (retry) box.append(retry);
    if (frame.code === "quota_exceeded" && frame.retry_after) box.querySelector("p").append(" ", resetsAt(frame.retry_after));
    else if (frame.retry_after) countdown(box, frame.retry_after, retry);
    box.setAttribute("role", "alert");
    followContent();
  }

  // -- the socket --------------------------------------------------------------------------------------
  function send(frame) {
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  // One `resume` in flight per reply: a gap shows on every delta until the answer arrives, and asking
  // again each time would flood the server. After RESUME_WAIT ms without an answer, ask again.
  const RESUME_WAIT = 5000;
  const resumesAsked = new Map();
  function askResume(id, offset) {
    const asked = resumesAsked.get(id);
    if (asked !== undefined && performance.now() - asked < RESUME_WAIT) return;
    if (send({ type: "resume", message_id: id, offset })) resumesAsked.set(id, performance.now());
  }

  function applyDelta(frame) {
    const r = replyFor(frame.message_id);
    const have = r.length;
    if (frame.offset > have) {
      // A gap (we missed text): ask for everything from what we have.
      askResume(frame.message_id, have);
      return;
    }
    resumesAsked.delete(frame.message_id);
    const chars = codePoints(frame.text);
    if (frame.offset + chars <= have) return; // a repeat
    r.text += frame.offset === have ? frame.text : sliceCodePoints(frame.text, have - frame.offset);
    r.length = frame.offset + chars;
    scheduleRender(frame.message_id);
  }

  // After `end`, the reply shows exactly what a reload shows: the server's rendering of the stored text.
  function adoptServerRendering(r, id) {
    fetch(`/conversations/${conversationId}/messages/${id}/`, { credentials: "same-origin" })
      .then((response) => (response.ok ? response.text() : Promise.reject(response.status)))
      .then((html) => {
        if (!r.el.isConnected || r.status === "streaming") return;
        const tpl = document.createElement("template");
        tpl.innerHTML = html.trim();
        const fresh = tpl.content.querySelector("article.msg");
        if (!fresh) return;
        const opened = r.el.querySelector(".msg-usage[open]");
        if (opened && fresh.querySelector(".msg-usage")) fresh.querySelector(".msg-usage").open = true;
        const live = r.el.querySelector(".msg-note");
        if (live && fresh.querySelector(".msg-note")) fresh.querySelector(".msg-note").replaceWith(live);
        md.enhance(fresh);
        r.el.replaceWith(fresh);
        r.el = fresh;
        followContent();
      })
      .catch(() => { /* keep the browser's rendering */ });
  }

  let titleChecks = [];
  function refreshSidebarSoon(firstReply) {
    if (!ui.refreshSidebar) return;
    ui.refreshSidebar();
    if (firstReply) {
      // The model writes a short title in the background: pick it up when it lands.
      titleChecks.forEach(clearTimeout);
      titleChecks = [2000, 4000, 7000, 11000, 16000, 24000].map((ms) => setTimeout(() => ui.refreshSidebar(), ms));
    }
  }

  const handlers = {
    state(frame) {
      const g = frame.generating;
      if (g) {
        const r = replyFor(g.message_id, false);
        r.text = g.text;
        r.length = codePoints(g.text);
        setStatus(r, "streaming");
        scheduleRender(g.message_id);
        setGenerating(g.message_id);
      } else {
        setGenerating(null);
        // A reply we saw streaming ended while we were away: fetch the rest (and its `end`).
        messagesEl.querySelectorAll('article[data-status="streaming"]').forEach((el) => {
          const id = parseInt(el.dataset.messageId, 10);
          const r = replies.get(id);
          askResume(id, r ? r.length : 0);
        });
      }
      if (openLeaf !== null) {
        // Opened from a search hit on another branch: that path becomes the active one.
        send({ type: "switch", message_id: openLeaf });
        openLeaf = null;
      }
      if (pending) {
        send({ type: "send", client_id: pending.client_id, content: pending.content, ...(pending.edit_of ? { edit_of: pending.edit_of } : {}), ...modelField(pending), ...(pending.attachments ? { attachments: pending.attachments } : {}) });
      } else if (!g) {
        sendFirstMessage();
      }
    },
    message(frame) {
      const m = frame.message;
      const mine = pending && m.client_id === pending.client_id;
      const existed = !!document.getElementById(`m${m.id}`);
      // Its reply's `start` may have come first (the reply starts before the message is published).
      const early = existed ? null : messagesEl.querySelector(`article[data-parent-id="${m.id}"]`);
      if (early) early.remove();
      // The new message continues the path after its parent: what was shown below that goes.
      if (!existed) truncateAfter(m.parent_id);
      const el = messageEl(m.id, m.role, "complete");
      if (early) messagesEl.append(early);
      el.querySelector(".msg-content").textContent = m.content;
      if (m.attachments && window.chatFiles) window.chatFiles.showOnMessage(el, m.attachments);
      if (m.parent_id) el.dataset.parentId = m.parent_id;
      if (frame.siblings) setVersions(el, m.id, frame.siblings);
      if (m.client_id) el.dataset.clientId = m.client_id;
      if (mine) {
        // The composer's files went with it (an edit's are the edited message's own).
        if (pending.attachments && !pending.edit_of && window.chatFiles) window.chatFiles.clear();
        if (!pending.edit_of) {
          input.value = "";
          input.dispatchEvent(new Event("input"));
        }
        pending = null;
        clearRefusals();
        scrollToBottom(false);
      }
      updateSendState();
      followContent();
      if (!existed) refreshSidebarSoon(false);
    },
    start(frame) {
      if (!document.getElementById(`m${frame.message_id}`)) truncateAfter(frame.parent_id);
      const r = replyFor(frame.message_id, true);
      if (!r.el.isConnected) { messagesEl.append(r.el); if (emptyEl) emptyEl.hidden = true; }
      if (frame.parent_id) r.el.dataset.parentId = frame.parent_id;
      setVersions(r.el, frame.message_id, frame.siblings);
      r.text = "";
      r.length = 0;
      r.announced = 0;
      setStatus(r, "streaming");
      clearNote(r.el);
      r.el.querySelector(".msg-content").replaceChildren();
      showModel(r.el, frame.model);
      const headerModel = document.querySelector(".chat-meta .model");
      if (headerModel && frame.model) {
        headerModel.textContent = modelLabel(frame.model);
        headerModel.title = frame.model;
      }
      setGenerating(frame.message_id);
      announce("Assistant is replying.");
      followContent();
    },
    delta: applyDelta,
    path(frame) {
      showPath(frame.messages, frame.summary);
    },
    retrying(frame) {
      const r = replyFor(frame.message_id);
      const what = frame.code === "provider_rate_limited" ? "The provider is rate limiting" : "The provider did not answer";
      setNote(r.el, `${what}; trying again in ${Math.ceil(frame.retry_in)} s (attempt ${frame.attempt})…`, false);
    },
    stopping(frame) {
      // The server stored the stop; `end` follows. No reply running there: nothing to wait for.
      if (frame.message_id === null && stopping) {
        stopping = false;
        stopBtn.disabled = false;
      }
    },
    end(frame) {
      const r = replyFor(frame.message_id);
      resumesAsked.delete(frame.message_id);
      r.text = frame.content;
      r.length = codePoints(frame.content);
      setStatus(r, frame.status);
      renderQueue.delete(frame.message_id);
      md.render(r.el.querySelector(".msg-content"), r.text);
      clearNote(r.el);
      if (frame.status === "stopped") setNote(r.el, "Stopped.", false);
      if (frame.status === "interrupted") {
        const note = setNote(r.el, hints.interrupted || "Interrupted.", true);
        const retry = document.createElement("button");
        retry.type = "button";
        retry.className = "btn btn-small";
        retry.dataset.act = "regenerate";
        retry.textContent = "Try again";
        note.append(retry);
      }
      if (frame.status === "error") setNote(r.el, "This reply failed.", true);
      announceProgress(r, true);
      if (frame.status === "stopped") announce("Stopped.");
      if (generatingId === frame.message_id) setGenerating(null);
      followContent();
      if (frame.status === "complete" || frame.status === "stopped") adoptServerRendering(r, frame.message_id);
      const firstReply = messagesEl.querySelectorAll("article.msg-assistant").length === 1;
      if (frame.status === "complete") refreshSidebarSoon(firstReply);
    },
    error(frame) {
      if (pending && REFUSALS.includes(frame.code) && !frame.message_id) {
        // Refused and nothing stored: the text stays where it was typed.
        pending = null;
        updateSendState();
      }
      showError(frame);
      announce(hints[frame.code] || frame.message || "Something went wrong.");
    },
  };

  // The path the server made active (a `switch` from any tab): rebuilt in place, no reload. A reply
  // still streaming on it shows everything streamed so far (its deltas kept coming while away).
  let switching = null; // {from: message id clicked, dir: "prev" | "next"}
  // The "earlier messages summarized" divider, as the server renders it (_summary_divider.html), after
  // the message the path's summary runs through. One element per summary, kept while the page lives,
  // so switching back to a path shows its divider as it was left (open or closed).
  const dividers = new Map(); // through id -> element
  messagesEl.querySelectorAll(".summary-divider").forEach((el) => dividers.set(el.dataset.summaryThrough, el));
  function summaryDivider(summary) {
    const through = String(summary.through_id);
    let el = dividers.get(through);
    if (el) return el;
    el = document.createElement("details");
    el.className = "summary-divider";
    el.dataset.summaryThrough = through;
    const title = document.createElement("summary");
    title.textContent = "Earlier messages are summarized for the model";
    const body = document.createElement("div");
    body.className = "summary-text";
    const note = document.createElement("p");
    note.className = "summary-note";
    note.textContent = "The model no longer sees the messages above word for word; it gets this summary instead:";
    body.append(note);
    // Paragraphs and line breaks, as Django's `linebreaks` makes them; text only, never markup.
    for (const para of summary.text.replace(/\r\n?/g, "\n").split(/\n{2,}/)) {
      const p = document.createElement("p");
      para.split("\n").forEach((line, i) => {
        if (i) p.append(document.createElement("br"));
        p.append(line);
      });
      body.append(p);
    }
    el.append(title, body);
    dividers.set(through, el);
    return el;
  }
  function showPath(messages, summary) {
    const errors = messagesEl.querySelectorAll(".inline-error");
    errors.forEach((e) => e.remove());
    truncateAfter(null);
    for (const m of messages) {
      let el;
      if (m.role === "assistant") {
        const r = replyFor(m.id, false);
        const live = r.status === "streaming" || m.status === "streaming";
        if (!(live && r.length >= codePoints(m.content))) {
          r.text = m.content;
          r.length = codePoints(m.content);
        }
        if (m.status !== "streaming") setStatus(r, m.status);
        else setStatus(r, "streaming");
        clearNote(r.el);
        if (m.status === "stopped") setNote(r.el, "Stopped.", false);
        if (m.status === "error" || m.status === "interrupted") setNote(r.el, hints[m.status] || "This reply failed.", true);
        md.render(r.el.querySelector(".msg-content"), r.text);
        el = r.el;
      } else {
        el = messageEl(m.id, m.role, "complete", false);
        el.querySelector(".msg-content").textContent = m.content;
        if (m.attachments && window.chatFiles) window.chatFiles.showOnMessage(el, m.attachments);
        if (m.client_id) el.dataset.clientId = m.client_id;
        if (m.attachments && window.chatFiles) window.chatFiles.showOnMessage(el, m.attachments);
      }
      if (m.parent_id) el.dataset.parentId = m.parent_id;
      else delete el.dataset.parentId;
      setVersions(el, m.id, m.siblings);
      messagesEl.append(el);
    }
    if (emptyEl) emptyEl.hidden = messages.length > 0;
    // The summary this path uses (a branch made before a summary's message has its own, or none).
    if (summary) {
      const through = document.getElementById(`m${summary.through_id}`);
      if (through && through.parentElement === messagesEl) through.after(summaryDivider(summary));
    }
    if (md) md.enhance(messagesEl, { lazy: true });
    if (switching) {
      const el = document.getElementById(`m${switching.to}`);
      const m = messages.find((x) => x.id === switching.to);
      if (el && m) {
        const at = m.siblings.indexOf(m.id) + 1;
        announce(`Version ${at} of ${m.siblings.length}`);
        const again = el.querySelector(`.version-${switching.dir}`);
        const focus = again && !again.disabled ? again : el.querySelector(".versions button:not([disabled])");
        if (focus) focus.focus();
      }
      switching = null;
    } else {
      followContent();
    }
    updateSendState();
  }

  // -- connection status: calm, and only when it matters ---------------------------------------------------
  let lostTimer = null;
  let lostShown = false;
  function setConnection(text, kind) {
    connectionEl.hidden = !text;
    connectionEl.textContent = text || "";
    connectionEl.dataset.kind = kind || "";
  }
  function connectionLost() {
    if (lostTimer !== null || lostShown) return;
    // A blip that heals within a second is not worth a word.
    lostTimer = setTimeout(() => {
      lostTimer = null;
      lostShown = true;
      setConnection(navigator.onLine === false ? "You are offline. The reply continues on the server; this page catches up when the network is back." : "Connection lost. Reconnecting… (the reply continues on the server)", "lost");
      main.classList.add("disconnected");
    }, 1000);
  }
  function connectionBack() {
    clearTimeout(lostTimer);
    lostTimer = null;
    main.classList.remove("disconnected");
    if (lostShown) {
      lostShown = false;
      setConnection("Reconnected.", "ok");
      setTimeout(() => { if (connectionEl.dataset.kind === "ok") setConnection(""); }, 2500);
    }
  }

  let reconnectTimer = null;
  let gaveUp = false;
  function connect() {
    if (gaveUp) return;
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    let ws;
    try {
      ws = new WebSocket(`${scheme}://${location.host}/ws/conversations/${conversationId}/`);
    } catch (e) {
      connectionLost();
      reconnectTimer = setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 8000);
      return;
    }
    socket = ws;
    let opened = false;
    ws.addEventListener("open", () => {
      opened = true;
      failures = 0;
      retryDelay = 500;
      connectionBack();
    });
    ws.addEventListener("message", (event) => {
      if (ws !== socket) return;
      let frame;
      try { frame = JSON.parse(event.data); } catch (e) { return; }
      const handler = handlers[frame.type];
      if (handler) handler(frame);
    });
    ws.addEventListener("close", (event) => {
      if (ws !== socket) return;
      // The server's own reasons (docs/protocol.md): no point reconnecting.
      if (event.code === 4404) { stopReconnecting("This conversation no longer exists (it was deleted)."); return; }
      if (event.code === 4401) { stopReconnecting("You were signed out. Log in again to go on."); return; }
      // That process is restarting (4012; 1012 from a server that may send it): another one takes over at once.
      if (event.code === 4012 || event.code === 1012) retryDelay = 100;
      connectionLost();
      failures = opened ? 0 : failures + 1;
      if (failures >= 3) {
        checkStillThere();
      }
      const jitter = 0.8 + Math.random() * 0.4;
      reconnectTimer = setTimeout(connect, retryDelay * jitter);
      retryDelay = Math.min(retryDelay * 2, 8000);
    });
  }

  // The socket keeps being refused: the thread may have been deleted, or the session ended.
  function checkStillThere() {
    fetch(location.pathname, { credentials: "same-origin" }).then((response) => {
      if (response.status === 404) {
        stopReconnecting("This conversation no longer exists (it was deleted).");
      } else if (response.redirected && new URL(response.url).pathname.startsWith("/accounts/login")) {
        stopReconnecting("You were signed out. Log in again to go on.");
      }
    }).catch(() => {});
  }
  function stopReconnecting(text) {
    gaveUp = true;
    clearTimeout(reconnectTimer);
    if (socket) socket.close();
    socket = null;
    setConnection(text, "lost");
    sendBtn.disabled = true;
  }

  window.addEventListener("online", () => {
    if (!socket || socket.readyState === WebSocket.CLOSED) { retryDelay = 500; connect(); }
  });
  window.addEventListener("offline", () => { if (lostShown) connectionLost(); });

  // -- the composer ---------------------------------------------------------------------------------------
  function submit() {
    const content = input.value;
    const files = window.chatFiles ? window.chatFiles.ids() : [];
    if (files === null) return; // an upload is still running
    if ((!content.trim() && !files.length) || generatingId !== null || pending || content.length > maxChars) return;
    pending = { client_id: crypto.randomUUID(), content, edit_of: null, model: picker ? picker.value : null, attachments: files.length ? files : null };
    updateSendState();
    followAgain();
    stick = true;
    if (!send({ type: "send", client_id: pending.client_id, content, ...modelField(pending), ...(pending.attachments ? { attachments: pending.attachments } : {}) })) {
      setConnection("Not connected: your message will be sent as soon as the connection is back.", "lost");
    }
  }

  function sendFirstMessage() {
    const key = `chat:first:${location.pathname}`;
    const first = sessionStorage.getItem(key);
    if (first === null) return;
    sessionStorage.removeItem(key);
    if (input.value.trim() || messagesEl.querySelector("article.msg")) return;
    input.value = first;
    input.dispatchEvent(new Event("input"));
    submit();
  }

  form.addEventListener("submit", (event) => { event.preventDefault(); submit(); });
  if (window.chatFiles) window.chatFiles.onChange(updateSendState);
  if (ui.wireComposer) ui.wireComposer(input, submit, maxChars, document.getElementById("char-count"), updateSendState);
  // A stop can be lost (the socket dropped as it went out): when no `end` follows within
  // STOP_WAIT ms, Stop works again, so the user can ask once more.
  const STOP_WAIT = 4000;
  stopBtn.addEventListener("click", () => {
    if (stopping) return;
    stopping = true;
    stopBtn.disabled = true;
    send({ type: "stop" });
    clearTimeout(stopTimer);
    stopTimer = setTimeout(() => {
      if (generatingId === null) return;
      stopping = false;
      stopBtn.disabled = false;
    }, STOP_WAIT);
  });

  // -- message actions ----------------------------------------------------------------------------------
  function startEdit(el) {
    if (generatingId !== null || el.querySelector(".edit-form")) return;
    const content = el.querySelector(".msg-content");
    const original = content.textContent;
    const editForm = document.createElement("form");
    editForm.className = "edit-form";
    const label = document.createElement("label");
    label.className = "visually-hidden";
    label.textContent = "Edit your message";
    const area = document.createElement("textarea");
    area.value = original;
    area.id = `edit-${el.dataset.messageId}`;
    label.htmlFor = area.id;
    const buttons = document.createElement("div");
    buttons.className = "edit-buttons";
    const cancel = document.createElement("button");
    cancel.type = "button";
    cancel.className = "btn btn-secondary btn-small";
    cancel.textContent = "Cancel";
    const save = document.createElement("button");
    save.type = "submit";
    save.className = "btn btn-small";
    save.textContent = "Send";
    buttons.append(cancel, save);
    // The message's files go with the new version unless removed here.
    const kept = window.chatFiles ? window.chatFiles.editChips(el) : null;
    editForm.append(...[label, area, kept && kept.element, buttons].filter(Boolean));
    content.hidden = true;
    el.classList.add("editing");
    content.after(editForm);
    const finish = () => {
      editForm.remove();
      content.hidden = false;
      el.classList.remove("editing");
      el.querySelector("[data-act='edit']").focus();
    };
    cancel.addEventListener("click", finish);
    const resend = () => {
      const text = area.value;
      const files = kept ? kept.ids() : null;
      if ((!text.trim() && !(files && files.length)) || text.length > maxChars || generatingId !== null || pending) return;
      pending = { client_id: crypto.randomUUID(), content: text, edit_of: parseInt(el.dataset.messageId, 10), model: picker ? picker.value : null, attachments: files };
      updateSendState();
      stick = true;
      send({ type: "send", client_id: pending.client_id, content: text, edit_of: pending.edit_of, ...modelField(pending), ...(files ? { attachments: files } : {}) });
    };
    editForm.addEventListener("submit", (event) => { event.preventDefault(); resend(); });
    area.addEventListener("keydown", (event) => {
      if (event.key === "Escape") { event.preventDefault(); finish(); }
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing && !window.matchMedia("(pointer: coarse)").matches) {
        event.preventDefault();
        resend();
      }
    });
    const grow = () => { area.style.height = "auto"; area.style.height = Math.min(area.scrollHeight + 2, 400) + "px"; };
    area.addEventListener("input", grow);
    grow();
    area.focus();
    area.setSelectionRange(area.value.length, area.value.length);
  }

  function copyMessage(el, button) {
    const id = parseInt(el.dataset.messageId, 10);
    let text;
    if (el.dataset.role === "user") {
      text = el.querySelector(".msg-content").textContent;
    } else {
      const r = replies.get(id);
      // The markdown source: known if it streamed here, else asked for (a reply rendered by the server).
      text = r && r.text && r.status !== "streaming"
        ? r.text
        : fetch(`/conversations/${conversationId}/messages/${id}/?format=text`, { credentials: "same-origin" })
          .then((response) => (response.ok ? response.text() : Promise.reject(response.status)));
    }
    ui.copyText(text).then(() => ui.flashCopied(button, true), () => ui.flashCopied(button, false));
  }

  messagesEl.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-act]");
    if (!button) return;
    const el = button.closest("article.msg");
    const act = button.dataset.act;
    if (act === "copy" && el) copyMessage(el, button);
    if (act === "edit" && el) startEdit(el);
    if (act === "regenerate") {
      if (generatingId !== null) return;
      clearRefusals();
      // Regenerate this reply (a new version beside it), or the latest when it has no id yet.
      const id = el && el.dataset.role === "assistant" ? parseInt(el.dataset.messageId, 10) : NaN;
      send(Number.isNaN(id) ? { type: "regenerate" } : { type: "regenerate", message_id: id });
    }
    if (act === "switch" && button.dataset.target) {
      const to = parseInt(button.dataset.target, 10);
      switching = { to, dir: button.classList.contains("version-prev") ? "prev" : "next" };
      send({ type: "switch", message_id: to });
    }
  });

  // -- start ------------------------------------------------------------------------------------------
  messagesEl.querySelectorAll("article.msg-assistant").forEach((el) => {
    const id = parseInt(el.dataset.messageId, 10);
    replies.set(id, { text: "", length: 0, el, status: el.dataset.status, announced: 0 });
  });
  if (md) md.enhance(messagesEl, { lazy: true });
  scrollToBottom(false);
  updateSendState();
  connect();
})();
