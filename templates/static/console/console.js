// notifier console: the live newsletter preview. Everything works without this script (the
// "Refresh preview" button posts the form); with it, the preview follows the typing. When the
// templates do not render, the preview says why instead of showing the last good render, and
// every field that is wrong is marked at once.
(function () {
  "use strict";
  var form = document.querySelector("form[data-live-preview]");
  if (!form || !window.fetch) return;
  var url = form.getAttribute("data-live-preview");
  var timer = null;
  var fields = ["subject", "preheader", "body"];

  function describedBy(input, id, on) {
    var ids = (input.getAttribute("aria-describedby") || "").split(/\s+/).filter(function (v) {
      return v && v !== id;
    });
    if (on) ids.push(id);
    if (ids.length) input.setAttribute("aria-describedby", ids.join(" "));
    else input.removeAttribute("aria-describedby");
  }

  function markFields(errors) {
    fields.forEach(function (name) {
      var input = form.elements[name];
      if (!input || !input.id) return;
      var id = name + "-error";
      var note = document.getElementById(id);
      var message = errors[name];
      if (message) {
        if (!note) {
          note = document.createElement("p");
          note.className = "field-error";
          note.id = id;
          input.insertAdjacentElement("afterend", note);
        }
        note.textContent = message;
        input.setAttribute("aria-invalid", "true");
      } else {
        if (note) note.remove();
        input.removeAttribute("aria-invalid");
      }
      describedBy(input, id, Boolean(message));
    });
  }

  function showPreview(data) {
    var shown = document.querySelector("[data-preview-shown]");
    var failed = document.querySelector("[data-preview-errors]");
    var renderErrors = data.render_errors || {};
    if (data.html === null || data.html === undefined) {
      var list = failed.querySelector("[data-preview-error-list]");
      list.textContent = "";
      Object.keys(renderErrors).forEach(function (name) {
        var item = document.createElement("li");
        item.textContent = name.charAt(0).toUpperCase() + name.slice(1) + ": " + renderErrors[name];
        list.appendChild(item);
      });
      shown.hidden = true;
      failed.hidden = false;
      return;
    }
    document.querySelectorAll("[data-preview-frame]").forEach(function (frame) { frame.srcdoc = data.html; });
    var subject = document.querySelector("[data-preview-subject]");
    if (subject) subject.textContent = data.subject;
    failed.hidden = true;
    shown.hidden = false;
  }

  function refresh() {
    fetch(url, { method: "POST", body: new FormData(form), credentials: "same-origin" })
      .then(function (response) { return response.json(); })
      .then(function (data) {
        markFields(data.errors || {});
        showPreview(data);
      })
      .catch(function () {});
  }
  form.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(refresh, 400);
  });
})();

// A draft's audience: the count follows the lists and the segment as they are edited (the
// "Save audience and count" button does the same without this script). Nothing is saved.
(function () {
  "use strict";
  var form = document.querySelector("form[data-live-count]");
  var shown = document.getElementById("audience-count");
  if (!form || !shown || !window.fetch) return;
  var url = form.getAttribute("data-live-count");
  var timer = null;
  function refresh() {
    fetch(url, { method: "POST", body: new FormData(form), credentials: "same-origin" })
      .then(function (response) { return response.json(); })
      .then(function (data) {
        if (typeof data.count === "number") {
          shown.textContent = "Sending now would reach " + data.count.toLocaleString("en") +
            (data.count === 1 ? " member" : " members") +
            " (subscribed to any of the lists, matching the segment, not suppressed).";
        } else {
          shown.textContent = "The audience cannot be counted: " + (data.error || "the segment is not valid") + ".";
        }
      })
      .catch(function () {});
  }
  form.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(refresh, 400);
  });
  form.addEventListener("change", function () {
    clearTimeout(timer);
    timer = setTimeout(refresh, 100);
  });
})();

// While a newsletter sends, its figures update in place every few seconds (no page reload, so
// nothing moves under the keyboard); "Pause updates" stops that. Without this script the page
// offers a "Refresh now" link.
(function () {
  "use strict";
  var live = document.querySelector("[data-refresh]");
  if (!live || !window.fetch || !window.DOMParser) return;
  var every = parseInt(live.getAttribute("data-refresh"), 10) * 1000;
  var paused = false;
  var button = document.createElement("button");
  button.type = "button";
  button.className = "secondary";
  button.textContent = "Pause updates";
  button.addEventListener("click", function () {
    paused = !paused;
    button.textContent = paused ? "Resume updates" : "Pause updates";
  });
  live.appendChild(button);
  function poll() {
    if (paused) { setTimeout(poll, every); return; }
    fetch(window.location.href, { credentials: "same-origin" })
      .then(function (response) { return response.text(); })
      .then(function (text) {
        var fresh = new DOMParser().parseFromString(text, "text/html").getElementById(live.id);
        if (!fresh || fresh.getAttribute("data-status") !== live.getAttribute("data-status")) {
          window.location.reload();
          return;
        }
        live.querySelector("[data-live-body]").innerHTML = fresh.querySelector("[data-live-body]").innerHTML;
        setTimeout(poll, every);
      })
      .catch(function () { setTimeout(poll, every); });
  }
  setTimeout(poll, every);
})();
