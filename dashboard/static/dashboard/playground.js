// Playground: the controls come from the selected model's profile (the
// #playground-models JSON the server renders, accounts.dashboard.playground_models);
// submit a job to the dashboard endpoint (session + CSRF), poll its task until it
// finishes, showing progress and the images. Every error ends in a readable message
// with what to do next; the status never stays on "submitting".
(function () {
  "use strict";
  var form = document.getElementById("playground");
  if (!form) return;
  var models = JSON.parse(document.getElementById("playground-models").textContent);
  var byId = {};
  models.forEach(function (m) { byId[m.id] = m; });
  var $ = function (id) { return document.getElementById(id); };
  var result = $("result"), statusEl = $("pg-status"), progress = $("pg-progress");
  var errorEl = $("pg-error"), imagesEl = $("pg-images"), button = $("generate"), jobLink = $("pg-job-link");
  var csrf = form.querySelector("input[name=csrfmiddlewaretoken]").value;

  function fill(select, values, selected, labels) {
    select.innerHTML = "";
    values.forEach(function (value) {
      var option = document.createElement("option");
      option.value = value;
      option.textContent = labels ? labels(value) : value;
      if (value === selected) option.selected = true;
      select.appendChild(option);
    });
  }
  function show(id, visible) { $(id).hidden = !visible; }

  function applyModel() {
    var m = byId[form.model.value];
    if (!m) return;
    var size = form.size.value;
    fill(form.size, m.sizes, m.sizes.indexOf(size) >= 0 ? size : m.default_size);
    fill(form.quality, m.qualities, m.default_quality);
    show("quality-field", m.qualities.length > 1);
    fill(form.output_format, m.formats, "png");
    show("format-field", m.formats.length > 0);
    fill($("style"), [""].concat(m.styles), "", function (v) { return v || "default"; });
    show("style-field", m.styles.length > 0);
    form.n.max = m.n_max;
    if (+form.n.value > m.n_max) form.n.value = m.n_max;
    show("n-field", m.n_max > 1);
    show("negative-field", m.negative_prompt);
    form.prompt.maxLength = m.prompt_max;
    fillLoras(m);
  }

  // LoRA adapters (issue 23): one row per adapter the tenant may use with this model
  // (a checkbox and a scale); at most m.loras_max checked, sent as `loras`.
  function fillLoras(m) {
    var box = $("loras");
    box.innerHTML = "";
    (m.loras || []).forEach(function (lora, i) {
      var row = document.createElement("div");
      row.className = "row lora";
      row.dataset.lora = lora.id;
      var pick = document.createElement("label");
      var check = document.createElement("input");
      check.type = "checkbox";
      check.className = "lora-use";
      check.id = "lora-" + i;
      check.value = lora.id;
      check.addEventListener("change", function () { limitLoras(m); });
      pick.appendChild(check);
      var text = " " + lora.id;
      if (lora.surcharge_credits) text += " (+" + lora.surcharge_credits + " credits/image)";
      if (lora.trigger) text += " — trigger: " + lora.trigger;
      pick.appendChild(document.createTextNode(text));
      var scaleLabel = document.createElement("label");
      scaleLabel.appendChild(document.createTextNode("Scale "));
      var scale = document.createElement("input");
      scale.type = "number";
      scale.className = "lora-scale";
      scale.id = "lora-scale-" + i;
      scale.min = "-2"; scale.max = "2"; scale.step = "0.05"; scale.value = "1";
      scaleLabel.appendChild(scale);
      row.appendChild(pick);
      row.appendChild(scaleLabel);
      box.appendChild(row);
    });
    show("loras-field", (m.loras || []).length > 0);
  }
  function limitLoras(m) {
    var checks = $("loras").querySelectorAll("input.lora-use");
    var used = $("loras").querySelectorAll("input.lora-use:checked").length;
    Array.prototype.forEach.call(checks, function (c) { c.disabled = !c.checked && used >= (m.loras_max || 1); });
  }
  function chosenLoras() {
    var chosen = [];
    Array.prototype.forEach.call($("loras").querySelectorAll("div.lora"), function (row) {
      var check = row.querySelector("input.lora-use");
      if (!check.checked) return;
      var scale = parseFloat(row.querySelector("input.lora-scale").value);
      chosen.push({name: check.value, scale: isNaN(scale) ? 1 : scale});
    });
    return chosen;
  }
  form.model.addEventListener("change", applyModel);
  applyModel();

  function link(href, text) {
    var a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    return a;
  }
  // One readable message per failure, with the action to take.
  function showError(status, error, retryAfter) {
    var message = (error && error.message) || "";
    errorEl.innerHTML = "";
    var action = null;
    if (status === 402) {
      // The link below replaces the top-up URL that the API's message spells out.
      message = (message || "Your balance does not cover this request.").replace(/\s*Add credits at \S+\s*$/, "");
      action = link(form.dataset.billing, "Add credits on the billing page");
      action.id = "pg-topup";
    } else if (status === 401 || status === 403) {
      message = message || "You are signed out or not allowed to do this.";
      action = link(form.dataset.login, "Sign in again");
    } else if (status === 429) {
      message = message || "Too many requests.";
      message += " Try again in " + (retryAfter || "a few") + " seconds.";
    } else if (status === 0) {
      message = "The server could not be reached (" + (message || "network error") + "). Check your connection and try again.";
    } else if (status >= 500) {
      message = (message || "The server had a problem.") + " Try again in a moment.";
    } else if (status === 400 && error && error.param) {
      message = message + " (field: " + error.param + ")";
    } else if (!message) {
      message = "The request failed (HTTP " + status + ").";
    }
    errorEl.appendChild(document.createTextNode(message + " "));
    if (action) errorEl.appendChild(action);
    errorEl.hidden = false;
    statusEl.textContent = status === 402 ? "not enough credits" : "failed";
    statusEl.dataset.status = "error";
    statusEl.dataset.code = String(status);
    button.disabled = false;
  }

  function render(task) {
    var p = task.progress || {steps_done: 0, steps_total: 1, fraction: 0};
    statusEl.textContent = task.status + " (" + p.steps_done + "/" + p.steps_total + " steps)";
    statusEl.dataset.status = task.status;
    progress.value = p.fraction;
    if (task.status === "succeeded") {
      imagesEl.innerHTML = "";
      task.result.data.forEach(function (item, i) {
        var img = document.createElement("img");
        img.src = item.url || ("data:image/png;base64," + item.b64_json);
        img.alt = "generated image " + (i + 1) + ": " + form.prompt.value.slice(0, 80);
        img.className = "generated";
        imagesEl.appendChild(img);
      });
      jobLink.innerHTML = "";
      jobLink.appendChild(link(form.dataset.jobs + encodeURIComponent(task.id) + "/", "Open the job"));
      jobLink.appendChild(document.createTextNode(" · " + task.credits_charged + " credits charged"));
      jobLink.hidden = false;
      button.disabled = false;
      return true;
    }
    if (task.status === "failed" || task.status === "cancelled") {
      showError(task.error && task.error.code === "insufficient_quota" ? 402 : 500,
                task.error || {message: "The job was " + task.status + "."});
      statusEl.dataset.status = task.status;
      return true;
    }
    return false;
  }

  function request(url, options) {
    return fetch(url, options).then(function (r) {
      return r.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        return {status: r.status, data: data, retryAfter: r.headers.get("Retry-After")};
      });
    }, function (e) { return {status: 0, data: {error: {message: String(e.message || e)}}}; });
  }

  // Polls count against the member's rate limit (DEFAULT_MEMBER_RPM) like any request:
  // start at 1 s and back off to 4 s; a 429 on a poll waits for Retry-After and goes on
  // (the job keeps running and is charged whether or not the page is looking).
  function poll(id, delay) {
    delay = Math.min(delay || 1000, 4000);
    request(form.dataset.task + encodeURIComponent(id), {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (answer) {
        if (answer.status === 429) {
          var wait = Math.max(1, parseInt(answer.retryAfter, 10) || 5);
          statusEl.textContent = "running (rate limit reached: checking again in " + wait + " s)";
          setTimeout(function () { poll(id, delay); }, wait * 1000);
          return;
        }
        if (answer.status !== 200 || !answer.data || !answer.data.status) {
          showError(answer.status, answer.data && answer.data.error, answer.retryAfter);
          return;
        }
        if (!render(answer.data)) setTimeout(function () { poll(id, delay * 1.5); }, delay);
      });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var m = byId[form.model.value] || {};
    button.disabled = true;
    errorEl.hidden = true;
    jobLink.hidden = true;
    imagesEl.innerHTML = "";
    result.hidden = false;
    progress.value = 0;
    statusEl.textContent = "submitting";
    statusEl.dataset.status = "submitting";
    var body = {prompt: form.prompt.value, model: form.model.value, size: form.size.value};
    if (m.qualities && m.qualities.length > 1) body.quality = form.quality.value;
    if (m.n_max > 1) body.n = parseInt(form.n.value, 10) || 1;
    if (m.formats && m.formats.length) body.output_format = form.output_format.value;
    if (m.styles && m.styles.length && $("style").value) body.style = $("style").value;
    if (form.seed.value !== "") body.seed = parseInt(form.seed.value, 10);
    if (m.negative_prompt && form.negative_prompt.value.trim()) body.negative_prompt = form.negative_prompt.value;
    var loras = chosenLoras();
    if (loras.length) body.loras = loras;
    request(form.dataset.submit, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRFToken": csrf, "Accept": "application/json"},
      body: JSON.stringify(body)
    }).then(function (answer) {
      if (answer.status !== 202 || !answer.data || !answer.data.id) {
        showError(answer.status, answer.data && answer.data.error, answer.retryAfter);
        return;
      }
      result.dataset.job = answer.data.id;
      if (!render(answer.data)) setTimeout(function () { poll(answer.data.id, 1000); }, 500);
    });
  });
})();
