// Attachments on the conversation page: the composer's files (button, drag and drop, paste), each
// uploaded at once with a chip showing name, size, a thumbnail and progress, removable before
// sending; the files on sent messages; and the image lightbox. chat.js asks `window.chatFiles`
// which uploads are ready (`ids()`), and tells it when they were sent (`clear()`).
(function () {
  "use strict";

  const main = document.querySelector("main.chat[data-conversation-id]");
  if (!main) return;
  const conversationId = main.dataset.conversationId;
  const tray = document.getElementById("attach-tray");
  const button = document.getElementById("attach");
  const picker = document.getElementById("attach-input");
  const composer = document.getElementById("composer");
  const input = document.getElementById("composer-input");
  const messagesEl = document.getElementById("messages");
  const maxFiles = parseInt(main.dataset.maxFiles || "10", 10);
  const maxBytes = parseInt(main.dataset.maxUpload || "20971520", 10);
  const listeners = [];
  const files = []; // {key, name, size, type, state: "uploading"|"ready"|"failed", id, xhr, chip, url}

  function changed() { listeners.forEach((fn) => fn()); }

  function csrfToken() {
    const m = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    if (m) return decodeURIComponent(m[1]);
    const headers = document.body.getAttribute("hx-headers");
    try { return JSON.parse(headers)["X-CSRFToken"]; } catch (e) { return ""; }
  }

  // As Django's filesizeformat, so a chip reads the same before and after a reload.
  function sizeText(bytes) {
    if (bytes < 1024) return `${bytes} byte${bytes === 1 ? "" : "s"}`;
    const units = ["KB", "MB", "GB"];
    let n = bytes / 1024;
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return `${n.toFixed(1)} ${units[i]}`;
  }

  function kindLabel(type) {
    if (type === "application/pdf") return "PDF";
    return "TXT";
  }

  // -- a sent message's files (also rendered by the server: conversations/_attachment.html) --------------
  function fileLink(f) {
    const url = `/attachments/${f.id}/`;
    const a = document.createElement("a");
    a.href = url;
    // What an edit of the message needs to keep the file (editChips).
    a.dataset.attachmentId = f.id;
    a.dataset.name = f.name;
    a.dataset.size = f.size;
    a.dataset.contentType = f.content_type;
    if (f.content_type.startsWith("image/")) {
      a.className = "file-thumb";
      a.dataset.lightbox = "";
      a.title = `${f.name} (${sizeText(f.size)})`;
      const img = document.createElement("img");
      img.src = url;
      img.alt = f.name;
      img.loading = "lazy";
      a.append(img);
    } else {
      a.className = "file-chip";
      a.download = f.name;
      a.title = `Download ${f.name}`;
      const kind = document.createElement("span");
      kind.className = "file-kind";
      kind.setAttribute("aria-hidden", "true");
      kind.textContent = kindLabel(f.content_type);
      const name = document.createElement("span");
      name.className = "file-name";
      name.textContent = f.name;
      const size = document.createElement("span");
      size.className = "file-size";
      size.textContent = sizeText(f.size);
      a.append(kind, name, size);
    }
    return a;
  }

  function showOnMessage(el, list) {
    if (!list || !list.length || el.querySelector(".msg-files")) return;
    const box = document.createElement("div");
    box.className = "msg-files";
    list.forEach((f) => box.append(fileLink(f)));
    el.querySelector(".msg-content").before(box);
  }

  // -- the composer's files --------------------------------------------------------------------------------
  function chipFor(entry, onRemove = () => removeEntry(entry)) {
    const chip = document.createElement("div");
    chip.className = "attach-chip";
    chip.setAttribute("role", "listitem");
    if (entry.url) {
      const img = document.createElement("img");
      img.src = entry.url;
      img.alt = "";
      img.className = "attach-thumb";
      chip.append(img);
    } else {
      const kind = document.createElement("span");
      kind.className = "file-kind";
      kind.setAttribute("aria-hidden", "true");
      kind.textContent = entry.type === "application/pdf" ? "PDF" : "FILE";
      chip.append(kind);
    }
    const text = document.createElement("span");
    text.className = "attach-text";
    const name = document.createElement("span");
    name.className = "file-name";
    name.textContent = entry.name;
    const meta = document.createElement("span");
    meta.className = "attach-meta";
    meta.textContent = sizeText(entry.size);
    text.append(name, meta);
    const bar = document.createElement("progress");
    bar.max = 100;
    bar.value = 0;
    bar.className = "attach-progress";
    bar.setAttribute("aria-label", `Uploading ${entry.name}`);
    bar.hidden = entry.size < 512 * 1024; // only large files show their progress
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "icon-btn attach-remove";
    remove.setAttribute("aria-label", `Remove ${entry.name}`);
    remove.title = "Remove";
    remove.textContent = "×";
    remove.addEventListener("click", onRemove);
    chip.append(text, bar, remove);
    entry.meta = meta;
    entry.bar = bar;
    return chip;
  }

  function fail(entry, reason) {
    entry.state = "failed";
    entry.chip.classList.add("attach-failed");
    const thumb = entry.chip.querySelector(".attach-thumb");
    if (thumb) {
      // A refused "image" may not be one: no broken picture, a mark instead.
      const mark = document.createElement("span");
      mark.className = "file-kind";
      mark.setAttribute("aria-hidden", "true");
      mark.textContent = "!";
      thumb.replaceWith(mark);
    }
    entry.meta.textContent = reason;
    entry.bar.hidden = true;
    entry.chip.setAttribute("title", reason);
    changed();
  }

  function upload(entry, file) {
    const form = new FormData();
    form.append("file", file, entry.name);
    const xhr = new XMLHttpRequest();
    entry.xhr = xhr;
    xhr.open("POST", `/conversations/${conversationId}/attachments/`);
    xhr.setRequestHeader("X-CSRFToken", csrfToken());
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) entry.bar.value = Math.round((e.loaded / e.total) * 100);
    });
    xhr.addEventListener("load", () => {
      entry.xhr = null;
      const body = xhr.response || {};
      if (xhr.status === 201 && body.id) {
        entry.state = "ready";
        entry.id = body.id;
        entry.bar.hidden = true;
        entry.chip.dataset.attachmentId = body.id;
        entry.chip.classList.add("attach-ready");
        changed();
      } else {
        fail(entry, body.error || `Upload failed (${xhr.status}).`);
      }
    });
    xhr.addEventListener("error", () => { entry.xhr = null; fail(entry, "Upload failed: no connection."); });
    xhr.send(form);
  }

  function add(list) {
    for (const file of list) {
      if (files.length >= maxFiles) {
        announce(`At most ${maxFiles} files can go with one message.`);
        break;
      }
      const name = file.name || (file.type.startsWith("image/") ? `pasted-image.${file.type.split("/")[1] || "png"}` : "file");
      const entry = { key: crypto.randomUUID(), name, size: file.size, type: file.type, state: "uploading", id: null };
      if (file.type.startsWith("image/")) entry.url = URL.createObjectURL(file);
      entry.chip = chipFor(entry);
      files.push(entry);
      tray.append(entry.chip);
      tray.hidden = false;
      if (file.size > maxBytes) {
        fail(entry, `Too large: the limit is ${sizeText(maxBytes)}.`);
        continue;
      }
      upload(entry, file);
    }
    changed();
  }

  function forget(entry) {
    const i = files.indexOf(entry);
    if (i >= 0) files.splice(i, 1);
    entry.chip.remove();
    if (entry.url) URL.revokeObjectURL(entry.url);
    tray.hidden = files.length === 0;
  }

  function removeEntry(entry) {
    if (entry.xhr) entry.xhr.abort();
    if (entry.state === "ready" && entry.id) {
      fetch(`/attachments/${entry.id}/remove/`, {
        method: "POST",
        headers: { "X-CSRFToken": csrfToken() },
        credentials: "same-origin",
      });
    }
    forget(entry);
    changed();
    input.focus();
  }

  // -- an edit's files: the message's own, kept unless removed ---------------------------------------------
  // The chips of the files sent with message `el`, for its edit form. Removing one only leaves it out
  // of the new version (the message itself keeps it); nothing is uploaded again.
  function editChips(el) {
    const links = [...el.querySelectorAll(".msg-files [data-attachment-id]")];
    if (!links.length) return null;
    const box = document.createElement("div");
    box.className = "attach-tray edit-files";
    box.setAttribute("role", "list");
    box.setAttribute("aria-label", "Files of this message");
    const kept = [];
    for (const a of links) {
      const type = a.dataset.contentType || "";
      const entry = { id: a.dataset.attachmentId, name: a.dataset.name || "", size: parseInt(a.dataset.size || "0", 10), type };
      if (type.startsWith("image/")) entry.url = a.href;
      entry.chip = chipFor(entry, () => {
        kept.splice(kept.indexOf(entry), 1);
        entry.chip.remove();
        box.hidden = kept.length === 0;
        announce(`${entry.name} will not be sent with this version.`);
      });
      entry.chip.classList.add("attach-ready");
      entry.bar.hidden = true;
      kept.push(entry);
      box.append(entry.chip);
    }
    return { element: box, ids: () => kept.map((k) => k.id) };
  }

  function announce(text) {
    const el = document.getElementById("announcer");
    if (el) el.textContent = text;
  }

  if (button && picker) {
    button.addEventListener("click", () => picker.click());
    picker.addEventListener("change", () => { add([...picker.files]); picker.value = ""; });
  }
  if (composer) {
    input.addEventListener("paste", (event) => {
      const pasted = [...(event.clipboardData ? event.clipboardData.files : [])];
      if (pasted.length) {
        event.preventDefault();
        add(pasted);
      }
    });
    const zone = main;
    zone.addEventListener("dragover", (event) => {
      if (!event.dataTransfer || ![...event.dataTransfer.types].includes("Files")) return;
      event.preventDefault();
      composer.classList.add("drop-target");
    });
    zone.addEventListener("dragleave", (event) => {
      if (!zone.contains(event.relatedTarget)) composer.classList.remove("drop-target");
    });
    zone.addEventListener("drop", (event) => {
      composer.classList.remove("drop-target");
      if (!event.dataTransfer || !event.dataTransfer.files.length) return;
      event.preventDefault();
      add([...event.dataTransfer.files]);
    });
  }

  // -- the lightbox -----------------------------------------------------------------------------------------
  const lightbox = document.getElementById("lightbox");
  if (lightbox && messagesEl) {
    const img = lightbox.querySelector("img");
    const caption = lightbox.querySelector(".lightbox-caption");
    const download = lightbox.querySelector(".lightbox-download");
    messagesEl.addEventListener("click", (event) => {
      const link = event.target.closest("a[data-lightbox]");
      if (!link || event.ctrlKey || event.metaKey || event.shiftKey) return;
      event.preventDefault();
      img.src = link.href;
      img.alt = link.dataset.name || "";
      caption.textContent = link.dataset.name || "";
      download.href = link.href;
      download.download = link.dataset.name || "";
      lightbox.showModal();
    });
    lightbox.addEventListener("click", (event) => {
      if (event.target === lightbox || event.target.closest("[data-close]")) lightbox.close();
    });
  }

  window.chatFiles = {
    // Ids of the uploads ready to send; null while one is still uploading.
    ids() {
      if (files.some((f) => f.state === "uploading")) return null;
      return files.filter((f) => f.state === "ready").map((f) => f.id);
    },
    uploading: () => files.some((f) => f.state === "uploading"),
    count: () => files.filter((f) => f.state === "ready").length,
    clear() { [...files].forEach(forget); changed(); },
    onChange(fn) { listeners.push(fn); },
    showOnMessage,
    editChips,
  };
})();
