// notifier console: the live newsletter preview. Everything works without this script (the
// "Refresh preview" button posts the form); with it, the preview follows the typing.
(function () {
  "use strict";
  var form = document.querySelector("form[data-live-preview]");
  if (!form || !window.fetch) return;
  var url = form.getAttribute("data-live-preview");
  var timer = null;
  function refresh() {
    fetch(url, { method: "POST", body: new FormData(form), credentials: "same-origin" })
      .then(function (response) { return response.json(); })
      .then(function (data) {
        if (!data.html) return;
        document.querySelectorAll("[data-preview-frame]").forEach(function (frame) { frame.srcdoc = data.html; });
        var subject = document.querySelector("[data-preview-subject]");
        if (subject) subject.textContent = data.subject;
      })
      .catch(function () {});
  }
  form.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(refresh, 400);
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
