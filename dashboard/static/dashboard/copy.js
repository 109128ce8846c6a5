// Copy buttons (data-copy="#selector") and sample tabs (role=tab + aria-controls).
// navigator.clipboard needs a secure context (https or localhost); elsewhere the text is
// selected and copied with execCommand, and when that fails too it stays selected for Ctrl+C.
(function () {
  "use strict";
  function fallbackCopy(node) {
    var range = document.createRange();
    range.selectNodeContents(node);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    var done = false;
    try { done = document.execCommand("copy"); } catch (e) { done = false; }
    return done;
  }
  function announce(button, text) {
    var label = button.dataset.label || button.textContent;
    button.dataset.label = label;
    button.textContent = text;
    setTimeout(function () { button.textContent = label; }, 2000);
  }
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var node = document.querySelector(button.dataset.copy);
      if (!node) return;
      var text = node.textContent.trim();
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(
          function () { announce(button, "Copied"); },
          function () { announce(button, fallbackCopy(node) ? "Copied" : "Press Ctrl+C"); }
        );
      } else {
        announce(button, fallbackCopy(node) ? "Copied" : "Press Ctrl+C");
      }
    });
  });
  var tabs = document.querySelectorAll("[role=tab][aria-controls]");
  tabs.forEach(function (tab) {
    tab.addEventListener("click", function () {
      tabs.forEach(function (other) {
        var selected = other === tab;
        other.setAttribute("aria-selected", selected ? "true" : "false");
        document.getElementById(other.getAttribute("aria-controls")).hidden = !selected;
      });
    });
  });
})();
