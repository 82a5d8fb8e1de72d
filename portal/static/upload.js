/* Upload page: turn the plain form into resumable tus uploads with one progress row per file.
 * Without this script (or without tus-js-client) the form posts as usual; the server applies
 * the same checks either way. Every file goes through tus, small ones too: one path to test,
 * and a dropped connection never costs more than the chunk being sent. */
(function () {
  "use strict";
  var form = document.getElementById("upload-form");
  var panel = document.getElementById("uploads");
  if (!form || !panel || !window.tus || !window.tus.isSupported || !window.fetch) {
    return;
  }
  var list = document.getElementById("upload-list");
  var input = form.querySelector("input[type=file]");
  var zone = document.getElementById("dropzone");
  var token = form.querySelector("input[name=csrf_token]").value;
  var msg = panel.dataset;
  var running = 0;

  function fill(template, values) {
    return template.replace(/\{(\w+)\}/g, function (all, key) {
      return key in values ? values[key] : all;
    });
  }

  function field(name) {
    var element = form.elements.namedItem(name);
    return element ? element.value : "";
  }

  function errorOf(error) {
    // The portal explains a refusal in JSON ({"error": ...}) in the user's language.
    var response = error && error.originalResponse;
    if (response) {
      try {
        var body = JSON.parse(response.getBody());
        if (body && body.error) {
          return body.error;
        }
      } catch (ignored) {
        /* not the portal's answer (a proxy's page): fall through */
      }
    }
    return null;
  }

  function row(file) {
    var item = document.createElement("li");
    item.className = "upload-item";
    var name = document.createElement("span");
    name.className = "name";
    name.textContent = file.name;
    var bar = document.createElement("progress");
    bar.max = 100;
    bar.value = 0;
    bar.setAttribute("aria-label", file.name);
    var state = document.createElement("span");
    state.className = "state";
    state.setAttribute("role", "status");
    state.textContent = msg.waiting;
    var cancel = document.createElement("button");
    cancel.type = "button";
    cancel.className = "link";
    cancel.textContent = msg.cancel;
    var hidden = document.createElement("span");
    hidden.className = "visually-hidden";
    hidden.textContent = " " + file.name;
    cancel.appendChild(hidden);
    item.append(name, cancel, bar, state);
    list.appendChild(item);
    return { item: item, bar: bar, state: state, cancel: cancel };
  }

  function finish(view, kind, text, link) {
    view.item.classList.add(kind);
    view.state.textContent = text;
    if (link) {
      var a = document.createElement("a");
      a.href = link;
      a.textContent = msg.edit;
      view.state.append(" · ", a);
    }
    view.cancel.remove();
    if (kind === "accepted") {
      view.bar.value = 100;
    }
    running -= 1;
  }

  function speedText(samples, now, sent) {
    // Average over the last few seconds: the instant rate jumps with every chunk.
    samples.push([now, sent]);
    while (samples.length > 2 && now - samples[0][0] > 3000) {
      samples.shift();
    }
    var first = samples[0];
    var seconds = (now - first[0]) / 1000;
    if (seconds <= 0) {
      return "";
    }
    var rate = (sent - first[1]) / seconds / 1048576;
    var digits = rate < 10 ? 1 : 0;
    var text = rate.toLocaleString(document.documentElement.lang || undefined, {
      minimumFractionDigits: digits,
      maximumFractionDigits: digits
    });
    return fill(msg.speed, { speed: text });
  }

  function verdict(url, again) {
    // Every byte is in but the server may not have checked the file yet (its answer to the
    // last chunk was lost, or it failed then): an empty last chunk asks it to, once.
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        return response.json();
      })
      .then(function (result) {
        if (result.state !== "uploading" || result.offset !== result.length || !again) {
          return result;
        }
        return fetch(url, {
          method: "PATCH",
          credentials: "same-origin",
          headers: {
            "Tus-Resumable": "1.0.0",
            "X-CSRFToken": token,
            "Upload-Offset": String(result.length),
            "Content-Type": "application/offset+octet-stream"
          }
        }).then(function () {
          return verdict(url, false);
        });
      });
  }

  function send(file, metadata) {
    var view = row(file);
    var samples = [];
    var done = false;
    running += 1;
    var upload = new window.tus.Upload(file, {
      endpoint: form.dataset.endpoint,
      chunkSize: Number(form.dataset.chunkSize),
      retryDelays: [0, 1000, 3000, 5000, 10000, 20000, 30000, 60000],
      headers: { "X-CSRFToken": token },
      metadata: metadata,
      removeFingerprintOnSuccess: true,
      onProgress: function (sent, total) {
        var percent = total ? Math.floor((sent / total) * 100) : 100;
        view.bar.value = percent;
        view.state.textContent =
          sent === total
            ? msg.checking
            : fill(msg.sending, { percent: percent, speed: speedText(samples, Date.now(), sent) });
      },
      onShouldRetry: function (error, attempt, options) {
        view.state.textContent = msg.retrying;
        samples.length = 0;
        var status = error.originalResponse ? error.originalResponse.getStatus() : 0;
        return status === 0 || status >= 500 || status === 409 || status === 423;
      },
      onSuccess: function () {
        verdict(upload.url, true)
          .then(function (result) {
            done = true;
            if (result.state === "accepted") {
              finish(view, "accepted", msg.accepted, result.url);
            } else if (result.state === "rejected") {
              finish(view, "rejected", fill(msg.rejected, { reason: result.reason || "" }));
            } else {
              finish(view, "failed", msg.failed);
            }
          })
          .catch(function () {
            done = true;
            finish(view, "failed", msg.failed);
          });
      },
      onError: function (error) {
        done = true;
        var reason = errorOf(error);
        if (reason) {
          finish(view, "rejected", fill(msg.rejected, { reason: reason }));
        } else {
          finish(view, "failed", msg.failed);
        }
      }
    });
    view.cancel.addEventListener("click", function () {
      if (done) {
        return;
      }
      done = true;
      upload.abort(true).catch(function () {
        /* already gone on the server: nothing left to remove */
      });
      finish(view, "cancelled", msg.cancelled);
    });
    // A file chosen again after a cut or a closed laptop resumes where it stopped.
    upload
      .findPreviousUploads()
      .then(function (previous) {
        if (previous.length) {
          upload.resumeFromPreviousUpload(previous[0]);
        }
      })
      .finally(function () {
        if (!done) {
          upload.start();
        }
      });
  }

  function sendAll(files) {
    if (!files || !files.length) {
      return false;
    }
    panel.hidden = false;
    var common = { session: field("session"), tags: field("tags") };
    // Title and description belong to a single file, as in the plain form.
    var single = files.length === 1;
    Array.prototype.forEach.call(files, function (file) {
      var metadata = { filename: file.name, filetype: file.type || "" };
      Object.keys(common).forEach(function (key) {
        metadata[key] = common[key];
      });
      if (single) {
        metadata.title = field("title");
        metadata.description = field("description");
      }
      send(file, metadata);
    });
    return true;
  }

  form.addEventListener("submit", function (event) {
    if (sendAll(input.files)) {
      event.preventDefault();
      // The form stays usable: pick more files while these are sent.
      ["files", "title", "description"].forEach(function (name) {
        var element = form.elements.namedItem(name);
        if (element) {
          element.value = "";
        }
      });
    }
  });

  zone.querySelector(".drop-hint").hidden = false;
  ["dragenter", "dragover"].forEach(function (type) {
    zone.addEventListener(type, function (event) {
      event.preventDefault();
      zone.classList.add("active");
    });
  });
  ["dragleave", "drop"].forEach(function (type) {
    zone.addEventListener(type, function () {
      zone.classList.remove("active");
    });
  });
  zone.addEventListener("drop", function (event) {
    event.preventDefault();
    sendAll(event.dataTransfer && event.dataTransfer.files);
  });

  window.addEventListener("beforeunload", function (event) {
    if (running > 0) {
      event.preventDefault();
      event.returnValue = msg.leave;
    }
  });
})();
