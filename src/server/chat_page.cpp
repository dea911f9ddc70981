#include "server/chat_page.h"

namespace gp {

// Query parameters for scripted use (the browser test): ?prompt=TEXT&autosend=1 sends TEXT once
// the page loads; seed, temperature and max_tokens preset the request.
const std::string& chat_page() {
  static const std::string page = R"PAGE(<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>gemma-server</title>
<style>
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.45 system-ui, sans-serif; background: #f4f4f2; color: #222;
         display: flex; flex-direction: column; height: 100vh; }
  header { display: flex; gap: 12px; align-items: center; flex-wrap: wrap; padding: 8px 14px;
           background: #22303c; color: #eee; }
  header b { font-size: 16px; margin-right: auto; }
  header label { font-size: 13px; }
  header input { width: 70px; }
  header input#key { width: 140px; }
  #log { flex: 1; overflow-y: auto; padding: 14px; }
  .msg { max-width: 820px; margin: 0 auto 12px; padding: 10px 14px; border-radius: 8px;
         background: #fff; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
  .msg.user { background: #dcebf7; }
  .msg .role { font-size: 12px; color: #667; margin-bottom: 2px; }
  .msg .text { white-space: pre-wrap; word-wrap: break-word; }
  .msg .stats { font-size: 12px; color: #667; margin-top: 6px; }
  .msg.error { background: #f8dcdc; }
  .msg img { max-height: 120px; margin: 4px 6px 4px 0; border-radius: 4px; }
  form { display: flex; gap: 8px; padding: 10px 14px; background: #e6e6e2; align-items: flex-end; }
  textarea { flex: 1; font: inherit; padding: 8px; min-height: 44px; resize: vertical; }
  #thumbs img { max-height: 44px; margin-right: 4px; }
  #attach { padding: 8px 10px; background: #fff; border: 1px solid #999; border-radius: 3px;
            cursor: pointer; }
  button { font: inherit; padding: 8px 14px; }
  #status { font-size: 12px; color: #aab; }
</style>
</head>
<body>
<header>
  <b id="model">gemma-server</b>
  <label>temperature <input id="temperature" type="number" min="0" step="0.1" value="1"></label>
  <label>max tokens <input id="max_tokens" type="number" min="1" value="512"></label>
  <label>API key <input id="key" type="password" placeholder="(none)"></label>
  <button id="new" type="button">New chat</button>
  <span id="status" data-state="idle">idle</span>
</header>
<div id="log"></div>
<form id="form">
  <label id="attach" title="attach images">Image<input id="file" type="file" accept="image/*" multiple hidden></label>
  <span id="thumbs"></span>
  <textarea id="input" placeholder="Message (Enter sends, Shift+Enter for a new line)"></textarea>
  <button id="send" type="submit">Send</button>
  <button id="stop" type="button" hidden>Stop</button>
</form>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
let conversation = [];  // as the API takes it
let attached = [];       // data: URLs of the images for the next message
let controller = null;   // aborts the running request (the server then stops generating)
let seed = params.has("seed") ? parseInt(params.get("seed")) : null;

for (const f of ["temperature", "max_tokens"]) if (params.has(f)) $(f).value = params.get(f);
$("key").value = localStorage.getItem("gemma-key") || "";
$("key").onchange = () => localStorage.setItem("gemma-key", $("key").value);

function headers() {
  const h = {"Content-Type": "application/json"};
  if ($("key").value) h["Authorization"] = "Bearer " + $("key").value;
  return h;
}

function setStatus(state, text) {
  $("status").dataset.state = state;
  $("status").textContent = text || state;
}

function addMessage(role, text, images) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const r = document.createElement("div");
  r.className = "role";
  r.textContent = role;
  div.appendChild(r);
  for (const url of images || []) {
    const img = document.createElement("img");
    img.src = url;
    div.appendChild(img);
  }
  const t = document.createElement("div");
  t.className = "text";
  t.textContent = text;
  div.appendChild(t);
  const s = document.createElement("div");
  s.className = "stats";
  div.appendChild(s);
  $("log").appendChild(div);
  $("log").scrollTop = $("log").scrollHeight;
  return div;
}

$("file").onchange = () => {
  for (const file of $("file").files) {
    const reader = new FileReader();
    reader.onload = () => {
      attached.push(reader.result);
      const img = document.createElement("img");
      img.src = reader.result;
      $("thumbs").appendChild(img);
    };
    reader.readAsDataURL(file);
  }
  $("file").value = "";
};

$("input").onkeydown = (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("form").requestSubmit(); }
};
$("new").onclick = () => { if (controller) controller.abort(); conversation = []; $("log").innerHTML = ""; };
$("stop").onclick = () => { if (controller) controller.abort(); };
$("form").onsubmit = (e) => { e.preventDefault(); send(); };

async function send() {
  const text = $("input").value;
  if (controller || (!text.trim() && !attached.length)) return;
  const content = attached.map((url) => ({type: "image_url", image_url: {url}}));
  content.push({type: "text", text});
  addMessage("user", text, attached);
  const conv = conversation;  // "New chat" may replace it while this answer comes
  conv.push({role: "user", content});
  attached = [];
  $("thumbs").innerHTML = "";
  $("input").value = "";

  const body = {messages: conv, stream: true, stream_options: {include_usage: true},
                temperature: parseFloat($("temperature").value),
                max_tokens: parseInt($("max_tokens").value)};
  if (seed !== null) body.seed = seed;
  const div = addMessage("assistant", "");
  const out = div.querySelector(".text");
  controller = new AbortController();
  $("send").hidden = true;
  $("stop").hidden = false;
  setStatus("generating");
  const start = performance.now();
  let first = 0, pieces = 0, timings = null, usage = null, finish = null;
  try {
    const res = await fetch("/v1/chat/completions", {method: "POST", headers: headers(),
                            body: JSON.stringify(body), signal: controller.signal});
    if (!res.ok) {
      const err = await res.json().catch(() => ({error: {message: res.statusText}}));
      throw new Error(res.status + ": " + err.error.message);
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          if (chunk.usage) usage = chunk.usage;
          if (chunk.timings) timings = chunk.timings;
          const choice = chunk.choices && chunk.choices[0];
          if (!choice) continue;
          if (choice.delta && choice.delta.content) {
            if (!first) first = performance.now();
            ++pieces;
            out.textContent += choice.delta.content;
            $("log").scrollTop = $("log").scrollHeight;
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    }
    conv.push({role: "assistant", content: out.textContent});
    const n = usage ? usage.completion_tokens : pieces;
    const tps = timings ? timings.predicted_per_second
                        : (first && n > 1 ? (n - 1) * 1000 / (performance.now() - first) : 0);
    let stats = n + " tokens, " + tps.toFixed(1) + " tokens/s";
    if (usage) stats += " \u00b7 prompt " + usage.prompt_tokens + " tokens (" +
                        usage.prompt_tokens_details.cached_tokens + " cached)";
    if (timings) stats += ", " + timings.prompt_per_second.toFixed(1) + " tokens/s";
    stats += " \u00b7 " + ((performance.now() - start) / 1000).toFixed(2) + " s \u00b7 " + finish;
    div.querySelector(".stats").textContent = stats;
    setStatus("done");
  } catch (err) {
    if (err.name === "AbortError") {
      conv.push({role: "assistant", content: out.textContent});
      div.querySelector(".stats").textContent = "stopped";
      setStatus("done", "stopped");
    } else {
      div.classList.add("error");
      div.querySelector(".stats").textContent = String(err.message || err);
      conv.pop();
      setStatus("error");
    }
  } finally {
    controller = null;
    $("send").hidden = false;
    $("stop").hidden = true;
  }
}

fetch("/v1/models", {headers: headers()}).then((r) => r.json())
  .then((j) => { if (j.data) $("model").textContent = j.data[0].id; }).catch(() => {});
if (params.has("prompt")) {
  $("input").value = params.get("prompt");
  if (params.get("autosend") === "1") send();
}
</script>
</body>
</html>
)PAGE";
  return page;
}

}  // namespace gp
