// maskkv playground: ask a question about a document through /v1/chat/completions (streamed) and colour the
// prompt tokens by how many layers x KV heads kept them after MaskKV's first pass (maskkv.kept_tokens).
"use strict";

const $ = (id) => document.getElementById(id);
let modelName = null;

function keptColour(share) {
  // share in [0, 1]: 0 = evicted everywhere (no colour), 1 = kept by every head of every layer
  return share <= 0 ? "transparent" : `rgba(230, 110, 0, ${(0.12 + 0.8 * share).toFixed(3)})`;
}

function renderLegend() {
  const legend = $("legend");
  legend.textContent = "kept by ";
  for (const share of [0, 0.25, 0.5, 0.75, 1]) {
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = keptColour(share);
    swatch.textContent = `${Math.round(share * 100)}%`;
    legend.appendChild(swatch);
  }
  legend.appendChild(document.createTextNode(" of the layers x heads (hover a token for its per-layer counts)"));
}

function renderKept(kept) {
  const view = $("document-view");
  view.textContent = "";
  const total = kept.layers * kept.heads;
  kept.tokens.forEach((text, i) => {
    const counts = kept.counts[i];
    const sum = counts.reduce((a, b) => a + b, 0);
    const span = document.createElement("span");
    span.className = sum ? "tok kept" : "tok evicted";
    span.style.background = keptColour(sum / total);
    span.title = counts.map((c, layer) => `layer ${layer}: ${c}/${kept.heads} heads`).join("\n");
    span.textContent = text;
    view.appendChild(span);
  });
}

async function ask() {
  const answer = $("answer");
  answer.textContent = "";
  answer.classList.remove("error");
  $("stats").textContent = "decoding...";
  $("document-view").textContent = "";
  document.body.dataset.state = "running";
  const press = $("press").value;
  const content = [$("document").value.trim(), $("question").value.trim()].filter(Boolean).join("\n\n");
  const body = {
    model: modelName, stream: true, max_tokens: Number($("max-tokens").value),
    messages: [{ role: "user", content }],
    maskkv: { press, kept_tokens: true, ...(press === "none" ? {} : { budget: Number($("budget").value) }) },
  };
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    if (!response.ok) {
      throw new Error((await response.json()).error.message);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (!event.startsWith("data: ") || event === "data: [DONE]") continue;
        const chunk = JSON.parse(event.slice(6));
        if (chunk.error) throw new Error(chunk.error.message);
        const delta = chunk.choices.length ? chunk.choices[0].delta.content : null;
        if (delta) answer.textContent += delta;
        if (chunk.maskkv) {
          const m = chunk.maskkv;
          $("stats").textContent = `${(100 * m.kept_prompt_share).toFixed(1)}% of the prompt K/V kept` +
            ` (${m.press || "no press"}${m.budget ? ", budget " + m.budget : ""}), ${m.nfe} forward passes,` +
            ` ${m.seconds.toFixed(2)} s, batch of ${m.batch_size}`;
          if (m.kept) renderKept(m.kept);
        }
      }
    }
    if (!answer.textContent) answer.textContent = "(empty answer)";
    document.body.dataset.state = "done";
  } catch (err) {
    answer.textContent = String(err.message || err);
    answer.classList.add("error");
    $("stats").textContent = "";
    document.body.dataset.state = "error";
  }
}

async function init() {
  renderLegend();
  const config = await (await fetch("/maskkv/config")).json();
  modelName = config.model;
  $("model").textContent = `model: ${config.model}`;
  for (const name of ["none", ...config.presses]) {
    const option = document.createElement("option");
    option.value = option.textContent = name;
    $("press").appendChild(option);
  }
  $("press").value = config.presses.includes("maskkv") ? "maskkv" : "none";
  $("budget").value = config.budget;
  $("max-tokens").value = config.max_tokens;
  $("ask").addEventListener("click", ask);
  document.body.dataset.state = "ready";
}

init();
