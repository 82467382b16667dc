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
