// The conversation page's websocket client: sends messages, renders streamed replies by offset,
// reconnects and resumes without losing or repeating text. See docs/protocol.md.
(function () {
  "use strict";

  const main = document.querySelector("main.chat[data-conversation-id]");
  if (!main) return;
  const conversationId = main.dataset.conversationId;
  const messagesEl = document.getElementById("messages");
  const form = document.getElementById("composer");
  const input = document.getElementById("composer-input");
  const sendBtn = document.getElementById("send");
  const stopBtn = document.getElementById("stop");
  const connectionEl = document.getElementById("connection");
  const charCount = document.getElementById("char-count");
  const maxChars = parseInt(main.dataset.maxChars || "20000", 10);

  const replies = new Map(); // message id -> {text, el, status}
  let generatingId = null;
  let socket = null;
  let retryDelay = 500;
  let pending = null; // {client_id, content}: sent, not yet acknowledged by a `message` event

  // -- rendering -----------------------------------------------------------------------------
  function renderMarkdown(el, text) {
    if (window.marked && window.DOMPurify) {
      const html = window.marked.parse(text, { gfm: true, breaks: false });
      el.innerHTML = window.DOMPurify.sanitize(html, { USE_PROFILES: { html: true } });
      el.querySelectorAll("a[href]").forEach((a) => { a.rel = "noopener noreferrer nofollow"; });
    } else {
      el.textContent = text;
    }
  }

  let renderQueued = new Set();
  function scheduleRender(id) {
    renderQueued.add(id);
    if (renderQueued.size === 1) {
      requestAnimationFrame(() => {
        for (const rid of renderQueued) {
          const r = replies.get(rid);
          if (r) renderMarkdown(r.el.querySelector(".msg-content"), r.text);
        }
        renderQueued = new Set();
        autoscroll();
      });
    }
  }

  function autoscroll() {
    const nearBottom = messagesEl.scrollHeight - messagesEl.scrollTop - messagesEl.clientHeight < 120;
    if (nearBottom || document.activeElement === input) messagesEl.scrollTop = messagesEl.scrollHeight;
  }

  function messageEl(id, role, status) {
    let el = messagesEl.querySelector(`[data-message-id="${id}"]`);
    if (el) return el;
    el = document.createElement("article");
    el.className = `msg msg-${role}` + (status && status !== "complete" ? ` msg-${status}` : "");
    el.dataset.messageId = id;
    el.dataset.role = role;
    el.dataset.status = status || "complete";
    const author = document.createElement("div");
    author.className = "msg-author";
    author.textContent = role === "user" ? "You" : "Assistant";
    const content = document.createElement("div");
    content.className = "msg-content " + (role === "user" ? "msg-plain" : "markdown");
    el.append(author, content);
    messagesEl.append(el);
    return el;
  }

  function replyFor(id) {
    let r = replies.get(id);
    if (!r) {
      const el = messageEl(id, "assistant", "streaming");
      // A reply rendered by the server keeps its stored text as the starting point.
      r = { text: "", length: 0, el, status: el.dataset.status };
      replies.set(id, r);
    }
    return r;
  }

  function setGenerating(id) {
    generatingId = id;
    const busy = id !== null;
    stopBtn.hidden = !busy;
    sendBtn.disabled = busy;
    main.classList.toggle("generating", busy);
  }

  function showNote(el, text) {
    let note = el.querySelector(".msg-note");
    if (!note) {
      note = document.createElement("p");
      note.className = "msg-note";
      el.append(note);
    }
    note.textContent = text;
  }

  function showError(frame) {
    const box = document.createElement("div");
    box.className = "inline-error";
    box.setAttribute("role", "alert");
    let text = frame.message || "Something went wrong.";
    if (frame.retry_after) text += ` (try again in ${Math.ceil(frame.retry_after)} s)`;
    box.textContent = text;
    messagesEl.append(box);
    autoscroll();
    setTimeout(() => box.remove(), 15000);
  }

  // -- the socket ------------------------------------------------------------------------------
  function send(frame) {
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  // Offsets count code points (as Python does), not UTF-16 units: emoji are one character.
  function codePoints(text) {
    let n = 0;
    for (const _ of text) n++; // eslint-disable-line no-unused-vars
    return n;
  }

  function applyDelta(frame) {
    const r = replyFor(frame.message_id);
    const have = r.length;
    if (frame.offset > have) {
      // A gap: ask for everything from what we have.
      send({ type: "resume", message_id: frame.message_id, offset: have });
      return;
    }
    const chars = codePoints(frame.text);
    if (frame.offset + chars <= have) return; // a repeat
    const fresh = frame.offset === have ? frame.text : Array.from(frame.text).slice(have - frame.offset).join("");
    r.text += fresh;
    r.length = frame.offset + chars;
    scheduleRender(frame.message_id);
  }

  const handlers = {
    state(frame) {
      const g = frame.generating;
      if (g) {
        const r = replyFor(g.message_id);
        r.text = g.text;
        r.length = g.offset;
        r.el.dataset.status = "streaming";
        scheduleRender(g.message_id);
        setGenerating(g.message_id);
      } else {
        setGenerating(null);
        messagesEl.querySelectorAll('[data-status="streaming"]').forEach((el) => {
          send({ type: "resume", message_id: parseInt(el.dataset.messageId, 10), offset: 0 });
        });
      }
      if (pending) send({ type: "send", client_id: pending.client_id, content: pending.content });
    },
    message(frame) {
      const m = frame.message;
      const el = messageEl(m.id, m.role, "complete");
      el.querySelector(".msg-content").textContent = m.content;
      if (m.client_id) el.dataset.clientId = m.client_id;
      if (pending && m.client_id === pending.client_id) {
        pending = null;
        input.value = "";
        updateCount();
      }
      autoscroll();
    },
    start(frame) {
      (frame.replaces || []).forEach((id) => {
        replies.delete(id);
        const old = messagesEl.querySelector(`[data-message-id="${id}"]`);
        if (old) old.remove();
      });
      const r = replyFor(frame.message_id);
      r.el.dataset.status = "streaming";
      setGenerating(frame.message_id);
      autoscroll();
    },
    delta: applyDelta,
    retrying(frame) {
      const r = replyFor(frame.message_id);
      showNote(r.el, `The provider is busy; retrying in ${Math.ceil(frame.retry_in)} s…`);
    },
    end(frame) {
      const r = replyFor(frame.message_id);
      r.text = frame.content;
      r.length = codePoints(frame.content);
      r.status = frame.status;
      r.el.dataset.status = frame.status;
      r.el.className = `msg msg-assistant` + (frame.status !== "complete" ? ` msg-${frame.status}` : "");
      renderMarkdown(r.el.querySelector(".msg-content"), r.text);
      const note = r.el.querySelector(".msg-note");
      if (note) note.remove();
      if (frame.status === "stopped") showNote(r.el, "Stopped.");
      if (frame.status === "interrupted") showNote(r.el, "Interrupted: the server restarted while this reply was being written.");
      if (frame.status === "error") showNote(r.el, "This reply failed.");
      if (generatingId === frame.message_id) setGenerating(null);
      autoscroll();
    },
    error(frame) {
      if (pending && ["invalid", "busy", "rate_limited", "quota_exceeded", "not_found"].includes(frame.code)) {
        pending = null; // refused and nothing stored: the text stays in the composer
      }
      showError(frame);
    },
  };

  function setConnection(text) {
    connectionEl.hidden = !text;
    connectionEl.textContent = text || "";
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}/ws/conversations/${conversationId}/`);
    socket.addEventListener("open", () => {
      retryDelay = 500;
      setConnection("");
    });
    socket.addEventListener("message", (event) => {
      let frame;
      try { frame = JSON.parse(event.data); } catch (e) { return; }
      const handler = handlers[frame.type];
      if (handler) handler(frame);
    });
    socket.addEventListener("close", () => {
      setConnection("Connection lost. Reconnecting…");
      setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 8000);
    });
  }
  // For tests and debugging: drop the socket as a network failure would.
  window.chatDebug = { dropSocket: () => socket && socket.close() };

  // -- the composer ---------------------------------------------------------------------------
  function updateCount() {
    const n = input.value.length;
    charCount.textContent = n > maxChars * 0.8 ? `${n.toLocaleString()} / ${maxChars.toLocaleString()}` : "";
  }

  function submit() {
    const content = input.value;
    if (!content.trim() || generatingId !== null || pending) return;
    pending = { client_id: crypto.randomUUID(), content };
    if (!send({ type: "send", client_id: pending.client_id, content })) {
      setConnection("Not connected: your message will be sent when the connection is back.");
    }
  }

  form.addEventListener("submit", (event) => { event.preventDefault(); submit(); });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    }
  });
  input.addEventListener("input", () => {
    input.style.height = "auto";
    input.style.height = Math.min(input.scrollHeight, 320) + "px";
    updateCount();
  });
  stopBtn.addEventListener("click", () => send({ type: "stop" }));

  messagesEl.querySelectorAll('.msg-assistant').forEach((el) => {
    const id = parseInt(el.dataset.messageId, 10);
    replies.set(id, { text: "", length: 0, el, status: el.dataset.status });
  });
  connect();
})();
