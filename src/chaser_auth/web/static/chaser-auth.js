/* chaser-auth pages: forgot-password, reset-password, verify-email, change-email,
   undo-email-change.
 *
 * Tokens arrive in the URL fragment (#token=…), which browsers never send to a server. This script
 * takes the token, removes it from the address bar at once, and keeps it only in this tab's
 * history entry (history.state), so a reload before submitting still works. Loading a page never
 * uses a token: reset-password only *checks* it; the password change and the email verification
 * happen when the person submits. Opened without a link (a fresh tab, another device), the
 * reset-password and verify-email pages ask for the one-time code from the email instead: the
 * code, with the address, stands for the link (reset-password gets the link's token for it and
 * goes on as from the link). Every text a person reads lives in the page's template
 * (data-message elements), so an operator can reword or translate it, and the server renders it
 * in the reader's language. The language switch (?lang=) keeps a token this tab holds.
 */
(function () {
  "use strict";

  var TOKEN = /^[A-Za-z0-9_-]{43,}$/;

  function $(selector) { return document.querySelector(selector); }

  function message(name, values) {
    var node = document.querySelector('[data-message="' + name + '"]');
    var text = node ? node.textContent.trim() : name;
    // A message with a count has a form per plural category of the page's language.
    var counted = node && node.getAttribute("data-count");
    if (counted && values && typeof values[counted] === "number" && window.Intl && Intl.PluralRules) {
      var category = new Intl.PluralRules(document.documentElement.lang).select(values[counted]);
      text = node.getAttribute("data-plural-" + category) || text;
    }
    Object.keys(values || {}).forEach(function (key) {
      text = text.split("{" + key + "}").join(String(values[key]));
    });
    return text;
  }

  function show(state, focus) {
    document.querySelectorAll("[data-state]").forEach(function (section) {
      section.hidden = section.getAttribute("data-state") !== state;
    });
    var heading = document.querySelector('[data-state="' + state + '"] h1');
    if (focus && heading) { heading.focus(); }
  }

  function takeToken() {
    var fromFragment = new URLSearchParams(location.hash.slice(1)).get("token");
    var saved = history.state && typeof history.state === "object" ? history.state : {};
    var token = fromFragment || (typeof saved.token === "string" ? saved.token : null);
    var done = !fromFragment && saved.done === true;
    // The path alone (and the chosen language): no fragment, nothing secret left for a
    // screenshot, a bookmark or a share.
    history.replaceState(token ? { token: token } : (done ? { done: true } : null), "", here());
    return { token: token, done: done };
  }

  function here() {
    var lang = new URLSearchParams(location.search).get("lang");
    return location.pathname + (lang ? "?lang=" + encodeURIComponent(lang) : "");
  }

  // Switching language loads the page anew: a link's token still held goes along in the
  // fragment (never to the server), so the person can go on in the other language.
  function keepTokenAcrossLanguages() {
    document.querySelectorAll("a[data-lang]").forEach(function (link) {
      link.addEventListener("click", function (event) {
        var saved = history.state && typeof history.state === "object" ? history.state : {};
        if (typeof saved.token === "string" && TOKEN.test(saved.token)) {
          event.preventDefault();
          location.assign(link.href + "#token=" + encodeURIComponent(saved.token));
        }
      });
    });
  }

  // A new link pasted into a tab that shows the page changes only the fragment: start over.
  function restartOnNewLink() {
    window.addEventListener("hashchange", function () { location.reload(); });
  }

  function remember(state) { history.replaceState(state, "", here()); }

  async function post(path, payload) {
    var response;
    try {
      response = await fetch(path, {
        method: "POST",
        headers: { "Content-Type": "application/json", "Accept": "application/json" },
        body: JSON.stringify(payload),
        credentials: "omit",
        cache: "no-store",
        referrerPolicy: "no-referrer"
      });
    } catch (err) {
      return { status: 0, data: null, retryAfter: null };
    }
    var data = null;
    try { data = await response.json(); } catch (err) { data = null; }
    return { status: response.status, data: data, retryAfter: response.headers.get("Retry-After") };
  }

  function errorCode(result) {
    return result.data && result.data.error ? result.data.error.code : null;
  }

  function waitText(result) {
    var seconds = parseInt(result.retryAfter || "", 10);
    if (isNaN(seconds) || seconds < 1) { seconds = 60; }
    if (seconds >= 120) { return message("wait-minutes", { minutes: Math.ceil(seconds / 60) }); }
    return message("wait", { seconds: seconds });
  }

  function genericFailure(result) {
    if (result.status === 0) { return [message("network")]; }
    if (result.status === 429) { return [waitText(result)]; }
    return [message("server")];
  }

  /* The form's one error region (role=alert): shown, announced, and tied to the field at fault. */
  function formErrors(form, regionSelector) {
    var region = form.querySelector(regionSelector || "#form-error");
    var fields = form.querySelectorAll("input");
    return {
      show: function (lines, field) {
        region.textContent = "";
        if (lines.length === 1) {
          region.textContent = lines[0];
        } else {
          var list = document.createElement("ul");
          lines.forEach(function (line) {
            var item = document.createElement("li");
            item.textContent = line;
            list.appendChild(item);
          });
          region.appendChild(list);
        }
        region.hidden = false;
        fields.forEach(function (input) { input.removeAttribute("aria-invalid"); });
        if (field) {
          field.setAttribute("aria-invalid", "true");
          field.focus();
        }
      },
      clear: function () {
        region.hidden = true;
        region.textContent = "";
        fields.forEach(function (input) { input.removeAttribute("aria-invalid"); });
      }
    };
  }

  function busy(form, on) {
    var button = form.querySelector('button[type="submit"]');
    button.disabled = on;
    form.setAttribute("aria-busy", on ? "true" : "false");
  }

  /* -- forgot-password ------------------------------------------------------------------------ */

  function forgotPage() {
    var form = $("#forgot-form");
    var email = $("#email");
    var errors = formErrors(form);
    show("form", false);
    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      if (form.getAttribute("aria-busy") === "true") { return; }
      var value = email.value.trim();
      if (!value || !email.validity.valid) {
        errors.show([message("email")], email);
        return;
      }
      errors.clear();
      busy(form, true);
      var result = await post("auth/password-reset/request", { email: value });
      busy(form, false);
      if (result.status === 200) {
        form.reset();
        show("sent", true);
      } else {
        errors.show(genericFailure(result), null);
      }
    });
  }

  /* -- the code from the email, on a page opened without its link ------------------------------ */

  // As the server reads a code (domain/tokens.py): spaces, hyphens and dots between the digits
  // do not matter, and full-width digits are digits.
  function codeDigits(text) {
    return text.normalize("NFKC").replace(/[\s.\-\u2010-\u2015]/g, "");
  }

  function codeEntry(path, onSuccess) {
    var form = $("#code-form");
    var email = $("#code-email");
    var code = $("#code");
    var digits = parseInt(code.getAttribute("data-digits"), 10);
    var errors = formErrors(form, "#code-error");
    show("code", false);
    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      if (form.getAttribute("aria-busy") === "true") { return; }
      var address = email.value.trim();
      var typed = codeDigits(code.value);
      if (!address || !email.validity.valid) {
        errors.show([message("code-email")], email);
        return;
      }
      if (!/^[0-9]+$/.test(typed) || typed.length !== digits) {
        errors.show([message("code-format")], code);
        return;
      }
      errors.clear();
      busy(form, true);
      var result = await post(path, { email: address, code: typed });
      busy(form, false);
      if (result.status === 200 && result.data) {
        form.reset();
        onSuccess(result.data);
      } else if (result.status === 400 || result.status === 422) {
        errors.show([message("code-invalid")], code);
      } else {
        errors.show(genericFailure(result), null);
      }
    });
  }

  /* -- reset-password ------------------------------------------------------------------------- */

  function codePoints(text) { return Array.from(text.normalize("NFC")); }

  // The server's rules (domain/passwords.py), mirrored for live feedback; the server decides.
  function repetitive(chars) {
    var folded = chars.join("").toLowerCase();
    var length = Array.from(folded).length;
    for (var size = 1; size <= 4; size += 1) {
      if (length % size === 0) {
        var unit = Array.from(folded).slice(0, size).join("");
        if (unit.repeat(length / size) === folded) { return true; }
      }
    }
    return false;
  }

  function localProblems(password, rule) {
    var chars = codePoints(password);
    var min = parseInt(rule.getAttribute("data-min"), 10);
    var max = parseInt(rule.getAttribute("data-max"), 10);
    var problems = [];
    if (chars.length < min) { problems.push(message("too-short", { min: min })); }
    if (chars.length > max) { problems.push(message("too-long", { max: max })); }
    if (chars.length > 0 && repetitive(chars)) { problems.push(message("repetitive")); }
    return problems;
  }

  function mark(item, met) {
    item.setAttribute("data-met", met === null ? "" : (met ? "yes" : "no"));
    var note = item.querySelector(".visually-hidden");
    if (!note) {
      note = document.createElement("span");
      note.className = "visually-hidden";
      item.appendChild(note);
    }
    note.textContent = met ? " " + message("met") : "";
  }

  function resetPage() {
    restartOnNewLink();
    var taken = takeToken();
    var token = taken.token;
    var form = $("#reset-form");
    var password = $("#password");
    var again = $("#password-again");
    var lengthRule = $('[data-rule="length"]');
    var errors = formErrors(form);

    function feedback() {
      var chars = codePoints(password.value);
      var empty = chars.length === 0;
      var min = parseInt(lengthRule.getAttribute("data-min"), 10);
      var max = parseInt(lengthRule.getAttribute("data-max"), 10);
      mark(lengthRule, empty ? null : chars.length >= min && chars.length <= max);
      mark($('[data-rule="varied"]'), empty ? null : !repetitive(chars));
      mark($('[data-rule="match"]'), empty || !again.value ? null
        : password.value.normalize("NFC") === again.value.normalize("NFC"));
    }

    async function check() {
      show("checking", false);
      var result = await post("auth/password-reset/verify", { token: token });
      if (result.status === 200) {
        show("form", false);
        password.focus();
      } else if (result.status === 400 || result.status === 422) {
        remember(null);
        show("invalid", true);
      } else {
        show("unavailable", true);
      }
    }

    if (taken.done) { show("done", false); return; }
    if (token && !TOKEN.test(token)) { remember(null); show("invalid", false); return; }

    password.addEventListener("input", feedback);
    again.addEventListener("input", feedback);
    $('[data-action="retry"]').addEventListener("click", check);
    $('[data-action="show-password"]').addEventListener("click", function () {
      var shown = this.getAttribute("aria-pressed") === "true";
      this.setAttribute("aria-pressed", shown ? "false" : "true");
      password.type = again.type = shown ? "password" : "text";
    });

    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      if (form.getAttribute("aria-busy") === "true") { return; }
      var problems = localProblems(password.value, lengthRule);
      if (problems.length) { errors.show(problems, password); return; }
      if (password.value.normalize("NFC") !== again.value.normalize("NFC")) {
        errors.show([message("mismatch")], again);
        return;
      }
      errors.clear();
      busy(form, true);
      var result = await post("auth/password-reset/confirm", { token: token, password: password.value });
      busy(form, false);
      if (result.status === 200) {
        token = null;
        form.reset();
        remember({ done: true });
        show("done", true);
      } else if (result.status === 400) {
        token = null;
        remember(null);
        show("invalid", true);
      } else if (errorCode(result) === "weak_password") {
        var reasons = (result.data.error.details || []).map(function (d) { return d.message; });
        errors.show(reasons.length ? reasons : [message("weak")], password);
      } else {
        errors.show(genericFailure(result), null);
      }
    });

    if (!token) {
      // Opened without a link: the code from the email gets the link's token.
      codeEntry("auth/password-reset/code", function (data) {
        token = data.token;
        remember({ token: token });
        check();
      });
      return;
    }
    check();
  }

  /* -- verify-email --------------------------------------------------------------------------- */

  /* verify-email, change-email and undo-email-change: one press posts the link's token. */
  function verifyPage() { onePressPage("auth/verify-email", "auth/verify-email/code"); }

  // codePath: where a code from the email is exchanged, on a page opened without its link;
  // a page with no code (the address change's) says to open the link instead.
  function onePressPage(endpoint, codePath) {
    restartOnNewLink();
    var taken = takeToken();
    var token = taken.token;
    var form = $("#verify-form");
    var errors = formErrors(form);

    if (taken.done) { show("done", false); return; }
    if (!token && !codePath) { show("missing", false); return; }
    if (!token) {
      // Opened without a link: the code from the email verifies the address as the link does.
      codeEntry(codePath, function () {
        remember({ done: true });
        show("done", true);
      });
      return;
    }
    if (!TOKEN.test(token)) { remember(null); show("invalid", false); return; }
    show("ready", false);

    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      if (form.getAttribute("aria-busy") === "true") { return; }
      errors.clear();
      busy(form, true);
      var result = await post(endpoint, { token: token });
      busy(form, false);
      if (result.status === 200) {
        token = null;
        remember({ done: true });
        show("done", true);
      } else if (result.status === 400 || result.status === 422) {
        token = null;
        remember(null);
        show("invalid", true);
      } else {
        errors.show(genericFailure(result), null);
      }
    });
  }

  var pages = {
    forgot_password: forgotPage,
    reset_password: resetPage,
    verify_email: verifyPage,
    change_email: function () { onePressPage("auth/email/change/confirm"); },
    undo_email_change: function () { onePressPage("auth/email/change/undo"); }
  };
  var start = pages[document.body.getAttribute("data-page")];
  keepTokenAcrossLanguages();
  if (start) { start(); }
})();
