// The one script of the console: it asks the security key, and nothing else. The server
// builds every challenge and decides everything; this only carries bytes both ways.
"use strict";

function fromB64url(text) {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const raw = atob(b64 + "===".slice((b64.length + 3) % 4));
  return Uint8Array.from(raw, (c) => c.charCodeAt(0)).buffer;
}

function toB64url(buffer) {
  const bytes = new Uint8Array(buffer);
  let raw = "";
  for (const b of bytes) raw += String.fromCharCode(b);
  return btoa(raw).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function say(text, ok) {
  const out = document.getElementById("outcome");
  out.textContent = text;
  out.className = ok ? "ok" : "refused";
}

async function post(url, body) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    credentials: "same-origin",
    body: JSON.stringify(body),
  });
  return response.json();
}

function requestOptions(options) {
  options.challenge = fromB64url(options.challenge);
  for (const c of options.allowCredentials || []) c.id = fromB64url(c.id);
  return options;
}

function creationOptions(options) {
  options.challenge = fromB64url(options.challenge);
  options.user.id = fromB64url(options.user.id);
  for (const c of options.excludeCredentials || []) c.id = fromB64url(c.id);
  return options;
}

function assertionJSON(cred) {
  return {
    id: cred.id,
    rawId: toB64url(cred.rawId),
    type: cred.type,
    response: {
      clientDataJSON: toB64url(cred.response.clientDataJSON),
      authenticatorData: toB64url(cred.response.authenticatorData),
      signature: toB64url(cred.response.signature),
      userHandle: cred.response.userHandle ? toB64url(cred.response.userHandle) : null,
    },
    clientExtensionResults: cred.getClientExtensionResults(),
  };
}

function registrationJSON(cred) {
  return {
    id: cred.id,
    rawId: toB64url(cred.rawId),
    type: cred.type,
    response: {
      clientDataJSON: toB64url(cred.response.clientDataJSON),
      attestationObject: toB64url(cred.response.attestationObject),
      transports: cred.response.getTransports ? cred.response.getTransports() : [],
    },
    clientExtensionResults: cred.getClientExtensionResults(),
  };
}

// begin -> the key -> finish; the finish's answer is shown in words.
async function ceremony(begin, finish, body, create) {
  say("Waiting for your security key ...", true);
  let started;
  try {
    started = await post(begin, body);
  } catch (e) {
    say("The console did not answer: " + e, false);
    return null;
  }
  if (!started.ok) {
    say(started.message, false);
    return null;
  }
  let credential;
  try {
    credential = create
      ? await navigator.credentials.create({ publicKey: creationOptions(started.options) })
      : await navigator.credentials.get({ publicKey: requestOptions(started.options) });
  } catch (e) {
    say("The security key did not answer (" + e.name + "): nothing was signed.", false);
    return null;
  }
  const payload = create ? registrationJSON(credential) : assertionJSON(credential);
  const done = await post(finish, { ceremony: started.ceremony, credential: payload });
  say(done.message || (done.ok ? "Done." : "Refused."), done.ok);
  return done;
}

document.addEventListener("DOMContentLoaded", () => {
  const signin = document.getElementById("signin-form");
  if (signin) {
    signin.addEventListener("submit", async (event) => {
      event.preventDefault();
      const person = document.getElementById("person").value;
      const done = await ceremony("/api/signin/begin", "/api/signin/finish", { person }, false);
      if (done && done.ok) window.location.assign(done.next);
    });
  }
  const enrol = document.getElementById("enrol-form");
  if (enrol) {
    enrol.addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = {
        person: document.getElementById("person").value,
        label: document.getElementById("label").value,
      };
      await ceremony("/api/enrol/begin", "/api/enrol/finish", body, true);
    });
  }
  for (const button of document.querySelectorAll("button[data-vote]")) {
    button.addEventListener("click", async () => {
      const body = {
        requester: button.dataset.requester,
        request_id: button.dataset.requestId,
        vote: button.dataset.vote,
      };
      for (const b of document.querySelectorAll("button[data-vote]")) b.disabled = true;
      const done = await ceremony("/api/vote/begin", "/api/vote/finish", body, false);
      if (!done || !done.ok) {
        for (const b of document.querySelectorAll("button[data-vote]")) b.disabled = false;
      }
    });
  }
});
