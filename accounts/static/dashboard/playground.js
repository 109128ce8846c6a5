// Playground: submit a job to the dashboard endpoint (session + CSRF), then poll its
// task until it finishes, showing progress and the final image(s).
(function () {
  "use strict";
  var form = document.getElementById("playground");
  if (!form) return;
  var result = document.getElementById("result");
  var statusEl = document.getElementById("pg-status");
  var progress = document.getElementById("pg-progress");
  var errorEl = document.getElementById("pg-error");
  var imagesEl = document.getElementById("pg-images");
  var button = document.getElementById("generate");
  var csrf = form.querySelector("input[name=csrfmiddlewaretoken]").value;

  function showError(message) {
    errorEl.textContent = message;
    errorEl.hidden = false;
    button.disabled = false;
  }

  function render(task) {
    statusEl.textContent = task.status + " (" + task.progress.steps_done + "/" + task.progress.steps_total + " steps)";
    statusEl.dataset.status = task.status;
    progress.value = task.progress.fraction;
    if (task.status === "succeeded") {
      imagesEl.innerHTML = "";
      task.result.data.forEach(function (item) {
        var img = document.createElement("img");
        img.src = item.url || ("data:image/png;base64," + item.b64_json);
        img.alt = "generated image";
        img.className = "generated";
        imagesEl.appendChild(img);
      });
      button.disabled = false;
      return true;
    }
    if (task.status === "failed" || task.status === "cancelled") {
      showError((task.error && task.error.message) || task.status);
      return true;
    }
    return false;
  }

  function poll(id) {
    fetch(form.dataset.task + encodeURIComponent(id), {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (r) { return r.json(); })
      .then(function (task) {
        if (task.error && !task.status) { showError(task.error.message); return; }
        if (!render(task)) setTimeout(function () { poll(id); }, 500);
      })
      .catch(function (e) { showError(String(e)); });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    button.disabled = true;
    errorEl.hidden = true;
    imagesEl.innerHTML = "";
    result.hidden = false;
    progress.value = 0;
    statusEl.textContent = "submitting";
    var body = {prompt: form.prompt.value, model: form.model.value, size: form.size.value};
    fetch(form.dataset.submit, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRFToken": csrf, "Accept": "application/json"},
      body: JSON.stringify(body)
    }).then(function (r) {
      return r.json().then(function (data) { return {status: r.status, data: data}; });
    }).then(function (answer) {
      if (answer.status !== 202) { showError(answer.data.error ? answer.data.error.message : "HTTP " + answer.status); return; }
      result.dataset.job = answer.data.id;
      render(answer.data);
      poll(answer.data.id);
    }).catch(function (e) { showError(String(e)); });
  });
})();
